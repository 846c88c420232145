"""The loop side of a generation: token ids become safe text (detokenizer, then StreamBuffer), then SSE events
or one response. The engine is reached only through its public API; no torch here.

A token's path: `engine/worker.py` -> `engine/detokenizer.py` -> `buffer.py` -> here.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request
from sse_starlette import EventSourceResponse

from tokserve.buffer import StreamBuffer
from tokserve.config import Settings
from tokserve.engine import Decoder, Engine, GenerationRequest, TokenEvent, TokenStream
from tokserve.errors import TokservError
from tokserve.schemas import CompletionUsage, GenerationParams, WireModel
from tokserve.server.chunks import Chunks, Finish
from tokserve.server.errors import ClientDisconnected, error_event

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Generation:
    """One request on its way from token ids to text."""

    request: GenerationRequest
    model: str
    tokens: TokenStream
    decoder: Decoder
    buffer: StreamBuffer
    submitted: float


async def respond(
    http_request: Request,
    engine: Engine,
    settings: Settings,
    body: GenerationParams,
    request: GenerationRequest,
    chunks: Chunks,
) -> EventSourceResponse | WireModel:
    """Submit the request and answer it, streamed or whole.

    Failures up to the first token (prefill included) are HTTP errors; the SSE response starts only after it.
    """
    decoder = engine.decoder(request)
    buffer = StreamBuffer(replacements=settings.replace, stop=body.stop_strings or None)
    # Submitted last: from here on every way out must cancel the request.
    tokens = engine.submit(request)  # raises Overloaded or NotReady before anything is generated
    generation = _Generation(request, settings.model_name, tokens, decoder, buffer, submitted=time.monotonic())
    try:
        events = tokens.events()
        first = await _unless_disconnected(http_request, _first(events))
        if first.error is not None:
            raise first.error
        pieces = _safe_text(generation, first, events, first_token_at=time.monotonic())
        if body.stream:
            return EventSourceResponse(_sse(chunks, pieces, tokens, body.include_usage), sep="\n")
        return await _unless_disconnected(http_request, _collect(chunks, pieces))
    except BaseException:
        tokens.cancel()
        raise


async def _first(events: AsyncIterator[TokenEvent]) -> TokenEvent:
    return await anext(events)


async def _safe_text(
    generation: _Generation, first: TokenEvent, events: AsyncIterator[TokenEvent], first_token_at: float
) -> AsyncIterator[str | Finish]:
    """Text safe to show, then one Finish; a generation error is raised."""
    tokens, decoder, buffer = generation.tokens, generation.decoder, generation.buffer
    count = 0
    event = first
    while True:
        if event.error is not None:
            raise event.error
        assert event.token_id is not None
        count += 1
        text = buffer.put(decoder.step(event.token_id))
        if buffer.stopped:
            tokens.stop()  # the worker ends it at its next step; usage counts the token that completed the stop
        elif event.end is not None:
            text += buffer.flush()
        if text:
            yield text
        if buffer.stopped or event.end is not None:
            finish = Finish(
                "length" if event.end == "length" and not buffer.stopped else "stop",
                buffer.stop_str,
                CompletionUsage(
                    prompt_tokens=len(generation.request.prompt_ids),
                    completion_tokens=count,
                    total_tokens=len(generation.request.prompt_ids) + count,
                ),
            )
            _log_finished(generation, finish, first_token_at)
            yield finish
            return
        event = await anext(events)


async def _sse(
    chunks: Chunks, pieces: AsyncIterator[str | Finish], tokens: TokenStream, include_usage: bool
) -> AsyncIterator[str]:
    try:
        if (start := chunks.start()) is not None:
            yield start
        async for piece in pieces:
            if isinstance(piece, Finish):
                yield chunks.finish(piece)
                if include_usage:
                    yield chunks.usage(piece.usage)
            else:
                yield chunks.content(piece)
    except TokservError as error:  # the response has started: the error must travel in-band
        yield error_event(error)
    finally:
        tokens.cancel()  # stop string, disconnect or normal end alike: the worker drops it at its next step
    yield "[DONE]"


async def _collect(chunks: Chunks, pieces: AsyncIterator[str | Finish]) -> WireModel:
    texts: list[str] = []
    async for piece in pieces:
        if isinstance(piece, Finish):
            return chunks.response("".join(texts), piece)
        texts.append(piece)
    raise AssertionError("a generation always ends with a Finish")


async def _unless_disconnected(http_request: Request, awaitable: Awaitable[T]) -> T:
    """Await, but give up (ClientDisconnected) if the client leaves first: queued requests must notice too."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_disconnected(http_request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if work.done():
        return work.result()
    work.cancel()
    raise ClientDisconnected


async def _disconnected(http_request: Request) -> None:
    while (await http_request.receive())["type"] != "http.disconnect":
        pass


def _log_finished(generation: _Generation, finish: Finish, first_token_at: float) -> None:
    now = time.monotonic()
    logger.info(
        "%s model=%s prompt_tokens=%d completion_tokens=%d ttft=%.3fs duration=%.3fs finish=%s",
        generation.request.request_id,
        generation.model,
        finish.usage.prompt_tokens,
        finish.usage.completion_tokens,
        first_token_at - generation.submitted,
        now - generation.submitted,
        finish.reason,
    )
