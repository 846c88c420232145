"""What crosses between the server's event loop and the worker thread: the request, its token events, and the
engine's settings. Frozen, so either side reads them without locks; no torch here."""

from dataclasses import dataclass, fields
from typing import Literal, Protocol

from tokserve.errors import TokservError

# eos: one of the model's end-of-sequence ids; stop_token: one of the request's stop_token_ids; grammar: the
# request's grammar is complete (nothing but the end could follow).
EndReason = Literal["eos", "stop_token", "grammar", "length"]


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
    `max_tokens`, or once its `grammar` (llguidance's text, checked by `Engine.grammar_error`) is complete: every
    token is drawn from those the grammar allows. `logprobs` asks for the sampled token's log-probability and that
    many top alternatives; `prompt_logprobs` the same for each prompt token after the first.
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
    grammar: str | None = None


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """A token's log-probability, and the `top` most likely tokens at its position as (id, logprob), best first."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """A generated token (the last one carries `end`), or the error that ended generation.

    `logprobs` comes with each token when the request asked for it; `prompt_logprobs` with the first token only
    (one entry per prompt token after the first), as does `cached_tokens`: how many prompt tokens were read from the
    prefix cache instead of computed.
    """

    token_id: int | None = None
    end: EndReason | None = None
    error: TokservError | None = None
    logprobs: TokenLogprobs | None = None
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None
    cached_tokens: int | None = None

    @property
    def is_last(self) -> bool:
        return self.end is not None or self.error is not None


class _SettingsSource(Protocol):
    """What `EngineSettings.of` reads: the server's `Settings`, by attribute (kept out of the engine's imports)."""

    def model_dump(self) -> dict[str, object]: ...


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Everything the engine is configured with, built once from the server's `Settings` (`of`).

    `kv_cache_memory` is in GiB (None: a share of the device's memory); `prefill_tokens` caps the prompt tokens
    one step reads (None: the loaded model's default); `prompt_logprobs_tokens` caps the prompt positions per step
    whose logits are kept for `prompt_logprobs`.
    """

    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    quantization: str | None = None
    weights: str = "auto"
    device_map: str | None = None
    threads: int | None = None
    max_model_len: int | None = None
    max_queue: int = 64
    max_running: int = 8
    kv_cache_memory: float | None = None
    prefill_tokens: int | None = None
    prompt_logprobs_tokens: int = 256
    no_prefix_caching: bool = False
    no_cuda_graphs: bool = False
    fault_marker: str | None = None

    @classmethod
    def of(cls, settings: _SettingsSource) -> "EngineSettings":
        """The engine's part of the server's settings: every field of the same name."""
        values = settings.model_dump()
        return cls(**{field.name: values[field.name] for field in fields(cls) if field.name in values})  # type: ignore[arg-type]
