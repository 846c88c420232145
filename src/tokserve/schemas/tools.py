"""Wire models of tool calling and structured outputs in /v1/chat/completions, named as in openai-openapi.json:
the tools a request offers, which one it must call, the calls in history and in answers, and `response_format`.
Shapes and limits only."""

from typing import Annotated, Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from tokserve.schemas.generation import WireModel

# OpenAI's rule for function names: what a template and a call can carry unescaped.
FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")]


class FunctionObject(WireModel):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON Schema; omitted: a function without arguments
    strict: bool | None = None


class ChatCompletionTool(WireModel):
    type: Literal["function"]
    function: FunctionObject


class ChatCompletionNamedToolChoiceFunction(WireModel):
    name: str


class ChatCompletionNamedToolChoice(WireModel):
    type: Literal["function"]
    function: ChatCompletionNamedToolChoiceFunction


ChatCompletionToolChoiceOption = Literal["none", "auto", "required"] | ChatCompletionNamedToolChoice


class ChatCompletionFunctionCallOption(WireModel):
    """The legacy `function_call: {"name": ...}`."""

    name: str


class FunctionCall(WireModel):
    name: str
    arguments: str  # JSON text, as the model wrote it


class ChatCompletionMessageToolCall(WireModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionCallChunk(WireModel):
    """A streamed piece of a call: the name once, in its first piece; the arguments' text in pieces."""

    name: str | None = None
    arguments: str | None = None

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatCompletionMessageToolCallChunk(WireModel):
    """`index` in every piece; `id`, `type` and the name only in a call's first (clients concatenate strings)."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallChunk | None = None

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ResponseFormatText(WireModel):
    type: Literal["text"]


class ResponseFormatJsonObject(WireModel):
    type: Literal["json_object"]


class ResponseFormatJsonSchemaSchema(WireModel):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    # Not `schema`: BaseModel has an attribute of that name.
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormatJsonSchema(WireModel):
    type: Literal["json_schema"]
    json_schema: ResponseFormatJsonSchemaSchema


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJsonObject | ResponseFormatJsonSchema, Field(discriminator="type")
]
