"""Per-request sampling over one row of logits, with the request's own `torch.Generator` (never the global seed).

All state that depends on the tokens so far (counts for the penalties, the tokens seen) lives in the request's
`Sampler`, so requests sharing a step later keep their own.
"""

from collections.abc import Collection, Sequence

import torch

from tokserve.engine.request import SamplingParams


class Sampler:
    """Logit processors, then greedy at temperature 0; otherwise temperature, top-k, top-p, min-p and a draw.

    The processors, in vLLM's order: `logit_bias`; end ids masked until `min_tokens`; repetition penalty
    (prompt and output tokens); frequency and presence penalties (output tokens, additive as OpenAI defines them).
    """

    def __init__(
        self,
        params: SamplingParams,
        device: torch.device,
        prompt_ids: Sequence[int] = (),
        end_ids: Collection[int] = (),
    ) -> None:
        self._params = params
        self._device = device
        self._prompt_ids = list(prompt_ids)
        self._end_ids = sorted(end_ids)
        self._generated = 0
        # Built at the first step, once the logits tell the vocabulary size.
        self._bias: torch.Tensor | None = None
        self._counts: torch.Tensor | None = None  # times each token was generated
        self._seen: torch.Tensor | None = None  # tokens of the prompt or the output
        self._generator: torch.Generator | None = None
        if not params.greedy:
            self._generator = torch.Generator(device=device)
            if params.seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(params.seed % 2**64)  # OpenAI seeds are signed 64-bit

    def sample(self, logits: torch.Tensor) -> int:
        """One token id from a 1-D tensor of the model's logits; the sampler remembers it."""
        processed = self._process(logits.float())
        if self._generator is None:
            token_id = int(processed.argmax())
        else:
            token_id = int(torch.multinomial(self._distribution(processed), 1, generator=self._generator))
        self._record(token_id)
        return token_id

    def _process(self, logits: torch.Tensor) -> torch.Tensor:
        params = self._params
        if self._bias is None and params.logit_bias:
            self._bias = torch.zeros_like(logits)
            ids, biases = zip(*params.logit_bias, strict=True)
            self._bias[list(ids)] = torch.tensor(biases, device=logits.device)
        if self._bias is not None:
            logits = logits + self._bias
        if self._generated < params.min_tokens and self._end_ids:
            logits = logits.index_fill(0, torch.tensor(self._end_ids, device=logits.device), -torch.inf)
        if params.repetition_penalty != 1.0:
            if self._seen is None:
                self._seen = torch.zeros_like(logits, dtype=torch.bool)
                self._seen[self._prompt_ids] = True
            penalised = torch.where(logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty)
            logits = torch.where(self._seen, penalised, logits)
        if params.frequency_penalty or params.presence_penalty:
            if self._counts is None:
                self._counts = torch.zeros_like(logits)
            logits = (
                logits
                - params.frequency_penalty * self._counts
                - params.presence_penalty * (self._counts > 0).to(logits.dtype)
            )
        return logits

    def _distribution(self, logits: torch.Tensor) -> torch.Tensor:
        params = self._params
        logits = logits / params.temperature
        if 0 < params.top_k < logits.numel():
            kth = torch.topk(logits, params.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, -torch.inf)
        probs = torch.softmax(logits, dim=-1)
        if params.top_p < 1.0:
            probs = _nucleus(probs, params.top_p)
        if params.min_p > 0.0:
            probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
            probs = probs / probs.sum()
        return probs

    def _record(self, token_id: int) -> None:
        self._generated += 1
        if self._counts is not None:
            self._counts[token_id] += 1
        if self._seen is not None:
            self._seen[token_id] = True


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the most likely tokens whose mass reaches top_p (always at least the first); renormalise."""
    sorted_probs, order = torch.sort(probs, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs[mass_before >= top_p] = 0.0
    sorted_probs[0] = sorted_probs[0].clamp_min(torch.finfo(sorted_probs.dtype).tiny)
    kept = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return kept / kept.sum()
