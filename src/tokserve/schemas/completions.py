"""Wire models of /v1/completions, named as in openai-openapi.json; streamed chunks share the response's shape."""

from typing import Annotated, Any, Literal, Self, cast

from pydantic import Discriminator, Field, Tag, model_validator

from tokserve.schemas.generation import (
    CompletionUsage,
    FinishReason,
    GenerationParams,
    TokenId,
    WireModel,
    invalid,
)


def _prompt_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "string"
    if not isinstance(value, list):
        return None
    first = value[0] if value else None
    return "strings" if isinstance(first, str) else "token lists" if isinstance(first, list) else "tokens"


# Told apart by the JSON type of the prompt and of its first item, so an error names what the client meant.
Prompt = Annotated[
    Annotated[str, Tag("string")]
    | Annotated[list[str], Tag("strings"), Field(min_length=1)]
    | Annotated[list[TokenId], Tag("tokens"), Field(min_length=1)]
    | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Tag("token lists"), Field(min_length=1)],
    Discriminator(
        _prompt_kind,
        custom_error_type="prompt_type",
        custom_error_message="prompt must be a string, a list of strings, a list of token ids or a list of those",
    ),
]


class CreateCompletionRequest(GenerationParams):
    prompt: Prompt
    echo: bool | None = False
    logprobs: int | None = Field(None, ge=0, le=20)
    suffix: str | None = None
    best_of: int | None = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _check_completion(self) -> Self:
        # best_of > n returns the best n of best_of samples, which this server does not do; best_of == n is plain n.
        if self.best_of is not None and self.best_of != self.choices:
            raise invalid("best_of", "best_of other than n is not supported by this server", "unsupported_parameter")
        if self.suffix and self.echo:
            raise invalid("suffix", "suffix and echo cannot be used together")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of prompts, each a string or a list of token ids."""
        if _prompt_kind(self.prompt) in ("string", "tokens"):
            return [cast(str | list[int], self.prompt)]
        return cast(list[str | list[int]], self.prompt)


class CompletionLogprobs(WireModel):
    """The legacy shape: one entry per token; the first prompt token (with `echo`) has no logprob."""

    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


class CompletionChoice(WireModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None  # the stop string or stop token id that ended the text, as vLLM reports it


class CreateCompletionResponse(WireModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None
