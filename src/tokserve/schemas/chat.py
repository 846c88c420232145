"""Wire models of /v1/chat/completions, named as in openai-openapi.json. Nothing but shapes and limits here."""

from typing import Annotated, Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from tokserve.schemas.generation import CompletionUsage, FinishReason, GenerationParams, WireModel


class ChatCompletionRequestMessageContentPartText(WireModel):
    type: Literal["text"]
    text: str


MessageContent = str | list[ChatCompletionRequestMessageContentPartText]


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


ChatCompletionRequestMessage = Annotated[
    ChatCompletionRequestSystemMessage | ChatCompletionRequestUserMessage | ChatCompletionRequestAssistantMessage,
    Field(discriminator="role"),
]


class CreateChatCompletionRequest(GenerationParams):
    messages: list[ChatCompletionRequestMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class ChatCompletionStreamResponseDelta(WireModel):
    """Only the fields that change: the role in the first delta, content after it, nothing in the last."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatCompletionStreamChoice(WireModel):
    index: int = 0
    delta: ChatCompletionStreamResponseDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | None = None  # the stop string that ended the text, as vLLM reports it


class CreateChatCompletionStreamResponse(WireModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: None = None
    choices: list[ChatCompletionStreamChoice]
    usage: CompletionUsage | None = None


class ChatCompletionResponseMessage(WireModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatCompletionChoice(WireModel):
    index: int = 0
    message: ChatCompletionResponseMessage
    logprobs: None = None
    finish_reason: FinishReason
    stop_reason: str | None = None


class CreateChatCompletionResponse(WireModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: None = None
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage
