"""One loaded engine for the whole run, served by real uvicorn servers on free loopback ports in threads."""

import dataclasses
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
import uvicorn
from fastapi import FastAPI
from openai.types import CompletionChoice
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tokenizers import Tokenizer

from tokserve.config import Settings

# Stored responses (/v1/responses) in memory, never in the user's data directory: for every app and process the
# tests start, whatever their other settings.
os.environ.setdefault("TOKSERVE_RESPONSES_DB", ":memory:")
from tokserve.engine import Engine
from tokserve.server import create_app, load_engine


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `cuda` skip where torch sees no CUDA device: the only tests that may skip."""
    if torch.cuda.is_available():
        return
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def fault_marker() -> str:
    """Prompts containing this fail inside generation: in prefill, or after N tokens when followed by N."""
    return "TOKSERVE-TEST-FAULT"


@contextmanager
def serve(app: ASGIApp) -> Iterator[str]:
    """Run `app` on a free loopback port in a thread; yield its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections made before uvicorn starts wait in the backlog: no polling for start-up
    host, port = sock.getsockname()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


@pytest.fixture(scope="session")
def settings(fault_marker: str) -> Iterator[Settings]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TOKSERVE_FAULT_MARKER", fault_marker)  # the hook exists only through the environment
        patch.setenv("TOKSERVE_DTYPE", "float32")  # the same numbers on every CPU, bfloat16-capable or not
        yield Settings()


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[Engine]:
    engine = load_engine(settings)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def tokenizer(engine: Engine) -> Tokenizer:
    """The embedded model's `tokenizers` tokenizer (loading it alone from the GGUF file takes as long as the model)."""
    return engine.loaded.tokenizer.backend_tokenizer


@pytest.fixture(scope="session")
def base_url(settings: Settings, engine: Engine) -> Iterator[str]:
    with serve(create_app(settings, engine=engine)) as url:
        yield url


@pytest.fixture(scope="session")
def serve_app() -> Callable[[FastAPI], AbstractContextManager[str]]:
    return serve


@pytest.fixture(scope="session")
def serve_with(engine: Engine) -> Callable[..., AbstractContextManager[str]]:
    """Another app on the same engine, with other settings: `with serve_with(replace=[...]) as url`."""

    def start(**overrides: object) -> AbstractContextManager[str]:
        return serve(create_app(Settings.model_validate(overrides), engine=engine))

    return start


@pytest.fixture(scope="session")
def engine_with(engine: Engine) -> Callable[..., AbstractContextManager[Engine]]:
    """Another engine with its own worker and limits, on the session's loaded model (never loaded twice):
    `with engine_with(max_queue=16) as other`. For tests that fill its queue or kill its worker."""

    @contextmanager
    def start(**options: Any) -> Iterator[Engine]:
        other = Engine(engine.loaded, dataclasses.replace(engine.settings, **options))
        try:
            yield other
        finally:
            other.close()

    return start


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    # max_retries=0: the SDK retries 429 and 5xx, which would hide the errors under test.
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as http:
        yield http


@pytest.fixture
def sse(http: httpx.Client) -> Callable[[str, dict[str, object]], list[object]]:
    """POST a streaming request; return its SSE data payloads, JSON-decoded except the final "[DONE]"."""

    def post(path: str, body: dict[str, object]) -> list[object]:
        with http.stream("POST", path, json={**body, "stream": True}) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            payloads = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
        return [payload if payload == "[DONE]" else json.loads(payload) for payload in payloads]

    return post


@dataclass
class Streamed:
    """What a client saw of one streaming request: the status, Retry-After, and the JSON of every SSE event (the
    final "[DONE]" kept as it is), or the error envelope of a refused request."""

    status: int
    retry_after: str | None
    events: list[Any]

    @property
    def text(self) -> str:
        return "".join(
            choice.get("text") or choice.get("delta", {}).get("content") or ""
            for event in self.events
            if isinstance(event, dict)
            for choice in event.get("choices", [])
        )


async def post_streaming(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> Streamed:
    """POST a streaming request and read it to its end."""
    async with http.stream("POST", path, json={**body, "stream": True}) as response:
        if response.status_code != 200:
            return Streamed(
                response.status_code, response.headers.get("retry-after"), [json.loads(await response.aread())]
            )
        payloads = [line.removeprefix("data: ") async for line in response.aiter_lines() if line.startswith("data: ")]
    events = [payload if payload == "[DONE]" else json.loads(payload) for payload in payloads]
    return Streamed(200, None, events)


@pytest.fixture(scope="session")
def stream_async() -> Callable[[httpx.AsyncClient, str, dict[str, Any]], Awaitable[Streamed]]:
    """`await stream_async(http, path, body)`: a streaming request read to its end with an async client."""
    return post_streaming


@pytest.fixture(scope="session")
def wait_until() -> Callable[[Callable[[], bool]], None]:
    """Wait for a condition on counters or /health that another thread makes true; fail after 60 s."""

    def wait(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 60
        tick = threading.Event()  # never set: its timed wait paces the polling
        while not condition():
            assert time.monotonic() < deadline, "condition not reached in 60 s"
            tick.wait(0.02)

    return wait


@dataclass
class ChatRequestLog:
    """Test-only ASGI middleware: keeps the headers and JSON body of each chat request the server received."""

    app: ASGIApp
    received: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
            await self.app(scope, receive, send)
            return
        body = bytearray()

        async def receive_and_keep() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
                if not message.get("more_body"):
                    headers = {name.decode(): value.decode() for name, value in scope["headers"]}
                    self.received.append((headers, json.loads(body)))
            return message

        await self.app(scope, receive_and_keep, send)


@pytest.fixture(scope="session")
def logged_server(settings: Settings, engine: Engine) -> Iterator[tuple[str, list[tuple[dict[str, str], Any]]]]:
    """The server behind a `ChatRequestLog`: its base URL, and the (headers, body) of each chat request received."""
    log = ChatRequestLog(create_app(settings, engine=engine))
    with serve(log) as url:
        yield url, log.received


@pytest.fixture(scope="session")
def wait_idle(engine: Engine, wait_until: Callable[[Callable[[], bool]], None]) -> Callable[[], None]:
    """Wait until the worker has nothing running or waiting (it counts a request just after its last token)."""

    def wait() -> None:
        wait_until(lambda: engine.counters.running == 0 and engine.counters.waiting == 0)

    return wait


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class TokserveProcess:
    """A `tokserve serve` process: its base URL, the process, and the file its log goes to."""

    url: str
    process: "subprocess.Popen[bytes]"
    log: Path

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()


@contextmanager
def tokserve_process(
    log: Path, *flags: str, env: dict[str, str] | None = None, preexec_fn: Callable[[], object] | None = None
) -> Iterator[TokserveProcess]:
    """Run the installed `tokserve serve` on a free loopback port until /health says ready (300 s at most)."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "tokserve"), "serve", "--port", str(port), *flags]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
            preexec_fn=preexec_fn,
        )
    server = TokserveProcess(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_ready(server: TokserveProcess) -> None:
    deadline = time.monotonic() + 300  # loading the model in a fresh process, on a busy CPU
    tick = threading.Event()  # never set: its timed wait paces the polling
    while True:
        assert server.process.poll() is None, f"tokserve exited: {server.log.read_text()[-2000:]}"
        try:
            if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "tokserve not ready in 300 s"
        tick.wait(0.2)


@pytest.fixture(scope="session")
def start_tokserve() -> Callable[..., AbstractContextManager[TokserveProcess]]:
    """`with start_tokserve(log_path, "--flag", ...) as server`: a real `tokserve serve` process."""
    return tokserve_process


def assert_same_greedy_text(one: CompletionChoice, other: CompletionChoice) -> None:
    """Two greedy completions (asked with `logprobs` >= 2) of one prompt have the same tokens, but where a numeric
    near-tie let one pick the runner-up: at the first difference, the other's token was (nearly) the best too."""
    assert one.logprobs is not None and other.logprobs is not None
    one_tokens, other_tokens = one.logprobs.tokens or [], other.logprobs.tokens or []
    if one_tokens == other_tokens:
        return
    at = next(i for i, (a, b) in enumerate(zip(one_tokens, other_tokens, strict=False)) if a != b)
    top = (one.logprobs.top_logprobs or [])[at]
    assert other_tokens[at] in top and math.isclose(top[other_tokens[at]], top[one_tokens[at]], abs_tol=1e-3)
