"""/v1/chat/completions on the real model: streamed and whole answers agree, chunks have OpenAI's exact shape."""

from collections.abc import Callable
from typing import Any

import httpx
import openai

from tokserve.config import Settings

HAIKU = [{"role": "user", "content": "Write a haiku about the sea."}]


def streamed_text(client: openai.OpenAI, **params: Any) -> tuple[str, str | None]:
    text, finish = [], None
    for chunk in client.chat.completions.create(stream=True, **params):
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return "".join(text), finish


def test_stream_and_whole_agree_at_temperature_zero(client: openai.OpenAI, settings: Settings) -> None:
    params = {"model": settings.model_name, "messages": HAIKU, "temperature": 0, "max_tokens": 24}
    whole = client.chat.completions.create(**params)
    text, finish = streamed_text(client, **params)
    assert whole.choices[0].message.content == text
    assert text
    assert whole.choices[0].finish_reason == finish == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 24


def test_chunks_have_openai_shape_and_end_with_done(sse: Callable[..., list[Any]]) -> None:
    events = sse("/v1/chat/completions", {"messages": HAIKU, "temperature": 0, "max_tokens": 5})
    *chunks, done = events
    assert done == "[DONE]"
    assert {(chunk["id"], chunk["created"], chunk["object"]) for chunk in chunks} == {
        (chunks[0]["id"], chunks[0]["created"], "chat.completion.chunk")
    }
    assert chunks[0]["id"].startswith("chatcmpl-") and chunks[0]["system_fingerprint"].startswith("fp_")
    for chunk in chunks:
        assert chunk["model"] == "SmolLM2-135M-Instruct"
        assert chunk["system_fingerprint"] == chunks[0]["system_fingerprint"] and chunk["usage"] is None
        (choice,) = chunk["choices"]
        assert choice["index"] == 0 and choice["logprobs"] is None
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(set(chunk["choices"][0]["delta"]) == {"content"} for chunk in chunks[1:-1])
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks] == [None] * (len(chunks) - 1) + ["length"]
    assert chunks[-1]["choices"][0]["delta"] == {}


def test_usage_chunk_only_when_asked(sse: Callable[..., list[Any]]) -> None:
    body = {"messages": HAIKU, "temperature": 0, "max_tokens": 3}
    assert all(event == "[DONE]" or event["choices"] for event in sse("/v1/chat/completions", body))
    *_, finish, usage, done = sse("/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    assert finish["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["id"] == finish["id"]
    assert usage["usage"]["completion_tokens"] == 3
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 3
    assert done == "[DONE]"


def test_text_parts_and_omitted_model(client: openai.OpenAI, http: httpx.Client, settings: Settings) -> None:
    as_parts = [{"role": "user", "content": [{"type": "text", "text": "Write a haiku about the sea."}]}]
    by_parts = client.chat.completions.create(model=settings.model_name, messages=as_parts, temperature=0, max_tokens=4)
    no_model = http.post("/v1/chat/completions", json={"messages": HAIKU, "temperature": 0, "max_tokens": 4})
    assert no_model.status_code == 200
    assert no_model.json()["choices"][0]["message"]["content"] == by_parts.choices[0].message.content
