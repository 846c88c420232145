"""A real `tokserve serve` process: the JSON request log, the container's health check, and the drain on SIGTERM."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

import httpx

from conftest import TokserveProcess

HEALTHCHECK = Path(__file__).parents[1] / "deploy" / "healthcheck.py"
PROMPT = "Once upon a time"
SHORT = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "ignore_eos": True, "stream": True}
LONG = {**SHORT, "max_tokens": 4000}
DRAIN_TIMEOUT = 40  # the short stream's time, with room for a busy machine


def read_stream(url: str, body: dict[str, object], request_id: str) -> list[str]:
    """The SSE data payloads of one streamed request, on a connection of its own."""
    with (
        httpx.Client(base_url=url, timeout=120) as http,
        http.stream("POST", "/v1/completions", json=body, headers={"X-Request-Id": request_id}) as response,
    ):
        assert response.status_code == 200, response.read()
        return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


def healthcheck(server: TokserveProcess) -> int:
    port = server.url.rsplit(":", 1)[1]
    return subprocess.run([sys.executable, HEALTHCHECK], env={**os.environ, "TOKSERVE_PORT": port}).returncode


def metric(http: httpx.Client, *names: str) -> int:
    """The sum of the named samples of /metrics (a trailing space in a name keeps out longer names)."""
    lines = http.get("/metrics").text.splitlines()
    return sum(int(float(line.split()[1])) for line in lines if line.startswith(names))


def in_flight(http: httpx.Client) -> int:
    return metric(http, "tokserve_requests_running ", "tokserve_requests_waiting ")


def first_tokens(http: httpx.Client) -> int:
    """Responses whose first token is out: the count of the time-to-first-token histogram."""
    return metric(http, "tokserve_time_to_first_token_seconds_count")


def test_sigterm_drains_streams_then_exits_0(
    tmp_path: Path,
    start_tokserve: Callable[..., AbstractContextManager[TokserveProcess]],
    wait_until: Callable[[Callable[[], bool]], None],
) -> None:
    flags = ("--log-format", "json", "--drain-timeout", str(DRAIN_TIMEOUT))
    with (
        start_tokserve(tmp_path / "tokserve.log", *flags) as server,
        httpx.Client(base_url=server.url, timeout=120) as http,
        ThreadPoolExecutor(2) as pool,
    ):
        assert healthcheck(server) == 0
        short = pool.submit(read_stream, server.url, SHORT, "drain-short")
        wait_until(lambda: in_flight(http) == 1)  # the short one is generating (or about to)
        long = pool.submit(read_stream, server.url, LONG, "drain-long")
        wait_until(lambda: in_flight(http) == 2)  # the long one is submitted too, queued or generating
        server.process.send_signal(signal.SIGTERM)

        wait_until(lambda: http.get("/health").json() == {"status": "draining"})  # this connection stays open
        assert healthcheck(server) == 1
        refused = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 2})
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert refused.json()["error"]["code"] == "draining"

        short_events = short.result()  # it finishes: the drain waits for it
        assert short_events[-1] == "[DONE]"
        assert json.loads(short_events[-2])["choices"][0]["finish_reason"] == "length", short_events[-2]
        assert len(short_events) == 24 + 2  # a chunk per token (no stop strings, ASCII), the finish chunk, [DONE]

        long_events = long.result()  # cut at the drain timeout, in-band
        assert long_events[-1] == "[DONE]"
        assert json.loads(long_events[-2])["error"]["code"] == "draining"
        assert server.process.wait(timeout=60) == 0

    records = [json.loads(line) for line in server.log_lines() if line.startswith("{")]
    by_id = {record["request_id"]: record for record in records if "request_id" in record}
    assert by_id["drain-short"]["finish_reason"] == "length"
    assert by_id["drain-short"]["completion_tokens"] == 24
    assert by_id["drain-short"]["model"] == "SmolLM2-135M-Instruct"
    assert by_id["drain-short"]["prompt_tokens"] == 4
    assert 0 < by_id["drain-short"]["ttft_s"] < by_id["drain-short"]["duration_s"]
    assert by_id["drain-long"]["finish_reason"] == "error"
    assert by_id["drain-long"]["completion_tokens"] == len(long_events) - 2  # what it streamed before the cut
    assert {"time", "level", "logger", "message"} <= by_id["drain-long"].keys()
    assert any("draining" in record["message"] for record in records if record["logger"].startswith("tokserve"))


def test_clients_that_stall_do_not_hold_the_shutdown(
    tmp_path: Path,
    start_tokserve: Callable[..., AbstractContextManager[TokserveProcess]],
    wait_until: Callable[[Callable[[], bool]], None],
) -> None:
    """Issue 13: the drain timed out, but uvicorn then waited for ever on a connection whose task could not end:
    a stream to a client that stopped reading (its send waits once the socket buffers are full), or a request
    whose body never finishes arriving."""
    # The echoed prompt with its logprobs makes a first chunk of hundreds of KB; the client reads none of it.
    body = {"prompt": "Once upon a time, " * 300, "max_tokens": 4000, "echo": True, "logprobs": 5, "stream": True}
    request = json.dumps(body).encode()
    head = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    with (
        start_tokserve(tmp_path / "tokserve.log", "--drain-timeout", "2") as server,
        httpx.Client(base_url=server.url, timeout=120) as http,
        socket.socket() as not_reading,
        socket.socket() as half_sent,
    ):
        address = ("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
        not_reading.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        not_reading.connect(address)
        not_reading.sendall(f"{head}Content-Length: {len(request)}\r\n\r\n".encode() + request)
        half_sent.connect(address)
        half_sent.sendall(f"{head}Content-Length: {len(request)}\r\n\r\n".encode() + request[:10])
        wait_until(lambda: first_tokens(http) == 1)  # the stream started: its first chunk is being sent
        server.process.send_signal(signal.SIGTERM)
        # The drain timeout, the grace for error events, then 2 s for the connections before their tasks are ended.
        assert server.process.wait(timeout=60) == 0
    assert re.search(r"Cancel [12] running task", server.log.read_text())


def test_a_second_sigterm_ends_streams_in_band_and_exits_0_promptly(
    tmp_path: Path,
    start_tokserve: Callable[..., AbstractContextManager[TokserveProcess]],
    wait_until: Callable[[Callable[[], bool]], None],
) -> None:
    with (
        start_tokserve(tmp_path / "tokserve.log", "--drain-timeout", "600") as server,
        httpx.Client(base_url=server.url, timeout=120) as http,
        ThreadPoolExecutor(1) as pool,
    ):
        # The access log keeps no query string: a key sent as `?api_key=` must not land in it.
        assert http.get("/v1/models", params={"api_key": "sk-secret-in-the-url"}).status_code == 200
        long = pool.submit(read_stream, server.url, LONG, "second-signal")
        wait_until(lambda: first_tokens(http) == 1)
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: http.get("/health").status_code == 503)
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        events = long.result()
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "draining"
        assert server.process.wait(timeout=60) == 0
        assert time.monotonic() - signalled < 15  # not the 600 s drain timeout; a busy machine's margin
    log = server.log.read_text()
    assert "GET /v1/models HTTP/1.1" in log
    assert "sk-secret-in-the-url" not in log


def test_a_dead_worker_ends_the_process_with_status_1(
    tmp_path: Path, start_tokserve: Callable[..., AbstractContextManager[TokserveProcess]]
) -> None:
    """DESIGN: a dead worker fails what waits or runs, then the process exits non-zero for its supervisor."""
    marker = "TOKSERVE-TEST-FAULT"
    with start_tokserve(tmp_path / "tokserve.log", env={"TOKSERVE_FAULT_MARKER": marker}) as server:
        killer = {"prompt": f"{marker}! Hi", "max_tokens": 8, "stream": True}
        with (
            httpx.Client(base_url=server.url, timeout=120) as http,
            http.stream("POST", "/v1/completions", json=killer) as response,
        ):
            answer = response.read()
        assert response.status_code == 503 and b"unhealthy" in answer
        assert server.process.wait(timeout=60) == 1
    assert "exiting with status 1" in server.log.read_text()
