"""Logprobs, chat and legacy shapes, streamed and whole: the model's own log-softmax, computed here independently."""

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
import torch

from tokserve.config import Settings
from tokserve.engine import Engine

HAIKU = [{"role": "user", "content": "Write a haiku about the sea."}]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def ids_by_bytes(engine: Engine) -> dict[bytes, int]:
    """Token ids by their bytes (as logprobs report them), to look the model's answer up."""
    vocabulary = engine.vocabulary
    return {raw: token_id for token_id in range(vocabulary.size) if (raw := vocabulary.token(token_id)[1])}


@pytest.fixture(scope="module")
def log_softmax(engine: Engine, wait_idle: Callable[[], None]) -> Callable[[list[int]], torch.Tensor]:
    """Row i: the model's log-probabilities of the token after ids[: i + 1], from one plain forward pass."""

    def compute(ids: list[int]) -> torch.Tensor:
        wait_idle()  # the model belongs to the worker; borrow it only while it rests
        with torch.inference_mode():
            logits = engine.loaded.model(input_ids=torch.tensor([ids], device=engine.loaded.device)).logits[0]
        return torch.log_softmax(logits.float(), dim=-1)

    return compute


def test_chat_logprobs_are_the_models_log_softmax(
    client: openai.OpenAI,
    settings: Settings,
    engine: Engine,
    ids_by_bytes: dict[bytes, int],
    log_softmax: Callable[[list[int]], torch.Tensor],
) -> None:
    params = {"model": settings.model_name, "messages": HAIKU, "temperature": 0, "max_tokens": 12}
    reply = client.chat.completions.create(logprobs=True, top_logprobs=5, **params)
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert len(entries) == 12
    assert b"".join(bytes(entry.bytes or []) for entry in entries).decode() == choice.message.content
    prompt = engine.encode_chat(HAIKU)
    generated = [ids_by_bytes[bytes(entry.bytes or [])] for entry in entries]
    reference = log_softmax(prompt + generated)[len(prompt) - 1 :]
    for position, (entry, token_id) in enumerate(zip(entries, generated, strict=True)):
        assert len(entry.top_logprobs) == 5
        assert entry.top_logprobs[0].token == entry.token  # greedy: the chosen token is the most likely one
        assert entry.top_logprobs[0].logprob == entry.logprob
        assert entry.logprob == pytest.approx(float(reference[position, token_id]), abs=TOLERANCE)
        best = torch.topk(reference[position], 5)
        for top, (value, top_id) in zip(entry.top_logprobs, zip(best.values, best.indices, strict=True), strict=True):
            assert bytes(top.bytes or []) == engine.vocabulary.token(int(top_id))[1]
            assert top.logprob == pytest.approx(float(value), abs=TOLERANCE)
    without = client.chat.completions.create(**params)
    assert without.choices[0].message.content == choice.message.content
    assert without.choices[0].logprobs is None


def test_streamed_chat_logprobs_equal_the_whole(sse: Callable[..., list[Any]], http: httpx.Client) -> None:
    body = {"messages": HAIKU, "temperature": 0, "max_tokens": 10, "logprobs": True, "top_logprobs": 2}
    whole = http.post("/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]["content"]
    *chunks, done = sse("/v1/chat/completions", body)
    assert done == "[DONE]"
    assert chunks[0]["choices"][0]["logprobs"] is None  # the role chunk
    streamed = [
        entry for chunk in chunks[1:] if (logprobs := chunk["choices"][0]["logprobs"]) for entry in logprobs["content"]
    ]
    assert [entry["token"] for entry in streamed] == [entry["token"] for entry in whole]
    assert [entry["logprob"] for entry in streamed] == pytest.approx([entry["logprob"] for entry in whole], abs=1e-5)
    for chunk in chunks[1:-1]:  # each text delta carries the tokens that made it
        choice = chunk["choices"][0]
        assert "".join(entry["token"] for entry in choice["logprobs"]["content"]) == choice["delta"]["content"]


def test_tokens_that_split_a_character_carry_its_bytes(http: httpx.Client) -> None:
    body = {
        "messages": [{"role": "user", "content": "日本の首都はどこですか？日本語で答えてください。"}],  # noqa: RUF001
        "temperature": 0,
        "max_tokens": 16,
        "logprobs": True,
    }
    choice = http.post("/v1/chat/completions", json=body).json()["choices"][0]
    entries = choice["logprobs"]["content"]
    assert any(entry["token"].startswith("bytes:") for entry in entries)  # a token holding part of a character
    joined = bytes(byte for entry in entries for byte in entry["bytes"])
    text = choice["message"]["content"].encode()
    # max_tokens may cut a character short: its first bytes have logprobs, but no text to show
    assert joined.startswith(text) and len(joined) - len(text) < 4


def test_completion_echo_with_logprobs_covers_prompt_and_output(
    http: httpx.Client, engine: Engine, log_softmax: Callable[[list[int]], torch.Tensor]
) -> None:
    prompt = "Once upon a time"
    prompt_ids = engine.encode_text(prompt)
    body = {"prompt": prompt, "temperature": 0, "max_tokens": 6, "echo": True, "logprobs": 3}
    choice = http.post("/v1/completions", json=body).json()["choices"][0]
    logprobs = choice["logprobs"]
    tokens = logprobs["tokens"]
    assert choice["text"].startswith(prompt) and "".join(tokens) == choice["text"]
    assert len(tokens) == len(prompt_ids) + 6
    assert logprobs["text_offset"] == [len("".join(tokens[:i])) for i in range(len(tokens))]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None  # nothing before it
    ids = engine.encode_text(choice["text"])
    assert ids[: len(prompt_ids)] == prompt_ids
    reference = log_softmax(ids)
    for position in range(1, len(tokens)):
        expected = float(reference[position - 1, ids[position]])
        assert logprobs["token_logprobs"][position] == pytest.approx(expected, abs=TOLERANCE)
        top = logprobs["top_logprobs"][position]
        assert tokens[position] in top and 3 <= len(top) <= 4  # the 3 best, and the chosen token
        assert top[tokens[position]] == logprobs["token_logprobs"][position]
        if position >= len(prompt_ids):  # generated greedily: the best of its position
            assert logprobs["token_logprobs"][position] == max(top.values())
    plain = http.post("/v1/completions", json={**body, "echo": False}).json()["choices"][0]
    assert choice["text"] == prompt + plain["text"]
    assert plain["logprobs"]["tokens"] == tokens[len(prompt_ids) :]
    assert plain["logprobs"]["text_offset"][0] == 0


def test_streamed_completion_logprobs_continue_where_the_last_chunk_ended(
    sse: Callable[..., list[Any]], http: httpx.Client
) -> None:
    body = {"prompt": "Once upon a time", "temperature": 0, "max_tokens": 8, "echo": True, "logprobs": 1}
    whole = http.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]
    *chunks, done = sse("/v1/completions", body)
    assert done == "[DONE]"
    streamed: dict[str, list[Any]] = {"tokens": [], "text_offset": [], "token_logprobs": []}
    for chunk in chunks:
        if logprobs := chunk["choices"][0]["logprobs"]:
            for key, values in streamed.items():
                values.extend(logprobs[key])
    assert streamed["tokens"] == whole["tokens"]
    assert streamed["text_offset"] == whole["text_offset"]
    assert streamed["token_logprobs"][0] is None
    assert streamed["token_logprobs"][1:] == pytest.approx(whole["token_logprobs"][1:], abs=1e-5)


def test_the_token_that_ends_the_text_is_counted_and_listed_with_no_text(
    http: httpx.Client, engine: Engine, sse: Callable[..., list[Any]]
) -> None:
    """usage counts the end-of-sequence or stop token; its logprobs entry is there too, with text ""."""
    chat = http.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "Say hello."}],
            "temperature": 0,
            "max_tokens": 60,
            "logprobs": True,
        },
    ).json()
    choice = chat["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("stop", None)  # ended by end-of-sequence
    entries = choice["logprobs"]["content"]
    assert len(entries) == chat["usage"]["completion_tokens"]
    assert (entries[-1]["token"], entries[-1]["bytes"]) == ("", [])
    assert "".join(entry["token"] for entry in entries) == choice["message"]["content"]

    body = {"prompt": "Once upon a time", "temperature": 0, "max_tokens": 6, "logprobs": 1}
    plain = http.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]["tokens"]
    stop_id = engine.encode_text(plain[2], add_special_tokens=False)  # the third token ends the text now
    assert len(stop_id) == 1
    stopped = http.post("/v1/completions", json={**body, "stop_token_ids": stop_id}).json()
    legacy = stopped["choices"][0]["logprobs"]
    assert stopped["usage"]["completion_tokens"] == len(legacy["tokens"]) == len(legacy["token_logprobs"]) == 3
    assert legacy["tokens"] == [*plain[:2], ""]
    assert stopped["choices"][0]["text"] == "".join(plain[:2])
    *chunks, done = sse("/v1/completions", {**body, "stop_token_ids": stop_id})
    assert done == "[DONE]"
    streamed = [token for chunk in chunks for token in (chunk["choices"][0]["logprobs"] or {}).get("tokens", [])]
    assert streamed == legacy["tokens"]
