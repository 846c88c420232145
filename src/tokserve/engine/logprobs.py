"""Log-probabilities as the model gives them: log-softmax of the raw logits, before any sampling parameter.

That is what OpenAI and vLLM (by default) report, so a logprob never depends on temperature, penalties or bias.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Rows of prompt logits turned into log-probabilities at once: bounds the float32 copy for long prompts.
_PROMPT_ROWS = 256


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """A token's log-probability, and the `top` most likely tokens at its position as (id, logprob), best first."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprobs(logits: torch.Tensor, token_id: int, top: int) -> TokenLogprobs:
    """For one 1-D row of logits and the token chosen there."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return TokenLogprobs(float(logprobs[token_id]), _top(logprobs, top)[0] if top else ())


def prompt_logprobs(logits: torch.Tensor, prompt_ids: Sequence[int], top: int) -> tuple[TokenLogprobs, ...]:
    """For each prompt token after the first, from the prefill's logits (one row per prompt position)."""
    logits = logits[:-1]  # row i predicts token i + 1; the last row predicts the first generated token
    targets = torch.tensor(prompt_ids[1:], device=logits.device)
    result: list[TokenLogprobs] = []
    for start in range(0, len(targets), _PROMPT_ROWS):
        rows = torch.log_softmax(logits[start : start + _PROMPT_ROWS].float(), dim=-1)
        chosen = rows.gather(-1, targets[start : start + len(rows), None])[:, 0].tolist()
        tops = _top(rows, top) if top else [()] * len(rows)
        result.extend(TokenLogprobs(logprob, alternatives) for logprob, alternatives in zip(chosen, tops, strict=True))
    return tuple(result)


def _top(logprobs: torch.Tensor, k: int) -> list[tuple[tuple[int, float], ...]]:
    """The k best (id, logprob) of each row of a 1-D or 2-D tensor."""
    values, ids = torch.topk(logprobs.reshape(-1, logprobs.shape[-1]), k, dim=-1)
    return [
        tuple(zip(row_ids, row_values, strict=True))
        for row_ids, row_values in zip(ids.tolist(), values.tolist(), strict=True)
    ]
