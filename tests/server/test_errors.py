"""Every request error is an OpenAI envelope with the right status, read through the SDK's typed errors; the
server answers normally after each one."""

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tokserve.config import Settings

HELLO = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(autouse=True)
def still_serving(client: openai.OpenAI, settings: Settings) -> Iterator[None]:
    yield
    answer = client.chat.completions.create(model=settings.model_name, messages=HELLO, temperature=0, max_tokens=2)
    assert answer.choices[0].message.content


def envelope(error: openai.APIStatusError) -> dict[str, Any]:
    body = error.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ""}, "stop"),
        ({"n": 5}, "n"),
        ({"n": 0}, "n"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_invalid_fields_are_400(client: openai.OpenAI, settings: Settings, params: dict[str, Any], param: str) -> None:
    request = {"model": settings.model_name, "messages": HELLO, **params}
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(**request)
    error = envelope(raised.value)
    assert raised.value.status_code == 400
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert envelope(raised.value)["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4o", prompt="Hi")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("org/gpt-4o")


def test_context_length_exceeded(client: openai.OpenAI, settings: Settings) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=settings.model_name, messages=HELLO, max_tokens=9000)
    assert (envelope(raised.value)["code"], envelope(raised.value)["param"]) == (
        "context_length_exceeded",
        "max_tokens",
    )
    with pytest.raises(openai.BadRequestError) as raised:  # the field the request used is the one named
        client.chat.completions.create(model=settings.model_name, messages=HELLO, max_completion_tokens=9000)
    assert envelope(raised.value)["param"] == "max_completion_tokens"
    assert "lower max_completion_tokens" in envelope(raised.value)["message"]
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=settings.model_name, prompt="hello " * 9000)
    assert (envelope(raised.value)["code"], envelope(raised.value)["param"]) == ("context_length_exceeded", "prompt")


@pytest.mark.parametrize(
    ("content", "detail"),
    [(b'{"messages": [', "Malformed JSON"), (b"", "body"), (b"[1, 2]", "body")],
)
def test_malformed_bodies_are_400_envelopes(http: httpx.Client, content: bytes, detail: str) -> None:
    response = http.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert detail in response.json()["error"]["message"]


def test_unknown_route_and_method_are_envelopes(http: httpx.Client) -> None:
    assert http.get("/v1/nothing").json()["error"]["type"] == "invalid_request_error"
    response = http.get("/v1/chat/completions")
    assert response.status_code == 405 and set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("stream", [False, True])
def test_fault_before_streaming_starts_is_500(
    client: openai.OpenAI, settings: Settings, fault_marker: str, stream: bool
) -> None:
    with pytest.raises(openai.InternalServerError) as raised:
        client.completions.create(model=settings.model_name, prompt=f"{fault_marker} Hi", stream=stream)
    assert raised.value.status_code == 500
    assert envelope(raised.value)["type"] == "server_error"


def test_fault_after_streaming_started_is_a_final_error_event(
    client: openai.OpenAI, settings: Settings, fault_marker: str, sse: Callable[..., list[Any]]
) -> None:
    prompt = f"{fault_marker}3 Once upon a time"
    *chunks, error, done = sse("/v1/completions", {"prompt": prompt, "temperature": 0})
    assert done == "[DONE]"
    assert error == {
        "error": {"message": error["error"]["message"], "type": "server_error", "param": None, "code": None}
    }
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None] * len(chunks)
    with pytest.raises(openai.APIError, match="Generation failed"):
        for _ in client.completions.create(model=settings.model_name, prompt=prompt, stream=True):
            pass
