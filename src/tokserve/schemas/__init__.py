"""Pydantic models of the OpenAI wire format; no torch, no engine."""

from tokserve.schemas.chat import (
    ChatCompletionChoice,
    ChatCompletionResponseMessage,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponseDelta,
    CreateChatCompletionRequest,
    CreateChatCompletionResponse,
    CreateChatCompletionStreamResponse,
    MessageContent,
)
from tokserve.schemas.completions import CompletionChoice, CreateCompletionRequest, CreateCompletionResponse
from tokserve.schemas.errors import Error, ErrorResponse
from tokserve.schemas.generation import CompletionUsage, FinishReason, GenerationParams, WireModel
from tokserve.schemas.models import ListModelsResponse, Model

__all__ = [
    "ChatCompletionChoice",
    "ChatCompletionResponseMessage",
    "ChatCompletionStreamChoice",
    "ChatCompletionStreamResponseDelta",
    "CompletionChoice",
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
    "WireModel",
]
