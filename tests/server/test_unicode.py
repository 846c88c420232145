"""Characters that span several tokens arrive whole: no U+FFFD in any delta, Japanese or emoji."""

from collections.abc import Callable
from typing import Any

import httpx


def deltas_and_usage(events: list[Any], field: Callable[[dict[str, Any]], str | None]) -> tuple[list[str], int]:
    *chunks, usage, done = events
    assert done == "[DONE]"
    return [text for chunk in chunks if chunk["choices"] and (text := field(chunk["choices"][0]))], usage["usage"][
        "completion_tokens"
    ]


def test_japanese(sse: Callable[..., list[Any]], http: httpx.Client) -> None:
    body = {
        "messages": [{"role": "user", "content": "日本の首都はどこですか？日本語で答えてください。"}],  # noqa: RUF001
        "temperature": 0,
        "max_tokens": 30,
    }
    events = sse("/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    deltas, tokens = deltas_and_usage(events, lambda choice: choice["delta"].get("content"))
    assert not any("\ufffd" in delta for delta in deltas)
    text = "".join(deltas)
    assert sum("\u3040" <= char <= "\u9fff" for char in text) >= 5
    assert len(deltas) < tokens  # some characters took several tokens, and came out whole
    whole = http.post("/v1/chat/completions", json=body).json()
    assert whole["choices"][0]["message"]["content"] == text


def test_emoji(sse: Callable[..., list[Any]], http: httpx.Client) -> None:
    body = {"prompt": "Emoji time: 😀🎉👍", "temperature": 0, "max_tokens": 20}
    events = sse("/v1/completions", {**body, "stream_options": {"include_usage": True}})
    deltas, tokens = deltas_and_usage(events, lambda choice: choice["text"])
    assert not any("\ufffd" in delta for delta in deltas)
    text = "".join(deltas)
    assert sum(char >= "\U0001f300" for char in text) >= 3
    assert len(deltas) < tokens
    assert http.post("/v1/completions", json=body).json()["choices"][0]["text"] == text
