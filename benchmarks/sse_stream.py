"""Reading an OpenAI-style SSE response: the JSON chunks up to `data: [DONE]`. Shared by the benchmarks that time
streams (`bench_serving.py`, `bench_probes.py`)."""

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx


class StreamFailed(Exception):
    """The server refused the request, or ended its stream with an error event; the message says which (short)."""


async def stream_chunks(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Each JSON chunk of `response` until `[DONE]`; StreamFailed for a status other than 200 or an error event."""
    if response.status_code != 200:
        raise StreamFailed(f"HTTP {response.status_code}: {(await response.aread()).decode()[:200]}")
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        chunk: dict[str, Any] = json.loads(payload)
        if "error" in chunk:
            raise StreamFailed(str(chunk["error"])[:200])
        yield chunk
