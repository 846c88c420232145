"""POST /v1/completions: HTTP in, the engine's public API, a response out."""

import asyncio

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse

from tokserve.schemas import CreateCompletionRequest, CreateCompletionResponse, WireModel
from tokserve.server.chunks import CompletionChunks
from tokserve.server.conversion import completion_plan
from tokserve.server.dependencies import EngineDep, SettingsDep
from tokserve.server.openapi import generation_responses
from tokserve.server.streaming import respond

router = APIRouter()


@router.post(
    "/v1/completions",
    response_model=None,
    responses=generation_responses(CreateCompletionResponse, CreateCompletionResponse),
)
async def create_completion(
    body: CreateCompletionRequest, http_request: Request, engine: EngineDep, settings: SettingsDep
) -> EventSourceResponse | WireModel:
    # Off the event loop, as conversion.py says. Raises ModelNotFound, LimitExceeded, ContextLengthExceeded.
    plan = await asyncio.to_thread(completion_plan, body, engine, settings)
    chunks = CompletionChunks(plan.response_id, plan.model, engine.system_fingerprint, engine.vocabulary, plan.logprobs)
    return await respond(http_request, engine, settings, body, plan, chunks)
