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
from tokserve.schemas.tools import (
    ChatCompletionMessageToolCall,
    ChatCompletionMessageToolCallChunk,
    ChatCompletionNamedToolChoice,
    ChatCompletionTool,
    FunctionCall,
    FunctionCallChunk,
    FunctionObject,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
    ResponseFormatText,
)

__all__ = [
    "ChatCompletionChoice",
    "ChatCompletionChoiceLogprobs",
    "ChatCompletionMessageToolCall",
    "ChatCompletionMessageToolCallChunk",
    "ChatCompletionNamedToolChoice",
    "ChatCompletionResponseMessage",
    "ChatCompletionStreamChoice",
    "ChatCompletionStreamResponseDelta",
    "ChatCompletionTokenLogprob",
    "ChatCompletionTool",
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
    "FunctionCall",
    "FunctionCallChunk",
    "FunctionObject",
    "GenerationParams",
    "ListModelsResponse",
    "MessageContent",
    "Model",
    "PromptTokensDetails",
    "ResponseFormatJsonObject",
    "ResponseFormatJsonSchema",
    "ResponseFormatText",
    "TopLogprob",
    "WireModel",
]
