"""What an attacker tried, each answered with a clear 4xx (or a bounded 500) while the server keeps serving:
deep JSON, lone surrogates, huge or non-ASCII token-id keys, requests that can never fit the queue, repeated stop
strings, and errors no handler expected."""

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from tokserve.config import Settings
from tokserve.engine import Engine
from tokserve.server import create_app
from tokserve.server.chunks import CompletionChunks

HELLO = [{"role": "user", "content": "Say hello."}]
JSON = {"Content-Type": "application/json"}
MODEL = Settings().model_name


@pytest.fixture(autouse=True)
def still_serving(http: httpx.Client) -> Iterator[None]:
    yield
    answer = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 1


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


def with_nested_kwargs(depth: int) -> str:
    """A chat request whose chat_template_kwargs nest `depth` objects (the body one more)."""
    nested = '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)
    return f'{{"messages": {json.dumps(HELLO)}, "max_tokens": 1, "chat_template_kwargs": {nested}}}'


def test_json_nested_deeper_than_400_levels_is_a_400(http: httpx.Client) -> None:
    kept = http.post(
        "/v1/chat/completions", content=with_nested_kwargs(399), headers=JSON
    )  # 400 levels with the body's own
    assert kept.status_code == 200, kept.text
    for depth in (400, 600, 900, 5000):
        error = error_of(http.post("/v1/chat/completions", content=with_nested_kwargs(depth), headers=JSON), 400)
        assert "400 levels" in error["message"] and error["code"] == "limit_exceeded"
    brackets_in_strings = {"messages": [{"role": "user", "content": "[" * 1000}], "max_tokens": 1}
    assert http.post("/v1/chat/completions", json=brackets_in_strings).status_code == 200
    unbalanced = b'{"messages": ' + b"[" * 100_000
    assert (
        error_of(http.post("/v1/chat/completions", content=unbalanced, headers=JSON), 400)["code"] == "limit_exceeded"
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x\ud800y"}, "prompt"),
        ({"prompt": ["fine", "x\udfffy"]}, "prompt.1"),
        ({"messages": [{"role": "user", "content": "x\ud800y"}]}, "messages.0.content"),
    ],
)
def test_a_lone_surrogate_is_a_400(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    error = error_of(
        http.post(path, content=json.dumps({**body, "max_tokens": 1}), headers=JSON), 400
    )  # json escapes it: \ud800
    assert error["param"] == param and "surrogate" in error["message"]


@pytest.mark.parametrize("key", ["9" * 4301, "1" * 11, "\u0661\u0662", "\uff11", "-1", ""])
def test_a_logit_bias_key_must_be_a_short_ascii_token_id(http: httpx.Client, key: str) -> None:
    """4,301 digits passed int()'s limit (a 500); Arabic-Indic or fullwidth digits were taken as token ids."""
    body = {"prompt": "Hi", "max_tokens": 1, "logit_bias": {key: 1}}
    error = error_of(http.post("/v1/completions", json=body), 400)
    assert error["param"].startswith("logit_bias")


def test_a_request_that_can_never_fit_the_queue_is_a_400_not_a_retry(
    engine_with: Callable[..., AbstractContextManager[Engine]],
    serve_app: Callable[[FastAPI], AbstractContextManager[str]],
) -> None:
    with (
        engine_with(max_queue=3) as engine,
        serve_app(create_app(Settings(max_queue=3), engine=engine)) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client,
    ):
        for params in ({"prompt": ["a", "b", "c", "d"]}, {"prompt": "a", "n": 4}, {"prompt": ["a", "b"], "n": 2}):
            with pytest.raises(openai.BadRequestError) as refused:
                client.completions.create(model=MODEL, max_tokens=1, **params)
            error = refused.value.response.json()["error"]
            assert error["code"] == "limit_exceeded" and "--max-queue" in error["message"]
            assert error["param"] == ("n" if isinstance(params["prompt"], str) else "prompt")
        served = client.completions.create(model=MODEL, prompt=["a", "b", "c"], max_tokens=1)
        assert len(served.choices) == 3


def test_prompts_beyond_max_prompts_are_a_400(http: httpx.Client, settings: Settings) -> None:
    error = error_of(http.post("/v1/completions", json={"prompt": ["a"] * 17, "max_tokens": 1}), 400)
    assert (error["param"], error["code"]) == ("prompt", "limit_exceeded") and "--max-prompts" in error["message"]
    assert settings.max_prompts == 16


def test_repeated_stop_strings_count_against_the_limit(http: httpx.Client) -> None:
    body = {"prompt": "Hi", "max_tokens": 1, "stop": ["x"] * 17}
    error = error_of(http.post("/v1/completions", json=body), 400)
    assert error["param"] == "stop" and "--max-stop-strings" in error["message"]


def test_prompts_are_tokenized_off_the_event_loop(http: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A million characters take ~0.5 s to tokenize: on the event loop, every other stream would wait for it."""
    on_loop: list[bool] = []
    encode_text, encode_chat = Engine.encode_text, Engine.encode_chat

    def running_loop() -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    def text_noting(self: Engine, *args: Any, **kwargs: Any) -> list[int]:
        on_loop.append(running_loop())
        return encode_text(self, *args, **kwargs)

    def chat_noting(self: Engine, *args: Any, **kwargs: Any) -> list[int]:
        on_loop.append(running_loop())
        return encode_chat(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "encode_text", text_noting)
    monkeypatch.setattr(Engine, "encode_chat", chat_noting)
    assert http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1}).status_code == 200
    assert http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 1}).status_code == 200
    assert on_loop == [False, False]


def test_an_unexpected_error_is_a_500_logged_once_and_briefly(
    http: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    def recurse(*_: object) -> None:
        recurse()

    monkeypatch.setattr("tokserve.server.routes.chat.chat_plan", recurse)
    with caplog.at_level(logging.ERROR):
        error = error_of(http.post("/v1/chat/completions", json={"messages": HELLO}), 500)
    assert error["type"] == "server_error" and error["message"] == "Internal server error."
    records = [record for record in caplog.records if "RecursionError" in record.getMessage()]
    assert len(records) == 1
    assert len(records[0].getMessage()) < 10_000  # the whole traceback has a thousand frames
    assert "RecursionError" not in capfd.readouterr().err  # and uvicorn does not log it again


def test_a_stream_that_fails_unexpectedly_ends_with_an_error_event_and_done(
    sse: Callable[..., list[Any]], http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = CompletionChunks.delta
    calls = 0

    def failing_second(self: CompletionChunks, piece: Any) -> str:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("a bug")
        return content(self, piece)

    monkeypatch.setattr(CompletionChunks, "delta", failing_second)
    before = http.get("/metrics").text
    events = sse("/v1/completions", {"prompt": "Once upon a time", "max_tokens": 8, "ignore_eos": True})
    assert events[-1] == "[DONE]"
    assert events[-2] == {
        "error": {"message": "Internal server error.", "type": "server_error", "param": None, "code": None}
    }
    assert len(events) == 3  # the first chunk, the error, [DONE]
    after = http.get("/metrics").text
    assert errors_counted(after) == errors_counted(before) + 1


def errors_counted(metrics: str) -> float:
    prefix = 'tokserve_request_finished_total{finish_reason="error"} '
    return sum(float(line.removeprefix(prefix)) for line in metrics.splitlines() if line.startswith(prefix))
