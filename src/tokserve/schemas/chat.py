"""Wire models of /v1/chat/completions, named as in openai-openapi.json. Nothing but shapes and limits here."""

from typing import Annotated, Any, Literal, Self

from pydantic import Discriminator, Field, SerializerFunctionWrapHandler, Tag, model_serializer, model_validator

from tokserve.schemas.generation import (
    CompletionUsage,
    FinishReason,
    GenerationParams,
    WireModel,
    invalid,
    refuse_unless,
    string_or_list,
)
from tokserve.schemas.tools import (
    ChatCompletionFunctionCallOption,
    ChatCompletionMessageToolCall,
    ChatCompletionMessageToolCallChunk,
    ChatCompletionTool,
    ChatCompletionToolChoiceOption,
    FunctionCall,
    FunctionCallChunk,
    FunctionObject,
    ResponseFormat,
)


def _one_of(*accepted: object) -> Any:
    return lambda value: value is None or value in accepted


class ChatCompletionRequestMessageContentPartText(WireModel):
    type: Literal["text"]
    text: str


def _text_part(value: Any) -> str | None:
    return "text" if isinstance(value, dict) and value.get("type") == "text" else None


_ContentPart = Annotated[
    Annotated[ChatCompletionRequestMessageContentPartText, Tag("text")],
    Discriminator(
        _text_part,
        custom_error_type="unsupported_parameter",
        custom_error_message="only text content parts are supported: this server serves text models",
    ),
]


# Told apart by the JSON type, so an error is reported against the one the client meant.
MessageContent = Annotated[
    Annotated[str, Tag("string")] | Annotated[list[_ContentPart], Tag("list")],
    Discriminator(
        string_or_list,
        custom_error_type="string_or_list_type",
        custom_error_message="content must be a string or a list of text parts",
    ),
]


class ChatCompletionRequestSystemMessage(WireModel):
    role: Literal["system", "developer"]
    content: MessageContent
    name: str | None = None


class ChatCompletionRequestUserMessage(WireModel):
    role: Literal["user"]
    content: MessageContent
    name: str | None = None


class ChatCompletionRequestAssistantMessage(WireModel):
    role: Literal["assistant"]
    content: MessageContent | None = None
    name: str | None = None
    tool_calls: list[ChatCompletionMessageToolCall] | None = None
    function_call: FunctionCall | None = None  # the legacy form of one call
    audio: Annotated[Any, refuse_unless("audio is not supported by this server")] = None


class ChatCompletionRequestToolMessage(WireModel):
    role: Literal["tool"]
    content: MessageContent
    tool_call_id: str


class ChatCompletionRequestFunctionMessage(WireModel):
    """The legacy result of a function call: `name` says which."""

    role: Literal["function"]
    content: str | None
    name: str


def _role(value: Any) -> Any:
    return value.get("role") if isinstance(value, dict) else None


ChatCompletionRequestMessage = Annotated[
    Annotated[ChatCompletionRequestSystemMessage, Tag("system")]
    | Annotated[ChatCompletionRequestSystemMessage, Tag("developer")]
    | Annotated[ChatCompletionRequestUserMessage, Tag("user")]
    | Annotated[ChatCompletionRequestAssistantMessage, Tag("assistant")]
    | Annotated[ChatCompletionRequestToolMessage, Tag("tool")]
    | Annotated[ChatCompletionRequestFunctionMessage, Tag("function")],
    Discriminator(
        _role,
        custom_error_type="message_role",
        custom_error_message="role must be system, developer, user, assistant, tool or function",
    ),
]


class CreateChatCompletionRequest(GenerationParams):
    messages: list[ChatCompletionRequestMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # Chat-template controls, as vLLM names them. add_generation_prompt defaults to not continue_final_message.
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = False
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[ChatCompletionTool] | None = Field(None, max_length=128)
    tool_choice: ChatCompletionToolChoiceOption | None = None
    parallel_tool_calls: bool | None = None
    # The legacy forms of tools and tool_choice: answered in their own shape (`function_call`).
    functions: list[FunctionObject] | None = Field(None, max_length=128)
    function_call: Literal["none", "auto"] | ChatCompletionFunctionCallOption | None = None
    response_format: ResponseFormat | None = None
    # OpenAI parameters this server does not implement: refused unless their value changes nothing.
    audio: Annotated[Any, refuse_unless("audio output is not supported by this server")] = None
    modalities: Annotated[Any, refuse_unless("only text output is supported", _one_of([], ["text"]))] = None
    web_search_options: Annotated[Any, refuse_unless("web search is not supported by this server", _one_of())] = None
    reasoning_effort: Annotated[
        Any, refuse_unless("reasoning_effort is not supported; try chat_template_kwargs", _one_of("medium"))
    ] = None
    verbosity: Annotated[Any, refuse_unless("verbosity is not supported by this server", _one_of("medium"))] = None
    moderation: Annotated[Any, refuse_unless("moderation is not supported by this server", _one_of())] = None

    @model_validator(mode="after")
    def _check_chat(self) -> Self:
        if self.top_logprobs and not self.logprobs:
            raise invalid("top_logprobs", "top_logprobs needs logprobs set to true")
        if self.tools and self.functions:
            raise invalid("functions", "functions is the legacy form of tools: send one of them")
        if self.continue_final_message and self.add_generation_prompt:
            raise invalid(
                "continue_final_message",
                "continue_final_message continues the last message; add_generation_prompt starts a new one: "
                "set one of them",
            )
        return self


class TopLogprob(WireModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatCompletionTokenLogprob(WireModel):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChatCompletionChoiceLogprobs(WireModel):
    content: list[ChatCompletionTokenLogprob] | None
    refusal: None = None


class ChatCompletionStreamResponseDelta(WireModel):
    """Only the fields that change: the role in the first delta, content after it, nothing in the last."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None  # the thinking of a reasoning model, as vLLM and llama.cpp name it
    tool_calls: list[ChatCompletionMessageToolCallChunk] | None = None
    function_call: FunctionCallChunk | None = None  # the legacy `functions`' shape

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatCompletionStreamChoice(WireModel):
    index: int = 0
    delta: ChatCompletionStreamResponseDelta
    logprobs: ChatCompletionChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None  # the stop string or stop token id that ended the text, as vLLM reports it


class CreateChatCompletionStreamResponse(WireModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatCompletionStreamChoice]
    usage: CompletionUsage | None = None


class ChatCompletionResponseMessage(WireModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    reasoning_content: str | None = None
    tool_calls: list[ChatCompletionMessageToolCall] | None = None
    function_call: FunctionCall | None = None

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Absent, not null: the optional fields a plain answer does not have."""
        optional = ("reasoning_content", "tool_calls", "function_call")
        return {key: value for key, value in handler(self).items() if key not in optional or value is not None}


class ChatCompletionChoice(WireModel):
    index: int = 0
    message: ChatCompletionResponseMessage
    logprobs: ChatCompletionChoiceLogprobs | None = None
    finish_reason: FinishReason
    stop_reason: str | int | None = None


class CreateChatCompletionResponse(WireModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage
