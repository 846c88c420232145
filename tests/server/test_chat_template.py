"""Chat-template controls: assistant prefill, add_generation_prompt, template variables, --chat-template, and the
400 a template's own refusal becomes."""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tokserve.engine import Engine

QUESTION = {"role": "user", "content": "What is the capital of France?"}
PREFILL = {"role": "assistant", "content": "The capital of France is"}
# SmolLM2's own template, with the default system prompt as a variable and a rule on the order of roles.
TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n' + "
    "(system_text | default('You are a helpful AI assistant named SmolLM, trained by Hugging Face')) + "
    "'<|im_end|>\n' }}{% endif %}"
    "{% if not loop.first and message['role'] == messages[loop.index0 - 1]['role'] %}"
    "{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def post(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"temperature": 0, "max_tokens": 8, **body})


@pytest.fixture(scope="module")
def templated(
    tmp_path_factory: pytest.TempPathFactory, serve_with: Callable[..., AbstractContextManager[str]]
) -> Iterator[httpx.Client]:
    """A server started with --chat-template TEMPLATE, on the same engine."""
    path: Path = tmp_path_factory.mktemp("templates") / "chat.jinja"
    path.write_text(TEMPLATE)
    with serve_with(chat_template=path) as url, httpx.Client(base_url=url, timeout=120) as http:
        yield http


def test_prefill_continues_the_last_message(http: httpx.Client, sse: Callable[..., list[Any]], engine: Engine) -> None:
    messages = [QUESTION, PREFILL]
    reply = post(http, messages=messages, continue_final_message=True).json()["choices"][0]
    text = reply["message"]["content"]
    assert "Paris" in text and not text.startswith("The capital")  # continued, not repeated
    prompt = engine.encode_chat(messages, add_generation_prompt=False, continue_final_message=True)
    assert engine.decode(prompt).endswith("The capital of France is")  # the turn is left open
    continued = http.post("/v1/completions", json={"prompt": prompt, "temperature": 0, "max_tokens": 8})
    assert continued.json()["choices"][0]["text"] == text
    # The prefill never passes through the stop strings: "France" is in it, not in what the model adds
    stopped = post(http, messages=messages, continue_final_message=True, stop=["France"]).json()["choices"][0]
    assert (stopped["message"]["content"], stopped["finish_reason"]) == (text, reply["finish_reason"])
    events = sse(
        "/v1/chat/completions",
        {"messages": messages, "continue_final_message": True, "temperature": 0, "max_tokens": 8},
    )
    assert "".join(event["choices"][0]["delta"].get("content", "") for event in events[:-1]) == text


def test_add_generation_prompt_false_leaves_the_assistant_header_out(http: httpx.Client, engine: Engine) -> None:
    with_header = post(http, messages=[QUESTION], max_tokens=1).json()["usage"]["prompt_tokens"]
    without = post(http, messages=[QUESTION], max_tokens=1, add_generation_prompt=False).json()["usage"]
    assert without["prompt_tokens"] == with_header - len(engine.encode_text("<|im_start|>assistant\n"))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"continue_final_message": True, "add_generation_prompt": True}, "continue_final_message"),
        ({"chat_template_kwargs": {"tokenize": False}}, "chat_template_kwargs.tokenize"),
        ({"chat_template_kwargs": {"add_generation_prompt": False}}, "chat_template_kwargs.add_generation_prompt"),
    ],
)
def test_conflicting_template_controls_are_400(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    response = post(http, messages=[QUESTION, PREFILL], **body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_chat_template_kwargs_reach_the_template(templated: httpx.Client, http: httpx.Client) -> None:
    pirate = "You are a pirate. Answer like one."
    by_variable = post(templated, messages=[QUESTION], chat_template_kwargs={"system_text": pirate}).json()
    by_message = post(http, messages=[{"role": "system", "content": pirate}, QUESTION]).json()
    assert by_variable["choices"][0]["message"]["content"] == by_message["choices"][0]["message"]["content"]
    # The same prompt tokens (the second request finds them in the prefix cache, so only `cached_tokens` differs).
    assert by_variable["usage"]["prompt_tokens"] == by_message["usage"]["prompt_tokens"]
    # without the variable, the template's default: the model's own system prompt
    default = post(templated, messages=[QUESTION]).json()
    assert (
        default["choices"][0]["message"]["content"]
        == post(http, messages=[QUESTION]).json()["choices"][0]["message"]["content"]
    )


def test_a_template_that_rejects_the_messages_is_a_400(templated: httpx.Client, http: httpx.Client) -> None:
    twice = [QUESTION, {"role": "user", "content": "Answer please."}]
    response = post(templated, messages=twice)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "messages")
    assert "Conversation roles must alternate" in error["message"]
    assert post(http, messages=twice).status_code == 200  # the model's own template allows it
