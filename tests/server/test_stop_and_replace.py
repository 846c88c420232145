"""Stop strings and `--replace` rules on the model's own greedy output, across token splits."""

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest

PROMPT = {"messages": [{"role": "user", "content": "Write a haiku about the sea."}], "temperature": 0}


@pytest.fixture(scope="module")
def greedy(base_url: str) -> tuple[str, list[str]]:
    """The model's greedy answer, whole and as streamed deltas."""
    body = {**PROMPT, "max_tokens": 40}
    with httpx.Client(base_url=base_url, timeout=120) as http:
        whole = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    deltas = [httpx.Response(200, content=line[6:]).json()["choices"][0]["delta"].get("content") for line in lines]
    return whole, [delta for delta in deltas if delta]


def contents(events: list[Any]) -> list[str]:
    return [e["choices"][0]["delta"]["content"] for e in events[1:-2] if e["choices"][0]["delta"].get("content")]


def spanning(deltas: list[str], start: int, count: int) -> str:
    """A string of the greedy output made of `count` consecutive deltas from delta `start` on."""
    return "".join(deltas[start : start + count])


@pytest.mark.parametrize(("start", "count"), [(1, 3), (8, 2), (10, 1)])
def test_stop_string_never_shows_and_text_ends_right_before_it(
    greedy: tuple[str, list[str]], sse: Callable[..., list[Any]], http: httpx.Client, start: int, count: int
) -> None:
    whole, deltas = greedy
    stop = spanning(deltas, start, count)
    expected = whole[: whole.index(stop)]
    events = sse("/v1/chat/completions", {**PROMPT, "max_tokens": 40, "stop": ["never-there", stop]})
    assert events[-1] == "[DONE]"
    finish = events[-2]["choices"][0]
    assert (finish["finish_reason"], finish["stop_reason"]) == ("stop", stop)
    shown = ""
    for delta in contents(events):
        shown += delta
        assert expected.startswith(shown)  # nothing of the stop string, not even its first character, leaks
    assert shown == expected
    whole_stop = http.post("/v1/chat/completions", json={**PROMPT, "max_tokens": 40, "stop": stop}).json()
    assert whole_stop["choices"][0]["message"]["content"] == expected
    # usage counts the token that completed the stop string, and no more
    used = whole_stop["usage"]["completion_tokens"]
    up_to = http.post("/v1/chat/completions", json={**PROMPT, "max_tokens": used}).json()["choices"][0]["message"]
    before = http.post("/v1/chat/completions", json={**PROMPT, "max_tokens": used - 1}) if used > 1 else None
    assert stop in up_to["content"]
    assert before is None or stop not in before.json()["choices"][0]["message"]["content"]


def test_replacement_across_token_splits(
    greedy: tuple[str, list[str]], serve_with: Callable[..., AbstractContextManager[str]]
) -> None:
    whole, deltas = greedy
    search = spanning(deltas, 1, 3)  # three tokens of the model's output, e.g. " waves of the"
    assert all(search not in delta for delta in deltas)
    with serve_with(replace=[f"{search}=<{search.strip().upper()}>"]) as url, httpx.Client(base_url=url) as http:
        response = http.post("/v1/chat/completions", json={**PROMPT, "max_tokens": 40, "stream": True}, timeout=120)
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: {")]
    shown = [httpx.Response(200, content=line).json()["choices"][0]["delta"].get("content") or "" for line in lines]
    expected = whole.replace(search, f"<{search.strip().upper()}>")
    assert "".join(shown) == expected
    assert all(expected.startswith("".join(shown[: i + 1])) for i in range(len(shown)))


def test_stops_match_the_replaced_text(
    greedy: tuple[str, list[str]], serve_with: Callable[..., AbstractContextManager[str]]
) -> None:
    """With `--replace 'X=\\n'`, `stop: ["\\n"]` fires on the model's X, and `stop: ["X"]` never does."""
    whole, deltas = greedy
    marker = spanning(deltas, 4, 2)
    with serve_with(replace=[f"{marker}=\\n"]) as url, httpx.Client(base_url=url, timeout=120) as http:
        by_newline = http.post("/v1/chat/completions", json={**PROMPT, "max_tokens": 40, "stop": ["\n"]}).json()
        by_marker = http.post("/v1/chat/completions", json={**PROMPT, "max_tokens": 40, "stop": [marker]}).json()
    assert by_newline["choices"][0]["message"]["content"] == whole[: whole.index(marker)]
    assert by_newline["choices"][0]["stop_reason"] == "\n"
    assert by_marker["choices"][0]["message"]["content"] == whole.replace(marker, "\n")
    assert by_marker["choices"][0]["stop_reason"] is None
