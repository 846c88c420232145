"""POST /v1/chat/completions: HTTP in, the engine's public API, a response out."""

import asyncio

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
    # Off the event loop, as conversion.py says. Raises ModelNotFound, LimitExceeded, ContextLengthExceeded.
    plan = await asyncio.to_thread(chat_plan, body, engine, settings)
    chunks = ChatChunks(
        plan.response_id,
        plan.model,
        engine.system_fingerprint,
        engine.vocabulary,
        plan.logprobs,
        legacy_functions=plan.shape.legacy_functions,
    )
    return await respond(http_request, engine, settings, body, plan, chunks)
