"""Completions prompts as strings, lists, token ids and lists of those; echo; suffix without FIM tokens."""

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tokserve.config import Settings
from tokserve.engine import Engine

PROMPT = "Once upon a time"


def texts(http: httpx.Client, **body: Any) -> list[str]:
    response = http.post("/v1/completions", json={"temperature": 0, "max_tokens": 8, **body})
    assert response.status_code == 200, response.text
    return [choice["text"] for choice in response.json()["choices"]]


def test_token_id_prompts_equal_their_text_prompts(
    client: openai.OpenAI, settings: Settings, engine: Engine, http: httpx.Client
) -> None:
    ids = engine.encode_text(PROMPT)
    other = "The capital of France is"
    by_text = texts(http, prompt=PROMPT)
    assert texts(http, prompt=ids) == by_text
    by_sdk = client.completions.create(model=settings.model_name, prompt=ids, temperature=0, max_tokens=8)
    assert by_sdk.choices[0].text == by_text[0]
    assert by_sdk.usage is not None and by_sdk.usage.prompt_tokens == len(ids)
    both = texts(http, prompt=[PROMPT, other])
    assert both == by_text + texts(http, prompt=other)
    assert texts(http, prompt=[ids, engine.encode_text(other)]) == both


def test_echo_shows_the_prompt_first_and_never_stops_on_it(
    http: httpx.Client, sse: Callable[..., list[Any]], engine: Engine
) -> None:
    (plain,) = texts(http, prompt=PROMPT)
    assert texts(http, prompt=PROMPT, echo=True) == [PROMPT + plain]
    assert texts(http, prompt=engine.encode_text(PROMPT), echo=True) == [PROMPT + plain]
    # "upon" is in the prompt: the echoed prompt never passes through the stop strings
    (stopped,) = texts(http, prompt=PROMPT, echo=True, stop=["upon"])
    assert stopped == PROMPT + plain
    *chunks, done = sse("/v1/completions", {"prompt": PROMPT, "temperature": 0, "max_tokens": 8, "echo": True})
    assert done == "[DONE]"
    assert chunks[0]["choices"][0]["text"] == PROMPT
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks) == PROMPT + plain


@pytest.mark.parametrize(
    ("prompt", "param"),
    [("", "prompt"), ([], "prompt"), ([1, 10**9], "prompt.1"), ([[1], []], "prompt.1"), (["a", 3], "prompt.1")],
)
def test_bad_prompts_are_400(http: httpx.Client, prompt: Any, param: str) -> None:
    response = http.post("/v1/completions", json={"prompt": prompt})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_suffix_needs_fill_in_the_middle_tokens(client: openai.OpenAI, settings: Settings) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model=settings.model_name, prompt="def add(a, b):", suffix="    return c")
    error = raised.value.response.json()["error"]
    assert error["param"] == "suffix" and "fill-in-the-middle" in error["message"]
    # An empty suffix asks for nothing
    plain = client.completions.create(model=settings.model_name, prompt=PROMPT, temperature=0, max_tokens=4)
    empty = client.completions.create(model=settings.model_name, prompt=PROMPT, suffix="", temperature=0, max_tokens=4)
    assert empty.choices[0].text == plain.choices[0].text
