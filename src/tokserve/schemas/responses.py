"""Wire models of the Responses API (/v1/responses), named as in openai-openapi.json: the request, the response
object, the input-item list and the delete answer. Shapes and limits only; the items are in response_items.py, the
stream events in response_events.py. As in the items, a None that the spec does not allow as null (`user`, `usage`)
is left out of the dump.
"""

from typing import Annotated, Any, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from tokserve.schemas.generation import WireModel, invalid, refuse_unless
from tokserve.schemas.response_items import (
    InputParam,
    ItemResource,
    OutputItem,
    SparseModel,
    refuse_other_types,
)
from tokserve.schemas.tools import FunctionName, ResponseFormatJsonObject, ResponseFormatText

# Tools and output formats


class FunctionTool(WireModel):
    """A function the model may call: flat, unlike chat's `{"type": "function", "function": {...}}`."""

    type: Literal["function"] = "function"
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema; null: a function without arguments
    strict: bool | None = None


Tool = Annotated[FunctionTool, refuse_other_types(("function",), "tools")]


class ToolChoiceFunction(WireModel):
    type: Literal["function"]
    name: str


ToolChoiceParam = Annotated[
    Literal["none", "auto", "required"] | ToolChoiceFunction, refuse_other_types(("function",), "tool choices")
]


class TextResponseFormatJsonSchema(SparseModel):
    # The wire name `schema` is an attribute of BaseModel: the field has another name, and dumps use the alias.
    model_config = ConfigDict(serialize_by_alias=True)

    type: Literal["json_schema"]
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None

    absent_if_none = frozenset({"description"})


TextResponseFormatConfiguration = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | TextResponseFormatJsonSchema, Field(discriminator="type")
]


def _medium(value: object) -> bool:
    return value is None or value == "medium"


class ResponseTextParam(WireModel):
    format: TextResponseFormatConfiguration = Field(default_factory=lambda: ResponseFormatText(type="text"))
    verbosity: Annotated[
        Literal["low", "medium", "high"] | None, refuse_unless("verbosity is not supported by this server", _medium)
    ] = None


class Reasoning(WireModel):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


# OpenAI's limits: 16 pairs, keys of up to 64 characters, values of up to 512.
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]], Field(max_length=16)
]


# The request


class CreateResponse(WireModel):
    model: str | None = Field(None, description="The served model name; omitted means the one served")
    input: InputParam | None = None
    instructions: str | None = None  # a system message put before the input (not kept for the next turn)
    previous_response_id: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    include: list[str] | None = None  # "message.output_text.logprobs" asks for logprobs
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: ToolChoiceParam | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = Field(None, ge=0)
    text: ResponseTextParam | None = None
    reasoning: Reasoning | None = None
    stream: bool | None = False
    store: bool | None = True
    metadata: Metadata | None = None
    user: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    # OpenAI parameters this server does not implement: refused unless their value changes nothing.
    background: Annotated[Any, refuse_unless("background responses are not supported by this server")] = None
    conversation: Annotated[
        Any, refuse_unless("conversations are not supported by this server; send previous_response_id")
    ] = None
    prompt: Annotated[Any, refuse_unless("stored prompts are not supported by this server")] = None
    context_management: Annotated[Any, refuse_unless("context_management is not supported by this server")] = None
    moderation: Annotated[Any, refuse_unless("moderation is not supported by this server")] = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.input is None or self.input == []) and self.previous_response_id is None:
            raise invalid("input", "input is required unless previous_response_id is given")
        return self

    @property
    def logprobs(self) -> bool:
        return "message.output_text.logprobs" in (self.include or [])


# The response


class ResponseError(WireModel):
    code: Literal["server_error", "rate_limit_exceeded", "invalid_prompt"]
    message: str


class IncompleteDetails(WireModel):
    reason: Literal["max_output_tokens", "content_filter"]


class InputTokensDetails(WireModel):
    cached_tokens: int = 0  # input tokens read from the prefix cache instead of computed
    cache_write_tokens: int = 0


class OutputTokensDetails(WireModel):
    reasoning_tokens: int = 0


class ResponseUsage(WireModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class Response(SparseModel):
    """The response object: returned whole, carried by the stream's lifecycle events, stored for later turns.
    The request's settings are echoed with what was used; every key the spec requires is always there."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: Reasoning | None = None
    store: bool = True
    background: bool = False
    temperature: float | None = None
    text: ResponseTextParam = Field(default_factory=ResponseTextParam)
    tool_choice: ToolChoiceParam = "auto"
    tools: list[FunctionTool] = Field(default_factory=list)
    top_logprobs: int | None = None
    top_p: float | None = None
    truncation: Literal["auto", "disabled"] | None = "disabled"
    usage: ResponseUsage | None = None  # left out until the response ends: the spec has no null usage
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    absent_if_none = frozenset({"usage", "user"})


class ResponseItemList(WireModel):
    """A page of a stored response's input items. The spec types `first_id` and `last_id` as strings: an empty page
    has neither, and says null."""

    object: Literal["list"] = "list"
    data: list[ItemResource]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedResponse(WireModel):
    """The answer to DELETE /v1/responses/{id}, as the spec's example shows it: the spec has no schema for it."""

    id: str
    object: Literal["response"] = "response"
    deleted: bool = True
