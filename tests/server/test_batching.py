"""Continuous batching: every request in a batch gets what it would get alone, leaves on its own, and the queue
in front of the batch is bounded (429 + Retry-After) and forgets requests whose client left."""

import asyncio
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from starlette.types import ASGIApp

from conftest import assert_same_greedy_text
from tokserve.config import Settings
from tokserve.engine import Engine
from tokserve.server import create_app

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "1, 2, 3, 4,",
    "def fibonacci(n):",
    "My favourite colour is",
    "Explain gravity to a child:",
    "The quick brown fox",
    "Translate 'good morning' into Spanish:",
]


def test_greedy_text_is_the_same_alone_and_in_a_batch_of_8(
    client: openai.OpenAI, settings: Settings, engine: Engine, wait_idle: Callable[[], None]
) -> None:
    """A list of 8 prompts is admitted at once into an idle worker, so the 8 choices share every step."""
    params: dict[str, Any] = {"model": settings.model_name, "max_tokens": 24, "temperature": 0, "logprobs": 2}
    alone = [client.completions.create(prompt=prompt, **params).choices[0] for prompt in PROMPTS]
    wait_idle()
    batched = sorted(client.completions.create(prompt=PROMPTS, **params).choices, key=lambda choice: choice.index)
    for one, many in zip(alone, batched, strict=True):
        assert_same_greedy_text(one, many)


async def _chat(client: openai.AsyncOpenAI, request: dict[str, Any]) -> list[str]:
    """The text of each choice, streamed."""
    texts: dict[int, str] = {}
    async for chunk in await client.chat.completions.create(stream=True, **request):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    return [texts[index] for index in sorted(texts)]


def test_per_request_parameters_hold_inside_a_batch(base_url: str, settings: Settings) -> None:
    """Eight different requests at once, each compared with itself alone: no cross-talk, nothing shared."""
    model = settings.model_name

    def chat(content: str, **extra: Any) -> dict[str, Any]:
        return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 20, **extra}

    requests = [
        chat(PROMPTS[0], temperature=0),
        chat(PROMPTS[1], temperature=1.0, seed=7),
        chat(PROMPTS[2], temperature=0, presence_penalty=2.0, frequency_penalty=1.0),
        chat(PROMPTS[3], temperature=0, stop=[" "]),
        chat(PROMPTS[4], temperature=0, max_tokens=3),
        chat(PROMPTS[5], temperature=0.8, top_p=0.9, seed=11, n=2),
        chat(PROMPTS[6], temperature=0, extra_body={"ignore_eos": True, "repetition_penalty": 1.3}),
        chat(PROMPTS[7], temperature=0, logit_bias={"1": 5}),
    ]

    async def run() -> tuple[list[list[str]], list[list[str]]]:
        async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0) as client:
            alone = [await _chat(client, request) for request in requests]
            together = await asyncio.gather(*(_chat(client, request) for request in requests))
        return alone, list(together)

    alone, together = asyncio.run(run())
    assert together == alone
    assert all(" " not in text for text in together[3])  # the stop string held inside the batch


def test_one_request_stops_and_one_leaves_while_the_others_go_on(
    base_url: str, settings: Settings, engine: Engine, wait_idle: Callable[[], None]
) -> None:
    body = {"model": settings.model_name, "temperature": 0, "max_tokens": 40, "ignore_eos": True, "stream": True}
    wait_idle()
    before = engine.counters

    async def stream(http: httpx.AsyncClient, prompt: str, leave_after: int | None = None, **extra: Any) -> str:
        text = ""
        async with http.stream("POST", "/v1/completions", json={**body, "prompt": prompt, **extra}) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    text += httpx.Response(200, content=line[6:]).json()["choices"][0]["text"]
                    if leave_after is not None and len(text) >= leave_after:
                        return text  # closing the response drops the connection
        return text

    async def run() -> list[str]:
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
            alone = [await stream(http, prompt) for prompt in PROMPTS[:2]]
            together = await asyncio.gather(
                stream(http, PROMPTS[0]),
                stream(http, PROMPTS[1]),
                stream(http, PROMPTS[2], stop=[","]),
                stream(http, PROMPTS[3], leave_after=1),
            )
            return alone + list(together)

    first, second, first_together, second_together, stopped, left = asyncio.run(run())
    assert (first_together, second_together) == (first, second)
    assert "," not in stopped and left
    wait_idle()
    after = engine.counters
    assert after.cancelled == before.cancelled + 1  # the one that left; a stop string ends a request as finished
    assert after.finished == before.finished + 5 and after.failed == before.failed


def _raw_post(url: str, body: bytes) -> socket.socket:
    """A request sent over a raw socket, so the test decides when the client vanishes."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(
        f"POST /v1/completions HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


LONG = {"prompt": "Once upon a time", "max_tokens": 4000, "temperature": 0, "ignore_eos": True, "stream": True}


def test_beyond_the_queue_429_with_retry_after_and_a_queued_client_that_leaves_costs_nothing(
    engine_with: Callable[..., AbstractContextManager[Engine]],
    serve_app: Callable[[ASGIApp], AbstractContextManager[str]],
    settings: Settings,
    wait_until: Callable[..., None],
) -> None:
    """A worker that runs one request and queues one: the third gets 429; the queued one leaves unrun."""
    with (
        engine_with(max_queue=1, max_running=1) as narrow,
        serve_app(create_app(settings, engine=narrow)) as url,
        httpx.Client(base_url=url, timeout=60) as http,
        http.stream("POST", "/v1/completions", json=LONG) as first,
    ):
        lines = first.iter_lines()  # kept: httpx closes the response when this iterator is collected
        assert next(lines).startswith("data: ")  # the first request is generating
        queued = _raw_post(url, httpx.Request("POST", url, json=LONG).read())
        wait_until(lambda: narrow.counters.waiting == 1)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with client, pytest.raises(openai.RateLimitError) as refused:
            client.completions.create(model=settings.model_name, prompt="Hi", max_tokens=1)
        assert refused.value.status_code == 429 and int(refused.value.response.headers["Retry-After"]) >= 1
        assert refused.value.body["type"] == "rate_limit_error"  # type: ignore[index]
        queued.close()
        wait_until(lambda: narrow.counters.waiting == 0)
        counters = narrow.counters
        assert (counters.running, counters.cancelled, counters.finished) == (1, 1, 0)  # dropped while the first ran
        assert next(line for line in lines if line).startswith("data: ")  # and the first goes on
