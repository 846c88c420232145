"""What crosses from the server into the engine: frozen, so the worker reads it without locks. No torch here."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request sampling: greedy at temperature 0, else temperature and nucleus (top-p) sampling."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One generation: prompt token ids, how many tokens at most, how to sample."""

    request_id: str
    prompt_ids: tuple[int, ...]
    max_tokens: int
    sampling: SamplingParams
