"""The loop side of a generation: each choice's token events become typed deltas (`deltas.py`: detokenizer,
reasoning split, tool-call parser, StreamBuffer), then SSE events or one response. The engine is reached only
through its public API; no torch here.

A token's path: `engine/worker.py` -> `engine/detokenizer.py` -> `server/deltas.py` (-> `buffer.py`) -> here.
"""

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request
from sse_starlette import EventSourceResponse

from tokserve.buffer import StreamBuffer
from tokserve.config import Settings
from tokserve.engine import Engine, TokenEvent, TokenStream
from tokserve.errors import NotReady, TokservError
from tokserve.schemas import CompletionUsage, GenerationParams, PromptTokensDetails, WireModel
from tokserve.server.chunks import Chunks, Event
from tokserve.server.conversion import PlannedChoice, ResponsePlan
from tokserve.server.deltas import ChoiceDeltas, Delta, Finish, Logprob, Piece, WholeChoice
from tokserve.server.dependencies import state_of
from tokserve.server.drain import Drain
from tokserve.server.errors import ClientDisconnected, error_body, log_unexpected, unexpected_body
from tokserve.server.request_id import request_id
from tokserve.server.request_record import RequestRecord

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Generation:
    """One choice on its way from token ids to text."""

    choice: PlannedChoice
    plan: ResponsePlan
    tokens: TokenStream
    deltas: ChoiceDeltas
    record: RequestRecord


async def respond(
    http_request: Request,
    engine: Engine,
    settings: Settings,
    body: GenerationParams,
    plan: ResponsePlan,
    chunks: Chunks,
) -> EventSourceResponse | WireModel:
    """Submit the plan's choices and answer them, streamed or whole.

    Failures up to the first token of the first choice (its prefill included) are HTTP errors; the SSE response
    starts only after it. Choices are generated one after another for now, and stream as their tokens come.
    The request is counted in flight (`Drain`) until its answer is complete; if the drain timeout runs out first,
    it ends with NotReady("draining"): a 503 before the stream started, an error event after.
    """
    state = state_of(http_request)
    deltas = [
        ChoiceDeltas(
            choice.index,
            engine.decoder(choice.request),
            StreamBuffer(replacements=settings.replace, stop=list(plan.stop) or None),
            plan.shape,
            StreamBuffer(replacements=settings.replace),
        )
        for choice in plan.choices
    ]
    # Submitted last: from here on every way out must cancel the requests.
    streams = engine.submit_all([choice.request for choice in plan.choices])  # raises Overloaded or NotReady
    record = RequestRecord(request_id(http_request), plan.model, plan.prompt_tokens, state.metrics)
    generations = [
        _Generation(choice, plan, tokens, each, record)
        for choice, tokens, each in zip(plan.choices, streams, deltas, strict=True)
    ]
    state.drain.enter()
    streaming = False
    try:
        events = [tokens.events() for tokens in streams]
        first = await _unless_ended(anext(events[0]), state.drain, http_request)
        if first.error is not None:
            raise first.error
        pieces = _merged(
            [
                _choice_deltas(generation, each, first if index == 0 else None)
                for index, (generation, each) in enumerate(zip(generations, events, strict=True))
            ]
        )
        if body.stream:
            sse = _sse(chunks, _until_expired(pieces, state.drain), streams, plan, body.include_usage, record)
            streaming = True
            return EventSourceResponse(_leaving(sse, state.drain), sep="\n")
        answer = await _unless_ended(_collect(chunks, pieces, plan), state.drain, http_request)
        record.end()
        return answer
    except BaseException as error:
        _cancel(streams)
        record.end("cancelled" if isinstance(error, ClientDisconnected | asyncio.CancelledError) else "error")
        raise
    finally:
        if not streaming:
            state.drain.leave()


async def _choice_deltas(
    generation: _Generation, events: AsyncIterator[TokenEvent], first: TokenEvent | None
) -> AsyncIterator[Delta | Finish]:
    """One choice: the echoed prompt (never through the buffer), its deltas as they become safe, then one Finish.

    A generation error is raised. The token that ends generation (end-of-sequence or a stop token id) adds no
    text unless `include_stop_str_in_output`; every generated token, that one included, adds its logprobs when
    asked, as usage counts it.
    """
    choice, plan, deltas = generation.choice, generation.plan, generation.deltas
    event = first if first is not None else await anext(events)
    if event.error is not None:
        raise event.error
    generation.record.first_token()
    cached_tokens = event.cached_tokens or 0
    last_token_at = time.monotonic()
    if choice.echo is not None:
        prompt = choice.request.prompt_ids
        entries = (None, *(event.prompt_logprobs or ()))
        logprobs = tuple(map(Logprob, prompt, entries)) if plan.logprobs else ()
        if choice.echo or logprobs:
            yield Piece(choice.index, choice.echo, logprobs)
    count = 0
    while True:
        if event.error is not None:
            raise event.error
        count += 1
        shown = event.end not in ("eos", "stop_token") or plan.include_stop_str_in_output
        for delta in deltas.token(event, shown, plan.logprobs):
            yield delta
        if deltas.stopped:
            generation.tokens.stop()  # the worker ends it at its next step; usage counts the token that completed it
        if deltas.stopped or event.end is not None:
            for delta in deltas.end(plan.include_stop_str_in_output):
                yield delta
            stop_reason = deltas.stop_str if deltas.stopped else event.token_id if event.end == "stop_token" else None
            finish = Finish(choice.index, deltas.finish_reason(event.end), stop_reason, count, cached_tokens)
            generation.record.finished(finish.reason)
            yield finish
            return
        event = await anext(events)
        now = time.monotonic()
        generation.record.next_token(now - last_token_at)
        last_token_at = now


async def _merged(sources: list[AsyncIterator[T]]) -> AsyncIterator[T]:
    """The items of several iterators as each comes; the first error ends it."""
    if len(sources) == 1:
        async for item in sources[0]:
            yield item
        return
    waiting = {asyncio.ensure_future(anext(source)): source for source in sources}
    try:
        while waiting:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                source = waiting.pop(task)
                try:
                    item = task.result()
                except StopAsyncIteration:
                    continue
                waiting[asyncio.ensure_future(anext(source))] = source
                yield item
    finally:
        for task in waiting:
            task.cancel()


async def _sse(
    chunks: Chunks,
    pieces: AsyncIterator[Delta | Finish],
    streams: list[TokenStream],
    plan: ResponsePlan,
    include_usage: bool,
    record: RequestRecord,
) -> AsyncGenerator[Event, None]:
    started: set[int] = set()
    finishes: list[Finish] = []
    failure: str | None = "cancelled"  # unless the loop below ends: the client left, and the generator was closed
    try:
        async for piece in pieces:
            if piece.index not in started:
                started.add(piece.index)
                for event in chunks.start(piece.index):
                    yield event
            if isinstance(piece, Finish):
                finishes.append(piece)
                events = chunks.finish(piece)
            else:
                events = chunks.delta(piece)
            for event in events:
                yield event
        for event in chunks.end(_usage(plan, finishes), include_usage):
            yield event
        failure = None
    except TokservError as error:  # the response has started: the error must travel in-band
        failure = "error"
        for event in chunks.failed(error_body(error, record.metrics)):
            yield event
    except Exception as error:  # a bug of ours: in-band too, never a stream cut without its last event
        failure = "error"
        log_unexpected(error)
        for event in chunks.failed(unexpected_body(record.metrics)):
            yield event
    finally:
        _cancel(streams)  # stop string, disconnect or normal end alike: the worker drops them at its next step
        record.end(failure)
        await chunks.closed(failure)
    for event in chunks.done():
        yield event


async def _leaving(sse: AsyncGenerator[Event, None], drain: Drain) -> AsyncIterator[Event]:
    """The stream, counted in flight until its last event is out (or the client left)."""
    try:
        async for event in sse:
            yield event
    finally:
        await sse.aclose()  # now, not when collected: its `finally` cancels the generation
        drain.leave()


async def _until_expired(source: AsyncIterator[T], drain: Drain) -> AsyncIterator[T]:
    """The items of `source` until the drain timeout runs out, then NotReady("draining")."""
    expired = asyncio.ensure_future(drain.expired.wait())
    step: asyncio.Future[T] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(source))
            await asyncio.wait({step, expired}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                raise NotReady("draining")
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            yield item
    finally:  # the deadline, or the client gone (this generator closed or cancelled): no step left running
        expired.cancel()
        if step is not None:
            step.cancel()


async def _collect(chunks: Chunks, pieces: AsyncIterator[Delta | Finish], plan: ResponsePlan) -> WireModel:
    deltas: dict[int, list[Delta]] = {choice.index: [] for choice in plan.choices}
    finishes: dict[int, Finish] = {}
    async for piece in pieces:
        if isinstance(piece, Finish):
            finishes[piece.index] = piece
        else:
            deltas[piece.index].append(piece)
    whole = [WholeChoice.of(deltas[index], finishes[index]) for index in sorted(finishes)]
    return chunks.response(whole, _usage(plan, finishes.values()))


def _usage(plan: ResponsePlan, finishes: Iterable[Finish]) -> CompletionUsage:
    """Tokens generated by every choice; each prompt's tokens once, and its cached tokens as its least cached choice
    read them (the other choices of a prompt reuse what the first one read)."""
    prompt_of = {choice.index: choice.prompt for choice in plan.choices}
    completion_tokens = 0
    cached: dict[int, int] = {}
    for finish in finishes:
        completion_tokens += finish.completion_tokens
        prompt = prompt_of[finish.index]
        cached[prompt] = min(cached.get(prompt, finish.cached_tokens), finish.cached_tokens)
    return CompletionUsage(
        prompt_tokens=plan.prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=plan.prompt_tokens + completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(cached.values())),
    )


def _cancel(streams: list[TokenStream]) -> None:
    for tokens in streams:
        tokens.cancel()


async def _unless_ended(awaitable: Awaitable[T], drain: Drain, http_request: Request) -> T:
    """Await, but give up if the client leaves first (ClientDisconnected: queued requests must notice too) or the
    drain timeout runs out (NotReady)."""
    work = asyncio.ensure_future(awaitable)
    watchers = {asyncio.ensure_future(_disconnected(http_request)), asyncio.ensure_future(drain.expired.wait())}
    try:
        await asyncio.wait({work, *watchers}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for watcher in watchers:
            watcher.cancel()
        if not work.done():
            work.cancel()
    if work.done() and not work.cancelled():
        return work.result()
    if drain.expired.is_set():
        raise NotReady("draining")
    raise ClientDisconnected


async def _disconnected(http_request: Request) -> None:
    while (await http_request.receive())["type"] != "http.disconnect":
        pass
