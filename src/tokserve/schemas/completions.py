"""Wire models of /v1/completions, named as in openai-openapi.json; streamed chunks share the response's shape."""

from typing import Literal

from tokserve.schemas.generation import CompletionUsage, FinishReason, GenerationParams, WireModel


class CreateCompletionRequest(GenerationParams):
    prompt: str


class CompletionChoice(WireModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | None = None  # the stop string that ended the text, as vLLM reports it


class CreateCompletionResponse(WireModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: None = None
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None
