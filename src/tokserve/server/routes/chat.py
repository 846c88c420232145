"""POST /v1/chat/completions: HTTP in, the engine's public API, a response out."""

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse

from tokserve.schemas import (
    CreateChatCompletionRequest,
    CreateChatCompletionResponse,
    CreateChatCompletionStreamResponse,
    WireModel,
)
from tokserve.server.chunks import ChatChunks
from tokserve.server.conversion import chat_plan
from tokserve.server.dependencies import EngineDep, SettingsDep
from tokserve.server.openapi import generation_responses
from tokserve.server.streaming import respond

router = APIRouter()


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses=generation_responses(CreateChatCompletionResponse, CreateChatCompletionStreamResponse),
)
async def create_chat_completion(
    body: CreateChatCompletionRequest, http_request: Request, engine: EngineDep, settings: SettingsDep
) -> EventSourceResponse | WireModel:
    plan = chat_plan(body, engine, settings)  # raises ModelNotFound, ContextLengthExceeded, InvalidRequest
    chunks = ChatChunks(plan.response_id, settings.model_name, engine.vocabulary, plan.logprobs)
    return await respond(http_request, engine, settings, body, plan, chunks)
