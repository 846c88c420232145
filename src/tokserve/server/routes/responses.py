"""The Responses API: POST /v1/responses (streamed or not), and the stored responses by id (GET, DELETE, input
items). A request becomes a chat request (`server/responses.py`) and runs through the same plan and pipeline; its
answer is rendered by `ResponseEvents` and, with `store`, kept in the SQLite store for `previous_response_id`."""

import asyncio
import json
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response as HTTPResponse
from sse_starlette import EventSourceResponse

from tokserve.errors import InvalidRequest, ResponseNotFound
from tokserve.schemas import WireModel
from tokserve.schemas.responses import CreateResponse, DeletedResponse, Response, ResponseItemList
from tokserve.server.conversion import chat_plan
from tokserve.server.dependencies import EngineDep, SettingsDep, StateDep
from tokserve.server.response_objects import ResponseEvents, answer_messages, dumped
from tokserve.server.response_store import ResponseStore, StoredResponse
from tokserve.server.responses import chat_request, conversation, input_messages, input_resources, new_id
from tokserve.server.streaming import respond

router = APIRouter()


@router.post("/v1/responses", response_model=None)
async def create_response(
    body: CreateResponse, http_request: Request, engine: EngineDep, settings: SettingsDep, state: StateDep
) -> EventSourceResponse | WireModel:
    store = state.responses
    history: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        history = json.loads((await _stored(store, body.previous_response_id, "previous_response_id")).conversation)
    template = settings.chat_template_text or engine.chat_template or ""
    inputs = input_messages(body)
    chat = chat_request(body, history, inputs, template)
    # Off the event loop, as conversion.py says; raises what chat completions raise, naming chat's fields.
    plan = await asyncio.to_thread(chat_plan, chat, engine, settings)
    if len(plan.choices) != 1:
        raise InvalidRequest("A response has one answer.", param="input")
    kept = store is not None and body.store is not False
    started = Response(
        id=new_id("resp"),
        created_at=int(time.time()),
        status="in_progress",
        model=plan.model,
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        max_tool_calls=body.max_tool_calls,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        previous_response_id=body.previous_response_id,
        reasoning=body.reasoning,
        store=kept,
        temperature=body.temperature,
        top_p=body.top_p,
        top_logprobs=body.top_logprobs,
        **{name: value for name, value in _echoed(body).items() if value is not None},
    )

    async def keep(response: Response) -> None:
        if store is not None and kept:
            answer = answer_messages(response)
            await store.put(
                StoredResponse(
                    response.id,
                    response.model_dump_json(),
                    dumped(input_resources(body)),
                    conversation(history, inputs, answer),
                    response.created_at,
                )
            )

    events = ResponseEvents(started, engine.vocabulary, bool(chat.logprobs), keep)
    answer = await respond(http_request, engine, settings, chat, plan, events)
    if not isinstance(answer, EventSourceResponse):
        await events.closed(None)
    return answer


def _echoed(body: CreateResponse) -> dict[str, Any]:
    """The request's settings as the response repeats them (absent: the response's defaults)."""
    return {
        "text": body.text,
        "tool_choice": body.tool_choice,
        "tools": body.tools,
        "truncation": body.truncation,
        "user": body.user,
        "metadata": body.metadata,
    }


@router.get("/v1/responses/{response_id}", response_model=None)
async def get_response(response_id: str, state: StateDep) -> HTTPResponse:
    stored = await _stored(state.responses, response_id)
    return HTTPResponse(stored.response, media_type="application/json")


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, state: StateDep) -> DeletedResponse:
    if state.responses is None or not await state.responses.delete(response_id):
        raise ResponseNotFound(f"No stored response has the id '{response_id}'.", param="response_id")
    return DeletedResponse(id=response_id)


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> ResponseItemList:
    stored = await _stored(state.responses, response_id)
    items = json.loads(stored.input_items)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidRequest(f"No input item of this response has the id '{after}'.", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return ResponseItemList.model_validate(
        {
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


async def _stored(store: ResponseStore | None, response_id: str, param: str = "response_id") -> StoredResponse:
    stored = await store.get(response_id) if store is not None else None
    if stored is None:
        raise ResponseNotFound(f"No stored response has the id '{response_id}'.", param=param)
    return stored
