"""What crosses from the server into the engine: frozen, so the worker reads it without locks. No torch here."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request choice of the next token: logit processors first, then greedy at temperature 0, else a draw.

    `presence_penalty` and `frequency_penalty` are OpenAI's (subtracted from the logits, per generated token);
    `repetition_penalty` is the multiplicative one of transformers and vLLM (on prompt and generated tokens).
    `min_tokens` keeps the end ids out of reach until that many tokens exist.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One generation: prompt token ids, how many tokens at most, how to sample, when to end, what to report.

    Generation ends at the model's end-of-sequence ids (unless `ignore_eos`), at `stop_token_ids`, or after
    `max_tokens`. `logprobs` asks for the sampled token's log-probability and that many top alternatives;
    `prompt_logprobs` the same for each prompt token after the first.
    """

    request_id: str
    prompt_ids: tuple[int, ...]
    max_tokens: int
    sampling: SamplingParams
    stop_token_ids: frozenset[int] = frozenset()
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
