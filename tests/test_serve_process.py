"""A real `tokserve serve` process: the JSON request log, the container's health check, and the drain on SIGTERM."""

import json
import os
import signal
import subprocess
import sys
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


def in_flight(http: httpx.Client) -> int:
    lines = http.get("/metrics").text.splitlines()
    return sum(
        int(float(line.split()[1]))
        for line in lines
        if line.startswith(("tokserve_requests_running ", "tokserve_requests_waiting "))
    )


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
