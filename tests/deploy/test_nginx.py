"""deploy/nginx.conf, run by Debian's nginx in front of two `tokserve serve` processes on loopback: the requests of
one X-Session-Id go to one replica, requests without one spread over both, and a stream passes through event by
event, not buffered until it ends. Which replica answered is read from each replica's own /metrics.

Debian's nginx 1.22 also passed this short stream on event by event with `proxy_buffering on` (tried by hand), so
the directives that keep long streams unbuffered and uncut are checked in the file as well."""

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import TokserveProcess, free_port

CONFIG = Path(__file__).parents[2] / "deploy" / "nginx.conf"
# A short stream: it fits in one of nginx's buffers, so nothing but buffering could make its events arrive together.
SHORT = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 0, "ignore_eos": True, "stream": True}


@contextmanager
def nginx(tmp_path: Path, backends: list[str]) -> Iterator[str]:
    """The repository's config with the replicas' addresses and a free port put in; yields its base URL."""
    nginx_binary = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx_binary).exists(), "Debian's nginx is needed (.ci/run installs it)"
    port = free_port()
    text = CONFIG.read_text()
    text, upstreams = re.subn(r"server tokserve:8000;", " ".join(f"server {url};" for url in backends), text)
    text, listens = re.subn(r"listen 8080;", f"listen 127.0.0.1:{port};", text)
    assert (upstreams, listens) == (1, 1)
    config = tmp_path / "nginx.conf"
    config.write_text(text)
    process = subprocess.Popen(
        [nginx_binary, "-c", str(config), "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
         "-g", f"daemon off; pid {tmp_path / 'nginx.pid'};"],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, tick = time.monotonic() + 30, threading.Event()
        while True:
            assert process.poll() is None, (tmp_path / "error.log").read_text()
            try:
                httpx.get(f"{url}/health", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "nginx did not answer in 30 s"
                tick.wait(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def running(backends: list[TokserveProcess]) -> int:
    """Requests generating now, summed over the replicas, from their own /metrics."""
    total = 0
    for backend in backends:
        for line in httpx.get(f"{backend.url}/metrics").text.splitlines():
            if line.startswith("tokserve_requests_running "):
                total += int(float(line.split()[1]))
    return total


def finished(backend: TokserveProcess) -> float:
    text = httpx.get(f"{backend.url}/metrics").text
    return sum(
        float(line.split()[1]) for line in text.splitlines() if line.startswith("tokserve_request_finished_total")
    )


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, start_tokserve: Callable[..., AbstractContextManager[TokserveProcess]]
) -> Iterator[list[TokserveProcess]]:
    logs = tmp_path_factory.mktemp("replicas")
    with ExitStack() as stack:
        yield [stack.enter_context(start_tokserve(logs / f"replica{index}.log")) for index in range(2)]


def test_stream_passes_through_event_by_event(replicas: list[TokserveProcess], tmp_path: Path) -> None:
    backends = [backend.url.removeprefix("http://") for backend in replicas]
    with nginx(tmp_path, backends) as url, httpx.Client(base_url=url, timeout=120) as http:
        with http.stream("POST", "/v1/completions", json=SHORT, headers={"X-Request-Id": "via-nginx"}) as response:
            assert response.status_code == 200
            assert response.headers["x-request-id"] == "via-nginx"  # the client's id reached the replica
            lines = response.iter_lines()
            first = next(lines)
            assert first.startswith("data: ") and json.loads(first.removeprefix("data: "))["choices"][0]["text"]
            # The first token is here while its replica still generates the rest: nothing waits for the end.
            assert running(replicas) == 1
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]" and len(rest) == 12 - 1 + 2  # the other tokens, the finish, [DONE]


def answered_by(replicas: list[TokserveProcess], url: str, headers: list[dict[str, str]]) -> list[int]:
    """Send one short request per item of `headers`, one after another, through nginx; how many each replica
    answered."""
    before = [finished(backend) for backend in replicas]
    with httpx.Client(base_url=url, timeout=120) as http:
        for extra in headers:
            body = {**SHORT, "stream": False, "max_tokens": 1}
            reply = http.post("/v1/completions", json=body, headers=extra)
            assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 1
    return [int(finished(backend) - then) for backend, then in zip(replicas, before, strict=True)]


def test_a_session_stays_on_one_replica(replicas: list[TokserveProcess], tmp_path: Path) -> None:
    backends = [backend.url.removeprefix("http://") for backend in replicas]
    with nginx(tmp_path, backends) as url:
        for session in ("conversation-a", "conversation-b", "conversation-c"):
            counts = answered_by(replicas, url, [{"X-Session-Id": session}] * 4)
            assert sorted(counts) == [0, 4], session  # every turn on the replica that holds its KV cache


# Both tests below send 24 requests with keys nginx hashes onto a ring where each replica holds about half the
# points: all 24 on one replica would happen with a probability below 1e-4 even at a 65/35 split.
def test_requests_without_a_session_spread_over_the_replicas(replicas: list[TokserveProcess], tmp_path: Path) -> None:
    backends = [backend.url.removeprefix("http://") for backend in replicas]
    with nginx(tmp_path, backends) as url:
        counts = answered_by(replicas, url, [{}] * 24)
    assert sum(counts) == 24 and min(counts) > 0  # each hashed on nginx's own fresh $request_id, not piled on one


def test_sessions_spread_over_the_replicas(replicas: list[TokserveProcess], tmp_path: Path) -> None:
    backends = [backend.url.removeprefix("http://") for backend in replicas]
    with nginx(tmp_path, backends) as url:
        counts = answered_by(replicas, url, [{"X-Session-Id": f"user-{index}"} for index in range(24)])
    assert sum(counts) == 24 and min(counts) > 0


def test_config_is_set_up_for_server_sent_events() -> None:
    directives = {line.strip().rstrip(";") for line in CONFIG.read_text().splitlines()}
    assert {"proxy_buffering off", "proxy_cache off", "gzip off", "proxy_http_version 1.1"} <= directives
    assert 'proxy_set_header Connection ""' in directives  # keep-alive to the replicas, not `close`
    # nginx applies a balancing method only when it comes before `keepalive` in the upstream block.
    lines = [line.strip() for line in CONFIG.read_text().splitlines()]
    assert lines.index("hash $session_key consistent;") < lines.index("keepalive 32;")
    timeout = next(line for line in directives if line.startswith("proxy_read_timeout"))
    assert int(timeout.split()[1].removesuffix("s")) >= 3600  # a long generation is not cut mid-stream
