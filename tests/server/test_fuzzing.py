"""Fuzzing: schemathesis generates requests for every /v1 operation from the server's own OpenAPI document, valid
and invalid ones. No answer is a server error, every answer (each SSE event too) matches the document, which
gives every error status the OpenAI envelope; afterwards the server is healthy and idle.

A short run here; the command in benchmarks/RESULTS.md runs several thousand cases."""

import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import openai
import pytest
from fastapi import FastAPI

from tokserve.config import Settings
from tokserve.engine import Engine
from tokserve.server import create_app

# A low cap keeps the valid requests cheap: at most this many tokens per choice.
CAP = 4
EXAMPLES = 60  # per operation


def test_fuzzing_finds_no_server_error_and_no_answer_off_the_document(
    engine_with: Callable[..., AbstractContextManager[Engine]],
    serve_app: Callable[[FastAPI], AbstractContextManager[str]],
    wait_until: Callable[[Callable[[], bool]], None],
    tmp_path: Path,
) -> None:
    # A short queue too: a request with many prompts is refused (429) rather than generated prompt by prompt.
    with (
        engine_with(max_queue=8) as engine,
        serve_app(create_app(Settings(max_tokens_cap=CAP), engine=engine)) as url,
    ):
        command = [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{url}/openapi.json",
            "--checks=not_a_server_error,response_schema_conformance",
            "--include-path-regex=^/v1/",
            "--phases=fuzzing",
            f"--max-examples={EXAMPLES}",
            "--seed=8",
            "--workers=1",  # its generator is not thread-safe
            "--request-timeout=120",  # a slow answer on a busy machine is not a failure
            "--output-sanitize=false",
        ]
        run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900, check=False)
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        wait_until(lambda: engine.counters.running == 0 and engine.counters.waiting == 0)
        assert httpx.get(f"{url}/health").json() == {"status": "ready"}
        assert engine.counters.failed == 0


def test_a_tiny_temperature_is_greedy(client: openai.OpenAI, settings: Settings) -> None:
    """Found by fuzzing: 1e-179 overflowed the logits to inf, and sampling failed (500)."""
    params = {"model": settings.model_name, "prompt": "Once upon a time", "max_tokens": 4, "seed": 1}
    tiny = client.completions.create(temperature=1e-179, **params)
    assert tiny.choices[0].text == client.completions.create(temperature=0, **params).choices[0].text


def test_a_tiny_repetition_penalty_is_refused(client: openai.OpenAI, settings: Settings) -> None:
    """Found by fuzzing: 8e-219 overflowed the logits it divides; the range is now 0.01 to 100."""
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(
            model=settings.model_name, prompt="Hi", max_tokens=1, extra_body={"repetition_penalty": 8e-219}
        )
    assert raised.value.response.json()["error"]["param"] == "repetition_penalty"
