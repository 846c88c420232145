"""Log-probabilities as the model gives them: log-softmax of the raw logits, before any sampling parameter.

That is what OpenAI and vLLM (by default) report, so a logprob never depends on temperature, penalties or bias.
"""

from collections.abc import Sequence

import torch

from tokserve.engine.crossing import TokenLogprobs

# Rows of prompt logits turned into log-probabilities at once: bounds the float32 copy for long prompts.
_PROMPT_ROWS = 256


def token_logprobs(logits: torch.Tensor, token_id: int, top: int) -> TokenLogprobs:
    """For one 1-D row of logits and the token chosen there."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return TokenLogprobs(float(logprobs[token_id]), _top(logprobs, top)[0] if top else ())


def prompt_logprobs(logits: torch.Tensor, targets: Sequence[int], top: int) -> list[TokenLogprobs]:
    """For prompt tokens `targets`, from the logits of the positions before each (row i predicts `targets[i]`)."""
    target_ids = torch.tensor(targets, dtype=torch.long, device=logits.device)
    result: list[TokenLogprobs] = []
    for start in range(0, len(targets), _PROMPT_ROWS):
        rows = torch.log_softmax(logits[start : min(start + _PROMPT_ROWS, len(targets))].float(), dim=-1)
        chosen = rows.gather(-1, target_ids[start : start + len(rows), None])[:, 0].tolist()
        tops = _top(rows, top) if top else [()] * len(rows)
        result.extend(TokenLogprobs(logprob, alternatives) for logprob, alternatives in zip(chosen, tops, strict=True))
    return result


def _top(logprobs: torch.Tensor, k: int) -> list[tuple[tuple[int, float], ...]]:
    """The k best (id, logprob) of each row of a 1-D or 2-D tensor."""
    values, ids = torch.topk(logprobs.reshape(-1, logprobs.shape[-1]), k, dim=-1)
    return [
        tuple(zip(row_ids, row_values, strict=True))
        for row_ids, row_values in zip(ids.tolist(), values.tolist(), strict=True)
    ]
