"""The engine's own KV cache: prefix hits give the text a miss gives and report `cached_tokens`; the turns of a
chat reuse the previous turns; a tiny cache pauses and resumes requests without losing any; a request too big for
the whole cache fails alone."""

import asyncio
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import openai
from starlette.types import ASGIApp

from conftest import assert_same_greedy_text
from tokserve.config import Settings
from tokserve.engine import Engine
from tokserve.server import create_app

BLOCK = 16  # tokens per KV-cache block
TINY_CACHE_GIB = 0.012  # 17 blocks of the embedded model in float32 (46,080 bytes a token), block 0 kept aside
STORY = "The river runs past a small town where people keep bees, grow apples and mend boats. "


def _unique_prompt(words: int = 6) -> str:
    """A prompt no earlier test sent, so its first request misses the cache."""
    return f"Note {uuid.uuid4().hex[:8]}: " + STORY * words + "Tell me more:"


def test_a_prefix_hit_gives_the_text_of_the_miss_and_reports_its_cached_tokens(
    client: openai.OpenAI, settings: Settings
) -> None:
    params: dict[str, Any] = {"model": settings.model_name, "max_tokens": 24, "temperature": 0, "logprobs": 2}
    prompt = _unique_prompt()
    miss = client.completions.create(prompt=prompt, **params)
    hit = client.completions.create(prompt=prompt, **params)
    assert miss.usage is not None and hit.usage is not None
    assert miss.usage.prompt_tokens_details is not None and hit.usage.prompt_tokens_details is not None
    prompt_tokens = hit.usage.prompt_tokens
    assert miss.usage.prompt_tokens_details.cached_tokens == 0
    # Every full block before the last prompt token (which is always read, for its logits) comes from the cache.
    assert hit.usage.prompt_tokens_details.cached_tokens == (prompt_tokens - 1) // BLOCK * BLOCK > 0
    assert_same_greedy_text(miss.choices[0], hit.choices[0])


def test_each_turn_of_a_chat_reuses_the_turns_before_it(client: openai.OpenAI, settings: Settings) -> None:
    messages: list[Any] = [{"role": "system", "content": _unique_prompt(3)}]
    previous_prompt = 0
    for turn in range(3):
        messages.append({"role": "user", "content": f"Question {turn}: what happens next?"})
        stream = client.chat.completions.create(
            model=settings.model_name,
            messages=messages,
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        usage = chunks[-1].usage
        assert usage is not None and usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens >= previous_prompt - BLOCK
        previous_prompt = usage.prompt_tokens
        answer = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        messages.append({"role": "assistant", "content": answer})


def test_the_choices_of_one_request_share_its_prompt(client: openai.OpenAI, settings: Settings) -> None:
    params: dict[str, Any] = {"model": settings.model_name, "max_tokens": 12, "temperature": 0}
    prompt = _unique_prompt()
    response = client.completions.create(prompt=prompt, n=3, **params)
    texts = {choice.text for choice in response.choices}
    assert len(texts) == 1  # greedy: every choice the same
    assert response.usage is not None and response.usage.prompt_tokens_details is not None
    # Usage counts the prompt once, as its first choice read it: nothing was cached before.
    assert response.usage.prompt_tokens_details.cached_tokens == 0
    again = client.completions.create(prompt=prompt, n=2, **params)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens > 0


def test_a_tiny_cache_pauses_and_resumes_requests_and_loses_nothing(
    client: openai.OpenAI,
    settings: Settings,
    engine_with: Callable[..., AbstractContextManager[Engine]],
    serve_app: Callable[[ASGIApp], AbstractContextManager[str]],
) -> None:
    """16 blocks of 16 tokens for 4 requests that need 7 blocks each: the newest are paused (preempted) and resumed,
    evicting cached blocks on the way, and each still gets the text it gets alone."""
    params: dict[str, Any] = {
        "model": settings.model_name,
        "max_tokens": 60,
        "temperature": 0,
        "logprobs": 2,
        "extra_body": {"ignore_eos": True},
    }
    prompts = [f"Story {number}: " + STORY * 2 for number in range(4)]
    alone = [client.completions.create(prompt=prompt, **params).choices[0] for prompt in prompts]
    with (
        engine_with(kv_cache_memory=TINY_CACHE_GIB, max_running=4) as small,
        serve_app(create_app(Settings(), engine=small)) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as small_client,
    ):
        together = sorted(
            small_client.completions.create(prompt=prompts, **params).choices, key=lambda choice: choice.index
        )
        counters = small.counters
    assert counters.preempted > 0 and counters.failed == 0
    assert [choice.finish_reason for choice in together] == ["length"] * len(prompts)
    for one, many in zip(alone, together, strict=True):
        assert_same_greedy_text(one, many)


def test_a_request_bigger_than_the_whole_cache_fails_alone(
    settings: Settings,
    engine_with: Callable[..., AbstractContextManager[Engine]],
    serve_app: Callable[[ASGIApp], AbstractContextManager[str]],
) -> None:
    """16 blocks hold 256 tokens: a request that needs more ends with an error event, and one beside it finishes."""
    body = {"model": settings.model_name, "temperature": 0, "ignore_eos": True, "stream": True}

    async def stream(http: httpx.AsyncClient, prompt: str, max_tokens: int) -> list[str]:
        async with http.stream(
            "POST", "/v1/completions", json={**body, "prompt": prompt, "max_tokens": max_tokens}
        ) as response:
            return [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]

    async def run(url: str) -> list[list[str]]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            return await asyncio.gather(stream(http, STORY * 8, 200), stream(http, "Hello", 20))

    with engine_with(kv_cache_memory=TINY_CACHE_GIB) as small, serve_app(create_app(Settings(), engine=small)) as url:
        big, little = asyncio.run(run(url))
        counters = small.counters
    assert '"error"' in big[-2] and big[-1] == "[DONE]"
    assert '"finish_reason":"length"' in little[-2].replace(" ", "") and little[-1] == "[DONE]"
    assert counters.failed == 1
