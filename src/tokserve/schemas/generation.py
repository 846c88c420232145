"""What chat and completions requests share: the wire base class and its field policy, the generation parameters,
usage, logprobs. One definition each, so the two endpoints cannot drift apart.

The policy, for every request field:
- honoured: declared below with its limits;
- refused: an OpenAI parameter tokserve does not implement is declared with `refuse_unless`, which accepts the
  values that change nothing (null, false, empty, the default) and answers any other with a 400 naming it;
- ignored: anything not declared, i.e. fields that only label or route a request (`user`, `metadata`, `store`,
  `safety_identifier`, `service_tier`, `prompt_cache_key`, ...) and unknown fields, which SDKs and proxies add.
"""

from collections.abc import Callable
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

FinishReason = Literal["stop", "length"]

_INT64 = 2**63

TokenId = Annotated[int, Field(ge=0)]


class WireModel(BaseModel):
    """Base of every wire model: fields it does not declare are ignored, and types are not coerced."""

    model_config = ConfigDict(extra="ignore", strict=True)


def _changes_nothing(value: object) -> bool:
    return value is None or value is False or (isinstance(value, str | list | dict) and not value)


def refuse_unless(reason: str, accepts: Callable[[Any], bool] = _changes_nothing) -> AfterValidator:
    """Refuse a value that would change the output with `reason`, unless `accepts` it (null, false, empty)."""

    def check(value: Any) -> Any:
        if accepts(value):
            return value
        raise PydanticCustomError("unsupported_parameter", reason)

    return AfterValidator(check)


def invalid(param: str, message: str, kind: str = "invalid_request") -> PydanticCustomError:
    """A request error found across fields, naming the field at fault (`ctx.param`) for the error envelope."""
    return PydanticCustomError(kind, message, {"param": param})


_NO_CONSTRAINTS = "constrained decoding is not supported by this server yet"


def _is_zero(value: object) -> bool:
    return value is None or value == 0  # llama.cpp's `mirostat: 0` is off


class ChatCompletionStreamOptions(WireModel):
    include_usage: bool = False


class GenerationParams(WireModel):
    """The request fields both endpoints take: OpenAI's, then vLLM's extensions."""

    model: str | None = Field(None, description="The served model name; omitted means the one served")
    stream: bool | None = False
    stream_options: ChatCompletionStreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=128)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    seed: int | None = Field(None, ge=-_INT64, lt=_INT64)
    stop: str | list[str] | None = Field(None, min_length=1)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    # JSON object keys are strings: token ids in ASCII decimal (a regex's \d takes any script's digits), short
    # enough for int() (it refuses 4,301 digits or more) and for any vocabulary.
    logit_bias: (
        dict[Annotated[str, Field(pattern=r"^[0-9]{1,10}$")], Annotated[float, Field(ge=-100, le=100)]] | None
    ) = None
    # vLLM's extensions
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    # Bounded so that dividing or multiplying a logit by it stays finite (a tiny one overflowed, found by fuzzing).
    repetition_penalty: float | None = Field(None, ge=0.01, le=100.0)
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool | None = False
    stop_token_ids: list[TokenId] | None = None
    include_stop_str_in_output: bool | None = False
    skip_special_tokens: bool | None = True
    # Extensions of vLLM and llama.cpp's server that change the output, not implemented: refused by name, so that
    # a client moving from them gets an error instead of unconstrained text.
    guided_json: Annotated[Any, refuse_unless(_NO_CONSTRAINTS)] = None
    guided_regex: Annotated[Any, refuse_unless(_NO_CONSTRAINTS)] = None
    guided_choice: Annotated[Any, refuse_unless(_NO_CONSTRAINTS)] = None
    guided_grammar: Annotated[Any, refuse_unless(_NO_CONSTRAINTS)] = None
    structured_outputs: Annotated[Any, refuse_unless(_NO_CONSTRAINTS)] = None
    grammar: Annotated[Any, refuse_unless(_NO_CONSTRAINTS)] = None
    json_schema: Annotated[Any, refuse_unless(_NO_CONSTRAINTS)] = None
    prompt_logprobs: Annotated[Any, refuse_unless("prompt_logprobs is not supported by this server")] = None
    bad_words: Annotated[Any, refuse_unless("bad_words is not supported by this server")] = None
    mirostat: Annotated[Any, refuse_unless("mirostat sampling is not supported by this server", _is_zero)] = None
    use_beam_search: Annotated[Any, refuse_unless("beam search is not supported by this server")] = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.stream_options is not None and not self.stream:
            raise invalid("stream_options", "stream_options is only allowed when stream is true")
        if any(not stop for stop in self.stop_list):
            raise invalid("stop", "stop strings must not be empty")
        return self

    @property
    def choices(self) -> int:
        return self.n or 1

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def stop_list(self) -> list[str]:
        """The stop strings as sent (each counts against --max-stop-strings, repeated or not)."""
        return [self.stop] if isinstance(self.stop, str) else self.stop or []

    @property
    def stop_strings(self) -> list[str]:
        """The stop strings, once each."""
        return list(dict.fromkeys(self.stop_list))


class PromptTokensDetails(WireModel):
    cached_tokens: int  # prompt tokens read from the prefix cache instead of computed


class CompletionUsage(WireModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
