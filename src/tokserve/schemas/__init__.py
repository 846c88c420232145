"""Pydantic models of the OpenAI wire format; no torch, no engine."""

from tokserve.schemas.chat import (
    ChatCompletionChoice,
    ChatCompletionChoiceLogprobs,
    ChatCompletionResponseMessage,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponseDelta,
    ChatCompletionTokenLogprob,
    CreateChatCompletionRequest,
    CreateChatCompletionResponse,
    CreateChatCompletionStreamResponse,
    MessageContent,
    TopLogprob,
)
from tokserve.schemas.completions import (
    CompletionChoice,
    CompletionLogprobs,
    CreateCompletionRequest,
    CreateCompletionResponse,
)
from tokserve.schemas.errors import Error, ErrorResponse
from tokserve.schemas.generation import (
    CompletionUsage,
    FinishReason,
    GenerationParams,
    PromptTokensDetails,
    WireModel,
)
from tokserve.schemas.models import ListModelsResponse, Model

__all__ = [
    "ChatCompletionChoice",
    "ChatCompletionChoiceLogprobs",
    "ChatCompletionResponseMessage",
    "ChatCompletionStreamChoice",
    "ChatCompletionStreamResponseDelta",
    "ChatCompletionTokenLogprob",
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionUsage",
    "CreateChatCompletionRequest",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionRequest",
    "CreateCompletionResponse",
    "Error",
    "ErrorResponse",
    "FinishReason",
    "GenerationParams",
    "ListModelsResponse",
    "MessageContent",
    "Model",
    "PromptTokensDetails",
    "TopLogprob",
    "WireModel",
]
