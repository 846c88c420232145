"""`examples/gradio_chat.py`: its chat function against the real server (Gradio itself is not installed)."""

import functools
import importlib.util
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tokserve.engine import Engine


def test_gradio_example_streams_with_the_whole_conversation(
    logged_server: tuple[str, list[tuple[Any, Any]]],
    engine: Engine,
    wait_until: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, received = logged_server
    monkeypatch.setenv("TOKSERVE_URL", f"{url}/v1")
    spec = importlib.util.spec_from_file_location("gradio_chat", Path(__file__).parents[1] / "examples/gradio_chat.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    # At temperature 1 a reply may reach end-of-sequence before the close arrives and count as finished: with
    # end-of-sequence ignored, only the close can end it before its 512 tokens.
    completions = example.client.chat.completions
    monkeypatch.setattr(completions, "create", functools.partial(completions.create, extra_body={"ignore_eos": True}))
    expected = [
        {"role": "system", "content": example.SYSTEM_PROMPT},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "Now tell me a long story about Berlin."},
    ]
    pairs = [["Capital of France?", "Paris."]]  # the seed's history; newer Gradio passes messages
    for history in (pairs, expected[1:3]):
        wait_until(lambda: engine.counters.running == 0)  # the worker counts a request just after its last token
        cancelled = engine.counters.cancelled
        reply = example.chat("Now tell me a long story about Berlin.", history)
        shown = list(itertools.islice(reply, 3))
        assert all(later.startswith(earlier) and later != earlier for earlier, later in itertools.pairwise(shown))
        assert received[-1][1]["messages"] == expected
        reply.close()  # what Gradio's Stop does
        wait_until(lambda: engine.counters.cancelled == cancelled + 1)  # noqa: B023 (waited on right here)
