"""A server under measurement: `tokserve serve` started as a subprocess on a free loopback port, and the wait for any
server's `GET /health` to answer 200. Shared by the benchmarks that measure over HTTP."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_healthy(url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 300) -> None:
    """Poll `url`/health (or /v1/models, for servers without /health such as llama-cpp-python's) until one answers
    200; exit if `process` ends or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = httpx.get(f"{url}/health").status_code
            if status == 404:  # no /health at all: ready once it lists its models
                status = httpx.get(f"{url}/v1/models").status_code
            if status == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or (process is not None and process.poll() is not None):
            sys.exit(f"the server at {url} did not become ready")
        time.sleep(0.5)


@contextmanager
def running_tokserve(extra_args: Sequence[str] = ()) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """(base URL, process) of a ready `tokserve serve` on the embedded model, offline; stopped on exit."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tokserve", "serve", "--port", str(port), "--log-level", "warning", *extra_args]
    server = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        wait_until_healthy(url, server)
        yield url, server
    finally:
        server.terminate()
        server.wait()
