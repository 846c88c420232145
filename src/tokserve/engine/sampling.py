"""Per-request sampling over one row of logits, with the request's own `torch.Generator` (never the global seed)."""

import torch

from tokserve.engine.request import SamplingParams


class Sampler:
    """Greedy at temperature 0; otherwise temperature, then top-p, then a draw from the request's generator."""

    def __init__(self, params: SamplingParams, device: torch.device) -> None:
        self._params = params
        self._generator: torch.Generator | None = None
        if not params.greedy:
            self._generator = torch.Generator(device=device)
            if params.seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(params.seed % 2**64)  # OpenAI seeds are signed 64-bit

    def sample(self, logits: torch.Tensor) -> int:
        """One token id from a 1-D tensor of logits."""
        if self._generator is None:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / self._params.temperature, dim=-1)
        if self._params.top_p < 1.0:
            probs = _nucleus(probs, self._params.top_p)
        return int(torch.multinomial(probs, 1, generator=self._generator))


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most likely tokens whose mass reaches top_p (always at least the first); renormalise."""
    sorted_probs, order = torch.sort(probs, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs[mass_before >= top_p] = 0.0
    sorted_probs[0] = sorted_probs[0].clamp_min(torch.finfo(sorted_probs.dtype).tiny)
    kept = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return kept / kept.sum()
