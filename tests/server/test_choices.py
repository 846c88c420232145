"""`n` choices, streamed and whole: each with its own index, reproducible with a seed, counted once in usage."""

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tokserve.config import Settings

HAIKU = [{"role": "user", "content": "Write a haiku about the sea."}]


def streamed_choices(client: openai.OpenAI, **params: Any) -> dict[int, tuple[str, str | None]]:
    texts: dict[int, list[str]] = defaultdict(list)
    finishes: dict[int, str | None] = {}
    for chunk in client.chat.completions.create(stream=True, **params):
        for choice in chunk.choices:
            texts[choice.index].append(choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    return {index: ("".join(parts), finishes.get(index)) for index, parts in texts.items()}


def test_n_greedy_choices_equal_the_single_answer(client: openai.OpenAI, settings: Settings) -> None:
    params = {"model": settings.model_name, "messages": HAIKU, "temperature": 0, "max_tokens": 12}
    single = client.chat.completions.create(**params)
    answer = single.choices[0].message.content
    three = client.chat.completions.create(n=3, **params)
    assert [choice.index for choice in three.choices] == [0, 1, 2]
    assert [choice.message.content for choice in three.choices] == [answer] * 3
    assert single.usage is not None and three.usage is not None
    assert three.usage.prompt_tokens == single.usage.prompt_tokens  # one prompt, counted once
    assert three.usage.completion_tokens == 3 * single.usage.completion_tokens
    assert streamed_choices(client, n=3, **params) == {index: (answer, "length") for index in range(3)}


def test_each_streamed_choice_starts_with_its_role_and_ends_with_its_finish(sse: Callable[..., list[Any]]) -> None:
    events = sse(
        "/v1/chat/completions",
        {"messages": HAIKU, "temperature": 0, "max_tokens": 4, "n": 2, "stream_options": {"include_usage": True}},
    )
    *chunks, usage, done = events
    assert done == "[DONE]" and usage["choices"] == [] and usage["usage"]["completion_tokens"] == 8
    for index in (0, 1):
        mine = [chunk["choices"][0] for chunk in chunks if chunk["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert [choice["finish_reason"] for choice in mine] == [None] * (len(mine) - 1) + ["length"]
    assert all(len(chunk["choices"]) == 1 for chunk in chunks)


def test_seeded_choices_reproduce_run_to_run(client: openai.OpenAI, settings: Settings) -> None:
    params = {"model": settings.model_name, "messages": HAIKU, "temperature": 1.0, "max_tokens": 12, "seed": 42}
    first = [choice.message.content for choice in client.chat.completions.create(n=3, **params).choices]
    again = [choice.message.content for choice in client.chat.completions.create(n=3, **params).choices]
    assert first == again
    assert len(set(first)) > 1  # each choice samples on its own
    streamed = streamed_choices(client, n=3, **params)
    assert [streamed[index][0] for index in range(3)] == first
    # choice i samples with seed + i, so the first choice is the n=1 answer with the same seed
    assert client.chat.completions.create(**params).choices[0].message.content == first[0]


def test_completions_give_n_choices_per_prompt_in_prompt_order(http: httpx.Client) -> None:
    prompts = ["Once upon a time", "The capital of France is"]
    singles = [
        http.post("/v1/completions", json={"prompt": p, "temperature": 0, "max_tokens": 5}).json()["choices"][0]["text"]
        for p in prompts
    ]
    both = http.post("/v1/completions", json={"prompt": prompts, "temperature": 0, "max_tokens": 5, "n": 2}).json()
    assert [(choice["index"], choice["text"]) for choice in both["choices"]] == [
        (0, singles[0]),
        (1, singles[0]),
        (2, singles[1]),
        (3, singles[1]),
    ]
    assert both["usage"]["completion_tokens"] == 20


@pytest.mark.parametrize("n", [5, 128])
def test_n_beyond_max_n_is_refused(client: openai.OpenAI, settings: Settings, n: int) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=settings.model_name, messages=HAIKU, n=n, max_tokens=2)
    assert raised.value.response.json()["error"]["param"] == "n"
    assert "--max-n" in raised.value.response.json()["error"]["message"]
