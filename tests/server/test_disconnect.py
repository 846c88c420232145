"""A client that leaves cancels its generation within a step, whether it was running or still queued."""

import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import openai

from tokserve.config import Settings
from tokserve.engine import Engine

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


def test_queued_request_that_disconnects_never_runs(
    base_url: str, engine: Engine, wait_until: Callable[..., None]
) -> None:
    wait_until(lambda: engine.counters.running == 0)  # the worker counts a request just after its last token
    before = engine.counters
    with httpx.Client(base_url=base_url, timeout=60) as http, http.stream("POST", "/v1/completions", json=LONG) as r:
        lines = r.iter_lines()  # kept: httpx closes the response when this iterator is collected
        assert next(lines).startswith("data: ")  # the first request is generating
        url = urlsplit(base_url)
        with socket.create_connection((url.hostname, url.port)) as queued:
            body = httpx.Request("POST", f"{base_url}/v1/completions", json=LONG)
            queued.sendall(
                f"POST /v1/completions HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body.read())}\r\n\r\n".encode()
                + body.read()
            )
            wait_until(lambda: engine.counters.waiting == 1)
        wait_until(lambda: engine.counters.cancelled == before.cancelled + 1)
        assert (engine.counters.waiting, engine.counters.running) == (0, 1)  # the first one is still generating
        assert next(line for line in lines if line).startswith("data: ")
    wait_until(lambda: engine.counters.cancelled == before.cancelled + 2)
    assert engine.counters.finished == before.finished  # the queued one never ran
