"""A client that leaves cancels its generation within a step (a queued one: tests/server/test_batching.py)."""

import asyncio
import contextlib
import json
import random
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import openai
from starlette.types import ASGIApp, Receive, Scope, Send

from tokserve.config import Settings
from tokserve.engine import Engine
from tokserve.server import create_app

LONG = {"prompt": "Once upon a time", "max_tokens": 4000, "temperature": 0, "stream": True}


def test_disconnect_mid_stream_cancels_and_next_request_is_right(
    base_url: str, engine: Engine, client: openai.OpenAI, settings: Settings, wait_until: Callable[..., None]
) -> None:
    wait_until(lambda: engine.counters.running == 0)  # the worker counts a request just after its last token
    before = engine.counters
    with httpx.Client(base_url=base_url, timeout=60) as http, http.stream("POST", "/v1/completions", json=LONG) as r:
        lines = r.iter_lines()  # kept: httpx closes the response when this iterator is collected
        assert next(lines).startswith("data: ")  # generating; leaving the block closes the connection
    wait_until(lambda: engine.counters.cancelled == before.cancelled + 1)
    assert engine.counters.running == 0 and engine.counters.finished == before.finished
    params = {"model": settings.model_name, "prompt": "Once upon a time", "temperature": 0, "max_tokens": 8}
    streamed = "".join(chunk.choices[0].text for chunk in client.completions.create(stream=True, **params))
    assert streamed == client.completions.create(**params).choices[0].text


@dataclass
class LoopProbe:
    """Test-only ASGI middleware: keeps the server's event loop, so tests can count the tasks on it."""

    app: ASGIApp
    loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)

    def tasks(self) -> int:
        assert self.loop is not None

        async def count() -> int:
            return len(asyncio.all_tasks()) - 1  # not this one

        return asyncio.run_coroutine_threadsafe(count(), self.loop).result()


async def drop(url: str, body: dict[str, object], rng: random.Random) -> int:
    """One client that leaves at a random point: right after sending, during a long prefill (a random instant
    before the first byte), or after some events. Returns the number of bytes it read."""
    split = urlsplit(url)
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(split.hostname, split.port)
    writer.write(
        f"POST /v1/completions HTTP/1.1\r\nHost: {split.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    read = b""
    point = rng.choice(["sent", "prefill", "mid-stream"])
    if point == "prefill":
        with contextlib.suppress(TimeoutError):
            read = await asyncio.wait_for(reader.read(1), timeout=rng.uniform(0, 0.5))
    elif point == "mid-stream":
        with contextlib.suppress(asyncio.IncompleteReadError):  # a stream shorter than asked for
            for _ in range(rng.randint(1, 4)):
                read += await reader.readuntil(b"\n\n")
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return len(read)


def threads_of_our_own() -> int:
    """Threads but those of asyncio's default executor: prompts are tokenized there, off the event loop, and it keeps
    up to min(32, cores + 4) threads for reuse, a bound and not a leak."""
    return sum(1 for thread in threading.enumerate() if not thread.name.startswith("asyncio_"))


def test_disconnect_storm_cancels_everything_and_leaks_nothing(
    engine_with: Callable[..., AbstractContextManager[Engine]],
    serve_app: Callable[[ASGIApp], AbstractContextManager[str]],
    wait_until: Callable[[Callable[[], bool]], None],
) -> None:
    rng = random.Random(8)
    long_prompt = "Once upon a time, " * 60  # a prefill long enough to leave in the middle of
    with engine_with(max_queue=128) as engine:
        probe = LoopProbe(create_app(Settings(), engine=engine))
        with serve_app(probe) as url, httpx.Client(base_url=url, timeout=120) as http:
            params = {"prompt": "Once upon a time", "temperature": 0, "max_tokens": 8}
            first = http.post("/v1/completions", json=params).json()["choices"][0]["text"]
            # sse-starlette starts one shutdown watcher per loop with the first stream: part of the baseline.
            assert http.post("/v1/completions", json={**params, "stream": True}).status_code == 200
            wait_until(lambda: engine.counters.running == 0)  # the worker counts a request just after its last token
            threads, tasks, before = threads_of_our_own(), probe.tasks(), engine.counters

            async def storm() -> list[int]:
                clients = []
                for number in range(100):
                    prompt = long_prompt if number % 3 == 0 else f"Story {number}: once upon a time"
                    body = {"prompt": prompt, "max_tokens": 2000, "ignore_eos": True, "stream": True}
                    clients.append(drop(url, body, rng))
                return await asyncio.gather(*clients)

            read = asyncio.run(storm())
            wait_until(lambda: engine.counters.running == 0 and engine.counters.waiting == 0)
            counters = engine.counters
            # None of the generations ran to its end: each one that started was cancelled.
            assert (counters.finished, counters.failed) == (before.finished, before.failed)
            assert sum(1 for count in read if count) <= counters.cancelled - before.cancelled <= 100
            wait_until(lambda: probe.tasks() <= tasks)
            assert threads_of_our_own() <= threads  # a thread of an earlier test may have ended meanwhile
            streamed = [
                chunk["choices"][0]["text"]
                for chunk in (
                    json.loads(line.removeprefix("data: "))
                    for line in http.post("/v1/completions", json={**params, "stream": True}).text.splitlines()
                    if line.startswith("data: {")
                )
            ]
            assert "".join(streamed) == first
