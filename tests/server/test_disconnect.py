"""A client that leaves cancels its generation within a step (a queued one: tests/server/test_batching.py)."""

from collections.abc import Callable

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
