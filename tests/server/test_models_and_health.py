"""/v1/models and /health, ready or not."""

from collections.abc import Callable
from contextlib import AbstractContextManager

import httpx
import openai
import pytest
from fastapi import FastAPI

from tokserve.config import Settings
from tokserve.server import create_app


def test_models(client: openai.OpenAI, http: httpx.Client, settings: Settings) -> None:
    assert [model.id for model in client.models.list()] == ["SmolLM2-135M-Instruct"] == [settings.model_name]
    assert client.models.retrieve("SmolLM2-135M-Instruct").owned_by == "tokserve"
    assert http.get("/v1/models/SmolLM2-135M-Instruct").json()["max_model_len"] == 8192


def test_health_ready(http: httpx.Client) -> None:
    response = http.get("/health")
    assert (response.status_code, response.json()) == (200, {"status": "ready"})


def test_not_ready_answers_503_with_retry_after(
    serve_app: Callable[[FastAPI], AbstractContextManager[str]], wait_until: Callable[..., None]
) -> None:
    app = create_app(Settings(model="/nonexistent/missing-model.gguf"))  # the lifespan loads it, and fails
    with serve_app(app) as url, httpx.Client(base_url=url) as http:
        wait_until(lambda: http.get("/health").json()["status"] != "loading")
        health = http.get("/health")
        assert (health.status_code, health.json()) == (503, {"status": "unhealthy"})
        with (
            openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client,
            pytest.raises(openai.InternalServerError) as raised,
        ):
            client.models.list()
    assert raised.value.status_code == 503
    assert raised.value.response.headers["retry-after"]
    assert raised.value.response.json()["error"]["code"] == "unhealthy"
