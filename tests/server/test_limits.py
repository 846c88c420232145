"""Each request limit refuses what is beyond it with a 400 (413 for the body) envelope naming its flag; what is
within it is served. The server answers normally after each refusal."""

import json
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from tokserve.config import Settings

LIMITS = {
    "max_body_bytes": 40_000,
    "max_messages": 3,
    "max_content_chars": 300,
    "max_stop_strings": 2,
    "max_stop_chars": 5,
    "max_tokens_cap": 3,
}


@pytest.fixture(scope="module")
def limited_url(serve_with: Callable[..., AbstractContextManager[str]]) -> Iterator[str]:
    with serve_with(**LIMITS) as url:
        yield url


@pytest.fixture
def limited(limited_url: str, settings: Settings) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{limited_url}/v1", api_key="x", max_retries=0) as client:
        yield client
    with httpx.Client(base_url=limited_url) as http:  # still serving
        answer = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 1


def refused(error: openai.APIStatusError, status: int, flag: str) -> dict[str, Any]:
    body = error.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert (error.status_code, body["error"]["type"]) == (status, "invalid_request_error")
    assert flag in body["error"]["message"]
    return body["error"]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


@pytest.mark.parametrize(
    ("params", "param", "flag"),
    [
        (
            {"messages": [user("a"), {"role": "assistant", "content": "b"}, user("c"), user("d")]},
            "messages",
            "--max-messages",
        ),
        (
            {"messages": [user("a"), {"role": "assistant", "content": "b" * 301}]},
            "messages.1.content",
            "--max-content-chars",
        ),
        ({"messages": [user("a" * 301)]}, "messages.0.content", "--max-content-chars"),
        ({"stop": ["a", "b", "c"]}, "stop", "--max-stop-strings"),
        ({"stop": ["a", "bbbbbb"]}, "stop.1", "--max-stop-chars"),
        ({"stop": "bbbbbb"}, "stop", "--max-stop-chars"),
        ({"max_tokens": 4}, "max_tokens", "--max-tokens-cap"),
        ({"max_completion_tokens": 4}, "max_completion_tokens", "--max-tokens-cap"),
        ({"n": 5}, "n", "--max-n"),
    ],
)
def test_chat_limits(limited: openai.OpenAI, params: dict[str, Any], param: str, flag: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        limited.chat.completions.create(**{"model": "SmolLM2-135M-Instruct", "messages": [user("Hi")], **params})
    error = refused(raised.value, 400, flag)
    assert (error["param"], error["code"]) == (param, "limit_exceeded")


@pytest.mark.parametrize(
    ("params", "param", "flag"),
    [
        ({"prompt": "a" * 301}, "prompt", "--max-content-chars"),
        ({"prompt": ["Hi", "a" * 301]}, "prompt.1", "--max-content-chars"),
        ({"prompt": "Hi", "stop": ["a", "b", "c"]}, "stop", "--max-stop-strings"),
        ({"prompt": "Hi", "max_tokens": 4}, "max_tokens", "--max-tokens-cap"),
    ],
)
def test_completion_limits(limited: openai.OpenAI, params: dict[str, Any], param: str, flag: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        limited.completions.create(model="SmolLM2-135M-Instruct", **params)
    error = refused(raised.value, 400, flag)
    assert (error["param"], error["code"]) == (param, "limit_exceeded")


def test_within_the_limits_is_served(limited: openai.OpenAI) -> None:
    messages = [user("a" * 300), {"role": "assistant", "content": "b"}, user("c")]
    answer = limited.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=messages, stop=["aaaaa", "\n"], max_tokens=3, n=4
    )
    assert len(answer.choices) == 4


def test_omitted_max_tokens_is_the_cap(limited: openai.OpenAI) -> None:
    chat = limited.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=[user("Tell me a long story.")], extra_body={"ignore_eos": True}
    )
    assert chat.usage is not None and chat.usage.completion_tokens == LIMITS["max_tokens_cap"]
    assert chat.choices[0].finish_reason == "length"
    completion = limited.completions.create(
        model="SmolLM2-135M-Instruct", prompt="Once", extra_body={"ignore_eos": True}
    )
    assert completion.usage is not None and completion.usage.completion_tokens == LIMITS["max_tokens_cap"]


def test_beyond_the_context_stays_context_length_exceeded(limited: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        limited.completions.create(model="SmolLM2-135M-Instruct", prompt=[[1] * 9000])
    assert refused(raised.value, 400, "context length")["code"] == "context_length_exceeded"


def test_body_over_the_limit_is_413_by_content_length(limited_url: str) -> None:
    with httpx.Client(base_url=limited_url) as http:
        response = http.post("/v1/completions", json={"prompt": "a" * 50_000})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert "--max-body-bytes" in response.json()["error"]["message"]


def test_body_over_the_limit_is_413_without_content_length(limited_url: str) -> None:
    """A chunked body declares no size: it is counted as it comes and refused once past the limit."""

    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(1000):
            yield b"a" * 100
        yield b'"}'

    with httpx.Client(base_url=limited_url) as http:
        response = http.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_a_body_that_stalls_past_the_body_timeout_is_a_408_and_the_connection_closes(
    serve_with: Callable[..., AbstractContextManager[str]],
) -> None:
    """Issue 13's slowloris, on the body: a complete head, then part of the body, held a connection for ever (no
    uvicorn timer runs while a request is being read, and its idle timer restarts at each byte of a trickle)."""
    head = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{"
    with serve_with(body_timeout=1.0) as url, socket.create_connection(_address(url), timeout=30) as sock:
        sock.sendall(head)  # and nothing more: every byte sent is read, so the server's close is a clean FIN
        answer = b""
        while chunk := sock.recv(65536):  # the answer, then b"" once the server has closed the connection
            answer += chunk
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert "--body-timeout" in json.loads(body)["error"]["message"]


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port
