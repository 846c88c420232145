"""What chat and completions requests share: the wire base class, the generation parameters, usage.

One definition each, so the two endpoints cannot drift apart.
"""

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

FinishReason = Literal["stop", "length"]

_INT64 = 2**63


class WireModel(BaseModel):
    """Base of every wire model: unknown fields are refused (400 naming them), and types are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ChatCompletionStreamOptions(WireModel):
    include_usage: bool = False


class GenerationParams(WireModel):
    """The request fields both endpoints take."""

    model: str | None = Field(None, description="The served model name; omitted means the one served")
    stream: bool = False
    stream_options: ChatCompletionStreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=-_INT64, lt=_INT64)
    stop: str | list[str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if any(not stop for stop in stops):
            raise ValueError("stop strings must not be empty")
        return self

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def stop_strings(self) -> list[str]:
        """The stop strings, once each."""
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return list(dict.fromkeys(stops))


class CompletionUsage(WireModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
