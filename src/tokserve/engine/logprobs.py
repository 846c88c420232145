"""Prompt log-probabilities as the model gives them: log-softmax of the raw logits, before any sampling parameter.

That is what OpenAI and vLLM (by default) report, so a logprob never depends on temperature, penalties or bias.
The sampled tokens' logprobs come from the batched sampler (`sampling.py`), in its one transfer per step.
"""

from collections.abc import Sequence

import torch

from tokserve.engine.crossing import TokenLogprobs


def prompt_logprobs(logits: torch.Tensor, targets: Sequence[int], top: int) -> list[TokenLogprobs]:
    """For prompt tokens `targets`, from the logits of the positions before each (row i predicts `targets[i]`).

    A step keeps at most `--prompt-logprobs-tokens` such rows, which bounds the float32 copy made here."""
    rows = torch.log_softmax(logits[: len(targets)].float(), dim=-1)
    target_ids = torch.tensor(targets, dtype=torch.long, device=logits.device)
    chosen = rows.gather(-1, target_ids[:, None])[:, 0].tolist()
    if not top:
        return [TokenLogprobs(logprob) for logprob in chosen]
    values, ids = torch.topk(rows, top, dim=-1)
    return [
        TokenLogprobs(logprob, tuple(zip(row_ids, row_values, strict=True)))
        for logprob, row_ids, row_values in zip(chosen, ids.tolist(), values.tolist(), strict=True)
    ]
