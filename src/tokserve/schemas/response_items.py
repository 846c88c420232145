"""Wire models of the Responses API's items and their content parts, named as in openai-openapi.json: what a
request's `input` lists, what a response's `output` lists, and the stored input items. Shapes and limits only.

Where the spec types a field as a string or an object but not null (an item's `id` or `status`), a None is left out
of the dump rather than sent as null, so that every object validates against the spec.
"""

from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    Tag,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tokserve.schemas.generation import WireModel, invalid, string_or_list

ItemStatus = Literal["in_progress", "completed", "incomplete"]


class SparseModel(WireModel):
    """Leaves out the fields named in `absent_if_none` while they are None: the spec does not allow null there."""

    absent_if_none: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        return {key: value for key, value in dumped.items() if value is not None or key not in self.absent_if_none}


def _field(value: Any, name: str) -> Any:
    """A field of a body (a dict) or of a model built in code."""
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def refuse_other_types(accepted: tuple[str, ...], what: str) -> BeforeValidator:
    """Refuse an object whose `type` is an OpenAI kind this server does not implement, naming that kind."""

    def check(value: Any) -> Any:
        kind = value.get("type") if isinstance(value, dict) else None
        if isinstance(kind, str) and kind not in accepted:
            message = "{kind} {what} are not supported by this server (only {accepted})"
            context = {"kind": kind, "what": what, "accepted": ", ".join(accepted)}
            raise PydanticCustomError("unsupported_parameter", message, context)
        return value

    return BeforeValidator(check)


# Content parts, in input and in output


class InputTextContent(WireModel):
    type: Literal["input_text"] = "input_text"
    text: str


class TopLogProb(WireModel):
    token: str
    logprob: float
    bytes: list[int]


class LogProb(WireModel):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogProb]


class OutputTextContent(WireModel):
    """Text the model wrote; also accepted in the input, as an assistant message's history."""

    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)  # citations: this server makes none
    logprobs: list[LogProb] = Field(default_factory=list)


class ReasoningTextContent(WireModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class SummaryTextContent(WireModel):
    type: Literal["summary_text"] = "summary_text"
    text: str


_InputContent = Annotated[
    Annotated[InputTextContent, Tag("input_text")] | Annotated[OutputTextContent, Tag("output_text")],
    Discriminator(
        lambda value: _field(value, "type"),
        custom_error_type="content_part",
        custom_error_message="a content part must be an object with a type: input_text, or output_text",
    ),
    refuse_other_types(("input_text", "output_text"), "content parts"),
]


_MessageContent = Annotated[
    Annotated[str, Tag("string")] | Annotated[list[_InputContent], Tag("list")],
    Discriminator(
        string_or_list,
        custom_error_type="string_or_list_type",
        custom_error_message="content must be a string or a list of input_text parts",
    ),
]


# Items: what `input` lists, what `output` lists


class EasyInputMessage(WireModel):
    """A message of the input, with or without `"type": "message"`; an assistant's may repeat an earlier output."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: _MessageContent

    @model_validator(mode="after")
    def _text_of_its_role(self) -> Self:
        if self.role != "assistant" and any(isinstance(part, OutputTextContent) for part in self.content):
            raise invalid("input", "output_text parts belong to assistant messages; send input_text")
        return self


class FunctionToolCall(SparseModel):
    """A call the model made: in `output`, with its `id` and `status`; in `input`, as history."""

    type: Literal["function_call"] = "function_call"
    id: str | None = None
    call_id: str
    name: str
    arguments: str  # JSON text, as the model wrote it
    status: ItemStatus | None = None

    absent_if_none = frozenset({"id", "status"})


class FunctionCallOutputItemParam(SparseModel):
    """What a call returned, sent back in `input`."""

    type: Literal["function_call_output"] = "function_call_output"
    id: str | None = None
    call_id: str
    output: str
    status: ItemStatus | None = None

    absent_if_none = frozenset({"id", "status"})


class ReasoningItem(SparseModel):
    """The model's thinking, in `output`; in `input`, accepted and dropped (the chat template does not see it)."""

    type: Literal["reasoning"] = "reasoning"
    id: str
    summary: list[SummaryTextContent] = Field(default_factory=list)
    content: list[ReasoningTextContent] | None = None
    encrypted_content: str | None = None
    status: ItemStatus | None = None

    absent_if_none = frozenset({"content", "status"})


class ItemReferenceParam(WireModel):
    """An item of a stored response, by id; `type` may be left out."""

    type: Literal["item_reference"] | None = "item_reference"
    id: str


def _input_kind(value: Any) -> Any:
    kind = _field(value, "type")
    if kind is None and isinstance(value, dict | WireModel):
        return "message" if _field(value, "role") is not None else "item_reference"
    return kind


InputItem = Annotated[
    Annotated[EasyInputMessage, Tag("message")]
    | Annotated[FunctionToolCall, Tag("function_call")]
    | Annotated[FunctionCallOutputItemParam, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[ItemReferenceParam, Tag("item_reference")],
    Discriminator(
        _input_kind,
        custom_error_type="input_item",
        custom_error_message="an input item must be an object: a message, or an item with a type",
    ),
    refuse_other_types(
        ("message", "function_call", "function_call_output", "reasoning", "item_reference"), "input items"
    ),
]

InputParam = Annotated[
    Annotated[str, Tag("string")] | Annotated[list[InputItem], Tag("list")],
    Discriminator(
        string_or_list,
        custom_error_type="string_or_list_type",
        custom_error_message="input must be a string or a list of items",
    ),
]


class OutputMessage(WireModel):
    type: Literal["message"] = "message"
    id: str
    status: ItemStatus
    role: Literal["assistant"] = "assistant"
    content: list[OutputTextContent]


OutputItem = Annotated[OutputMessage | ReasoningItem | FunctionToolCall, Field(discriminator="type")]


# What GET /v1/responses/{id}/input_items lists


class InputMessageResource(WireModel):
    type: Literal["message"] = "message"
    id: str
    status: ItemStatus = "completed"
    role: Literal["user", "system", "developer"]
    content: list[InputTextContent]


class FunctionToolCallResource(FunctionToolCall):
    id: str
    status: ItemStatus


class FunctionToolCallOutputResource(FunctionCallOutputItemParam):
    id: str
    status: ItemStatus


def _resource_kind(value: Any) -> Any:
    kind = _field(value, "type")
    if kind == "message":
        return "output_message" if _field(value, "role") == "assistant" else "input_message"
    return kind


# An input item as stored: what the client sent, with ids; an assistant message becomes an OutputMessage.
ItemResource = Annotated[
    Annotated[InputMessageResource, Tag("input_message")]
    | Annotated[OutputMessage, Tag("output_message")]
    | Annotated[FunctionToolCallResource, Tag("function_call")]
    | Annotated[FunctionToolCallOutputResource, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_resource_kind),
]
