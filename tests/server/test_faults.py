"""Faults: one request's failure inside generation fails that request only, while others run beside it; a worker
thread that dies is reported (/health `unhealthy`, 503 for new requests) and nothing waits on it for ever. That
`tokserve serve` then exits with status 1 for its supervisor is tested on a real process in test_serve_process.py."""

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tokserve.config import Settings
from tokserve.engine import Engine
from tokserve.server import create_app

Streamer = Callable[[httpx.AsyncClient, str, dict[str, Any]], Awaitable[Any]]


def request(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"prompt": prompt, "temperature": 0, "max_tokens": 6, **extra}


def test_a_failing_request_fails_alone_while_others_complete(
    base_url: str,
    engine: Engine,
    fault_marker: str,
    stream_async: Streamer,
    wait_idle: Callable[[], None],
) -> None:
    prompts = [f"Request {number}. Request {number}. Request" for number in range(4)]
    wait_idle()
    before = engine.counters

    async def run() -> tuple[list[Any], httpx.Response, Any]:
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
            expected = [(await http.post("/v1/completions", json=request(prompt))).json() for prompt in prompts]
            fails_at_prefill = http.post("/v1/completions", json=request(f"{fault_marker} Hi"))
            fails_mid_stream = stream_async(http, "/v1/completions", request(f"{fault_marker}2 Once upon a time"))
            others = [stream_async(http, "/v1/completions", request(prompt)) for prompt in prompts]
            *streams, failed, broken = await asyncio.gather(*others, fails_at_prefill, fails_mid_stream)
            for stream, answer in zip(streams, expected, strict=True):
                assert stream.status == 200 and stream.events[-1] == "[DONE]"
                assert stream.text == answer["choices"][0]["text"]
            return streams, failed, broken

    _, failed, broken = asyncio.run(run())
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
    *_, error, done = broken.events
    assert broken.status == 200 and done == "[DONE]" and error["error"]["type"] == "server_error"
    wait_idle()
    after = engine.counters
    assert after.failed - before.failed == 2
    assert after.finished - before.finished == 2 * len(prompts)  # each prompt once whole, once streamed
    assert engine.is_alive
    assert httpx.get(f"{base_url}/health").json() == {"status": "ready"}


@pytest.fixture
def dying(
    engine_with: Callable[..., AbstractContextManager[Engine]],
    serve_app: Callable[[FastAPI], AbstractContextManager[str]],
    fault_marker: str,
) -> Iterator[tuple[str, Engine]]:
    """A server on its own engine, whose worker a prompt containing the marker and `!` kills."""
    with engine_with(fault_marker=fault_marker) as other, serve_app(create_app(Settings(), engine=other)) as url:
        yield url, other


def test_a_dead_worker_is_unhealthy_and_nothing_hangs(
    dying: tuple[str, Engine],
    fault_marker: str,
    stream_async: Streamer,
    wait_until: Callable[[Callable[[], bool]], None],
) -> None:
    url, engine = dying
    running = request("Once upon a time", max_tokens=60, ignore_eos=True)

    async def run() -> tuple[Any, Any, Any]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            in_flight = asyncio.ensure_future(stream_async(http, "/v1/completions", running))
            await asyncio.to_thread(wait_until, lambda: engine.counters.running == 1)
            killer = asyncio.ensure_future(stream_async(http, "/v1/completions", request(f"{fault_marker}! Hi")))
            await asyncio.to_thread(wait_until, lambda: engine.counters.waiting + engine.counters.running >= 2)
            queued = asyncio.ensure_future(stream_async(http, "/v1/completions", request("Queued")))
            return await asyncio.gather(in_flight, killer, queued)

    in_flight, killer, queued = asyncio.run(run())
    # The one-at-a-time worker ends the first request before the killer starts; a batching one fails it mid-stream.
    assert in_flight.status == 200 and in_flight.events[-1] == "[DONE]"
    last = in_flight.events[-2]
    assert "choices" in last or last["error"]["code"] == "unhealthy"
    for refused in (killer, queued):
        assert (refused.status, refused.events[0]["error"]["code"]) == (503, "unhealthy")
        assert refused.retry_after is not None
    counters = engine.counters
    assert (counters.running, counters.waiting) == (0, 0)
    # The queued request reached the engine unless the worker was dead by then (a batching one dies at once).
    assert counters.finished + counters.failed + counters.cancelled in (2, 3)
    assert not engine.is_alive
    with httpx.Client(base_url=url, timeout=60) as http:
        health = http.get("/health")
        assert (health.status_code, health.json()) == (503, {"status": "unhealthy"})
        answer = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
        assert answer.status_code == 503 and answer.headers["retry-after"]
        assert answer.json()["error"]["code"] == "unhealthy"
