"""Overload: a burst far beyond the queue limit. Every request either streams its own right answer or is refused
at once with 429 and Retry-After; none waits without end; afterwards nothing is left running or waiting."""

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
from fastapi import FastAPI

from tokserve.config import Settings
from tokserve.engine import Engine
from tokserve.server import create_app

BURST = 200
QUEUE = 16


def request(number: int) -> dict[str, Any]:
    # The number repeats, so the answer goes on with it: another request's tokens would show another number.
    return {"prompt": f"Request {number}. Request {number}. Request", "temperature": 0, "max_tokens": 8}


def test_burst_beyond_the_queue_is_served_or_refused(
    engine_with: Callable[..., AbstractContextManager[Engine]],
    serve_app: Callable[[FastAPI], AbstractContextManager[str]],
    stream_async: Callable[[httpx.AsyncClient, str, dict[str, Any]], Awaitable[Any]],
    wait_until: Callable[[Callable[[], bool]], None],
) -> None:
    with engine_with(max_queue=QUEUE) as engine, serve_app(create_app(Settings(), engine=engine)) as url:

        async def burst() -> list[Any]:
            # A timeout on every request: one that waited without end would fail the test, not hang it.
            limits = httpx.Limits(max_connections=BURST)
            async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
                return await asyncio.gather(
                    *(stream_async(http, "/v1/completions", request(number)) for number in range(BURST))
                )

        outcomes = asyncio.run(burst())
        wait_until(lambda: engine.counters.running == 0 and engine.counters.waiting == 0)
        served = {number: outcome for number, outcome in enumerate(outcomes) if outcome.status == 200}
        refused = [outcome for outcome in outcomes if outcome.status != 200]
        assert served and refused  # the burst did overflow the queue
        for outcome in refused:
            assert outcome.status == 429 and int(outcome.retry_after) >= 1
            assert outcome.events[0]["error"]["type"] == "rate_limit_error"
        counters = engine.counters
        assert (counters.finished, counters.cancelled, counters.failed) == (len(served), 0, 0)
        with httpx.Client(base_url=url, timeout=120) as http:
            for number, outcome in served.items():
                assert outcome.events[-1] == "[DONE]"
                assert outcome.events[-2]["choices"][0]["finish_reason"] == "length"
                alone = http.post("/v1/completions", json=request(number)).json()
                assert outcome.text == alone["choices"][0]["text"]
