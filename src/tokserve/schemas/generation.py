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

# tool_calls: the choice ended with tool calls; function_call: with a call in the legacy `functions` shape.
FinishReason = Literal["stop", "length", "tool_calls", "function_call"]

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


def string_or_list(value: Any) -> str | None:
    """The tag of a value that may be a string or a list (a pydantic `Discriminator`): errors then name the one the
    client meant."""
    return "string" if isinstance(value, str) else "list" if isinstance(value, list) else None


def invalid(param: str, message: str, kind: str = "invalid_request") -> PydanticCustomError:
    """A request error found across fields, naming the field at fault (`ctx.param`) for the error envelope."""
    return PydanticCustomError(kind, message, {"param": param})


class StructuredOutputs(WireModel):
    """vLLM's `structured_outputs`: one of a JSON schema, a regular expression, a list of choices, or a grammar in
    llguidance's Lark."""

    json_schema: dict[str, Any] | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = Field(None, min_length=1)
    grammar: str | None = None

    @model_validator(mode="after")
    def _one(self) -> Self:
        given = [self.json_schema, self.regex, self.choice, self.grammar]
        if sum(value is not None for value in given) != 1:
            raise invalid("structured_outputs", "structured_outputs takes exactly one of json, regex, choice, grammar")
        return self


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
    structured_outputs: StructuredOutputs | None = None
    # vLLM's older names for the same, and llama.cpp's `json_schema`.
    guided_json: dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = Field(None, min_length=1)
    guided_grammar: str | None = None
    json_schema: dict[str, Any] | None = None
    grammar: Annotated[
        Any, refuse_unless("GBNF grammars are not supported; send Lark in structured_outputs.grammar")
    ] = None
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
    def constraint(self) -> tuple[str, str, Any] | None:
        """The structured output asked for through vLLM's or llama.cpp's fields: (the field, the kind: json, regex,
        choice or grammar, its value)."""
        if (outputs := self.structured_outputs) is not None:
            kinds = {"json": outputs.json_schema, "regex": outputs.regex, "choice": outputs.choice}
            kind, value = next(((k, v) for k, v in kinds.items() if v is not None), ("grammar", outputs.grammar))
            return "structured_outputs." + kind, kind, value
        given = [
            ("guided_json", "json", self.guided_json),
            ("json_schema", "json", self.json_schema),
            ("guided_regex", "regex", self.guided_regex),
            ("guided_choice", "choice", self.guided_choice),
            ("guided_grammar", "grammar", self.guided_grammar),
        ]
        return next(((param, kind, value) for param, kind, value in given if value is not None), None)

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
