"""Every OpenAI request parameter is honoured, refused or ignored, as the README's table says.

Refused: a 400 naming it, but only for a value that would change the output; null, false, empty and default values
pass. Ignored: labels, routing hints and unknown fields change nothing.
"""

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

# The request properties of openai-openapi.json (spec 2.3.0), CreateChatCompletionRequest with its bases.
CHAT_PARAMETERS = [
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "messages",
    "metadata",
    "modalities",
    "model",
    "moderation",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
]
# ... and CreateCompletionRequest.
COMPLETION_PARAMETERS = [
    "best_of",
    "echo",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_tokens",
    "model",
    "n",
    "presence_penalty",
    "prompt",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "suffix",
    "temperature",
    "top_p",
    "user",
]

# A value of each refused parameter that would change the output.
REFUSED = {
    "audio": {"voice": "alloy", "format": "wav"},
    "modalities": ["text", "audio"],
    "web_search_options": {},
    "reasoning_effort": "high",
    "verbosity": "low",
    "moderation": {"model": "omni-moderation-latest"},
}
# Values that change nothing, of refused parameters and of tool and format parameters: accepted.
HARMLESS = {
    "parallel_tool_calls": False,
    "tools": [],
    "tool_choice": "none",
    "functions": None,
    "function_call": "auto",
    "response_format": {"type": "text"},
    "audio": None,
    "modalities": ["text"],
    "web_search_options": None,
    "reasoning_effort": None,
    "verbosity": "medium",
    "moderation": None,
}
IGNORED = {
    "user": "user-1234",
    "metadata": {"team": "evals"},
    "store": True,
    "safety_identifier": "hashed-user",
    "service_tier": "flex",
    "prompt_cache_key": "chat-7",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"ttl": "30m"},
    "prediction": {"type": "content", "content": "The sea"},
    "x_unknown_extension": {"anything": [1, 2]},
}
HELLO = [{"role": "user", "content": "Say hello."}]


def chat(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"messages": HELLO, "temperature": 0, "max_tokens": 4, **body})


@pytest.fixture(scope="module")
def plain_answer(base_url: str) -> str:
    with httpx.Client(base_url=base_url, timeout=120) as http:
        return str(chat(http).json()["choices"][0]["message"]["content"])


@pytest.mark.parametrize(("name", "value"), REFUSED.items())
def test_refused_parameters_are_400_naming_them(http: httpx.Client, name: str, value: object) -> None:
    response = chat(http, **{name: value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (name, "unsupported_parameter")
    assert error["message"].startswith(f"{name}: ")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages.0.content.0",
        ),
        ({"messages": [*HELLO, {"role": "assistant", "audio": {"id": "a"}}]}, "messages.1.audio"),
        (
            {"messages": [*HELLO, {"role": "assistant", "tool_calls": [{"id": "1"}]}]},
            "messages.1.tool_calls.0.function",
        ),
        ({"messages": [*HELLO, {"role": "tool", "content": "sunny"}]}, "messages.1.tool_call_id"),
    ],
)
def test_refused_message_features_are_400_naming_them(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    response = chat(http, **body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(("name", "value"), [*HARMLESS.items(), *IGNORED.items()])
def test_harmless_values_and_ignored_fields_change_nothing(
    http: httpx.Client, plain_answer: str, name: str, value: object
) -> None:
    response = chat(http, **{name: value})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == plain_answer


def test_ignored_fields_nested_and_on_completions(http: httpx.Client, plain_answer: str) -> None:
    body = {"stream": True, "stream_options": {"include_usage": True, "include_obfuscation": False}}
    assert chat(http, **body).status_code == 200
    message = {**HELLO[0], "x_note": "kept out"}
    assert chat(http, messages=[message]).json()["choices"][0]["message"]["content"] == plain_answer
    plain = {"prompt": "Once upon a time", "temperature": 0, "max_tokens": 4}
    expected = http.post("/v1/completions", json=plain).json()["choices"][0]["text"]
    extras = {"user": "u", "best_of": 1, "n": 1, "echo": False, "suffix": None, "logprobs": None, "x_unknown": 1}
    assert http.post("/v1/completions", json={**plain, **extras}).json()["choices"][0]["text"] == expected
    refused = http.post("/v1/completions", json={**plain, "best_of": 3})
    assert (refused.status_code, refused.json()["error"]["param"]) == (400, "best_of")


def readme_parameters() -> dict[str, str]:
    """The README's parameter tables: name -> supported, refused or ignored."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    rows = re.findall(r"^\| ((?:`\w+`(?:, )?)+) \| (supported|refused|ignored) \|", readme, flags=re.MULTILINE)
    return {name: status for names, status in rows for name in re.findall(r"`(\w+)`", names)}


def test_readme_table_lists_every_openai_parameter_as_it_is_treated() -> None:
    table = readme_parameters()
    assert set(CHAT_PARAMETERS) | set(COMPLETION_PARAMETERS) <= set(table)
    assert {name for name in REFUSED if table[name] != "refused"} == set()
    openai_ignored = set(IGNORED) & (set(CHAT_PARAMETERS) | set(COMPLETION_PARAMETERS))
    assert {name for name in openai_ignored if table[name] != "ignored"} == set()
    assert table["best_of"] == "refused" and table["suffix"] == "supported"


# vLLM's and llama.cpp's extensions that would change the output, not implemented here: refused by name, so that a
# client moving from them learns it instead of getting unconstrained text.
REFUSED_EXTENSIONS = {
    "grammar": 'root ::= "yes"',
    "prompt_logprobs": 1,
    "bad_words": ["sea"],
    "mirostat": 2,
    "use_beam_search": True,
}


@pytest.mark.parametrize(("name", "value"), REFUSED_EXTENSIONS.items())
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_output_changing_extensions_are_refused_by_name(
    http: httpx.Client, path: str, name: str, value: object
) -> None:
    body = {"messages": HELLO} if path == "/v1/chat/completions" else {"prompt": "Once upon a time"}
    refused = http.post(path, json={**body, "max_tokens": 1, name: value})
    assert refused.status_code == 400
    assert (refused.json()["error"]["param"], refused.json()["error"]["code"]) == (name, "unsupported_parameter")
    off = {"mirostat": 0, "use_beam_search": False, "bad_words": []}.get(name)
    assert http.post(path, json={**body, "max_tokens": 1, name: off}).status_code == 200


def test_readme_lists_the_refused_extensions() -> None:
    table = readme_parameters()
    assert {name: table.get(name) for name in REFUSED_EXTENSIONS} == dict.fromkeys(REFUSED_EXTENSIONS, "refused")
