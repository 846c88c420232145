"""Penalties, logit_bias and vLLM's extensions on the real model, checked against what the counts and logprobs say."""

from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tokserve.engine import Engine

HAIKU = [{"role": "user", "content": "Write a haiku about the sea."}]
SHORT = [{"role": "user", "content": "What is 2+2? Reply with the number only."}]
REPETITIVE = "The cat sat on the mat. The cat sat on the mat. The cat sat on the mat. The"


def chat(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/v1/chat/completions", json={"temperature": 0, **body})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def completion(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/v1/completions", json={"temperature": 0, **body})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("presence", "frequency"), [(0.0, 1.5), (1.5, 0.0), (0.8, 0.6)])
def test_penalties_change_greedy_output_only_where_the_counts_say(
    http: httpx.Client, presence: float, frequency: float
) -> None:
    """Logprobs are the model's own, before penalties: each greedy step must be the best of the top 20 after
    subtracting OpenAI's penalty for the tokens generated so far."""
    body = {"prompt": REPETITIVE, "max_tokens": 24, "logprobs": 20}
    plain = completion(http, **body)["logprobs"]["tokens"]
    penalised = completion(http, presence_penalty=presence, frequency_penalty=frequency, **body)["logprobs"]
    counts: Counter[str] = Counter()
    for token, alternatives in zip(penalised["tokens"], penalised["top_logprobs"], strict=True):
        scores = {
            candidate: logprob - frequency * counts[candidate] - presence * (counts[candidate] > 0)
            for candidate, logprob in alternatives.items()
        }
        best = max(scores, key=scores.__getitem__)
        assert scores[best] >= min(alternatives.values())  # no token outside the top 20 could have won
        assert token == best
        counts[token] += 1
    assert penalised["tokens"] != plain  # the model repeats itself here, so the penalties bite
    first_difference = next(i for i, (a, b) in enumerate(zip(plain, penalised["tokens"], strict=False)) if a != b)
    assert first_difference > 0  # before any token is generated, nothing is penalised


def test_logit_bias_minus_100_removes_the_greedy_token(http: httpx.Client, engine: Engine) -> None:
    plain = chat(http, messages=HAIKU, max_tokens=1, logprobs=True, top_logprobs=2)
    first = plain["choices"][0]["logprobs"]["content"][0]
    greedy, runner_up = first["top_logprobs"][0], first["top_logprobs"][1]
    (greedy_id,) = engine.encode_text(greedy["token"], add_special_tokens=False)
    biased = chat(http, messages=HAIKU, max_tokens=1, logit_bias={str(greedy_id): -100})
    assert biased["choices"][0]["message"]["content"] == runner_up["token"]
    favoured = chat(http, messages=HAIKU, max_tokens=3, logit_bias={str(greedy_id): 100})
    assert favoured["choices"][0]["message"]["content"] == greedy["token"] * 3


def test_top_k_1_and_min_p_1_sample_the_greedy_token(http: httpx.Client) -> None:
    greedy = chat(http, messages=HAIKU, max_tokens=12)["choices"][0]["message"]["content"]
    for extension in ({"top_k": 1}, {"min_p": 1.0}):
        sampled = chat(http, messages=HAIKU, max_tokens=12, temperature=1.5, seed=3, **extension)
        assert sampled["choices"][0]["message"]["content"] == greedy


def test_min_tokens_and_ignore_eos_hold_the_end_of_sequence_back(http: httpx.Client) -> None:
    plain = chat(http, messages=SHORT, max_tokens=40)
    text, used = plain["choices"][0]["message"]["content"], plain["usage"]["completion_tokens"]
    assert plain["choices"][0]["finish_reason"] == "stop" and used < 20  # the model ends on its own
    longer = chat(http, messages=SHORT, max_tokens=40, min_tokens=used + 5)
    assert longer["usage"]["completion_tokens"] >= used + 5
    assert longer["choices"][0]["message"]["content"].startswith(text)
    ignoring = chat(http, messages=SHORT, max_tokens=used + 8, ignore_eos=True, skip_special_tokens=False)
    assert ignoring["choices"][0]["finish_reason"] == "length"
    assert ignoring["choices"][0]["message"]["content"].startswith(text + "<|im_end|>")  # generated, not hidden
    hidden = chat(http, messages=SHORT, max_tokens=used + 8, ignore_eos=True)
    assert "<|im_end|>" not in hidden["choices"][0]["message"]["content"]


def test_stop_token_ids_end_the_text_before_that_token(http: httpx.Client, engine: Engine) -> None:
    prompt = "Once upon a time"
    whole = completion(http, prompt=prompt, max_tokens=10)["text"]
    ids = engine.encode_text(prompt + whole)[len(engine.encode_text(prompt)) :]
    stop_id = ids[4]
    before = engine.decode(ids[:4])
    stopped = completion(http, prompt=prompt, max_tokens=10, stop_token_ids=[stop_id])
    assert (stopped["text"], stopped["finish_reason"], stopped["stop_reason"]) == (before, "stop", stop_id)
    kept = completion(http, prompt=prompt, max_tokens=10, stop_token_ids=[stop_id], include_stop_str_in_output=True)
    assert kept["text"] == engine.decode(ids[:5])


def test_include_stop_str_in_output_keeps_the_stop_string(http: httpx.Client, sse: Callable[..., list[Any]]) -> None:
    whole = chat(http, messages=HAIKU, max_tokens=30)["choices"][0]["message"]["content"]
    stop = whole[10:16]
    body = {"messages": HAIKU, "temperature": 0, "max_tokens": 30, "stop": [stop], "include_stop_str_in_output": True}
    kept = chat(http, **body)["choices"][0]
    assert (kept["message"]["content"], kept["stop_reason"]) == (whole[: whole.index(stop)] + stop, stop)
    events = sse("/v1/chat/completions", body)
    assert (
        "".join(event["choices"][0]["delta"].get("content", "") for event in events[:-1]) == kept["message"]["content"]
    )
