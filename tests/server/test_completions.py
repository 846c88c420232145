"""/v1/completions: the same text streamed or whole, OpenAI's default of 16 tokens, seeds reproduce samples."""

from collections.abc import Callable
from typing import Any

import openai

from tokserve.config import Settings


def test_stream_and_whole_agree_with_default_max_tokens(client: openai.OpenAI, settings: Settings) -> None:
    params = {"model": settings.model_name, "prompt": "Once upon a time", "temperature": 0}
    whole = client.completions.create(**params)
    chunks = list(client.completions.create(stream=True, **params))
    assert "".join(chunk.choices[0].text for chunk in chunks) == whole.choices[0].text
    assert whole.usage is not None and whole.usage.completion_tokens == 16
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"
    assert {chunk.id for chunk in chunks} == {chunks[0].id} and chunks[0].id.startswith("cmpl-")


def test_chunk_shape(sse: Callable[..., list[Any]]) -> None:
    *chunks, usage, done = sse(
        "/v1/completions",
        {"prompt": "Once upon a time", "max_tokens": 3, "stream_options": {"include_usage": True}},
    )
    assert done == "[DONE]"
    # OpenAI's schema has no null usage here: the key is on the usage chunk only.
    assert set(chunks[0]) == {"id", "object", "created", "model", "system_fingerprint", "choices"}
    assert chunks[0]["object"] == "text_completion"
    assert chunks[0]["system_fingerprint"].startswith("fp_")
    assert set(chunks[0]["choices"][0]) == {"index", "text", "logprobs", "finish_reason", "stop_reason"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3


def test_seed_reproduces_samples(client: openai.OpenAI, settings: Settings) -> None:
    def sample(seed: int) -> str:
        params = {"model": settings.model_name, "prompt": "My favourite animal is", "temperature": 1.0}
        return client.completions.create(seed=seed, max_tokens=12, **params).choices[0].text

    first = sample(1234)
    assert sample(1234) == first
    assert len({first, sample(1), sample(2)}) > 1  # seeds matter; three equal 12-token samples would be a fluke
