"""POST /v1/chat/completions: HTTP in, the engine's public API, a response out."""

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse

from tokserve.schemas import CreateChatCompletionRequest, WireModel
from tokserve.server.chunks import ChatChunks
from tokserve.server.conversion import chat_generation_request
from tokserve.server.dependencies import EngineDep, SettingsDep
from tokserve.server.streaming import respond

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: CreateChatCompletionRequest, http_request: Request, engine: EngineDep, settings: SettingsDep
) -> EventSourceResponse | WireModel:
    request = chat_generation_request(body, engine, settings)  # raises ModelNotFound, ContextLengthExceeded
    return await respond(
        http_request, engine, settings, body, request, ChatChunks(request.request_id, settings.model_name)
    )
