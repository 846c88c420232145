"""Every object and chunk the server sends, checked against OpenAI's own schemas (tests/data/openai-schemas.json,
cut from openai-openapi.json); and the fields those schemas make meaningful: `system_fingerprint`, served names."""

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

import httpx
import torch

from openai_schemas import check
from tokserve.engine import Engine

HELLO = [{"role": "user", "content": "Say hello."}]


def events(http: httpx.Client, path: str, body: dict[str, Any]) -> list[Any]:
    with http.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        payloads = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    return [json.loads(payload) for payload in payloads[:-1]]


def test_chat_objects_and_chunks_match_openais_schemas(http: httpx.Client) -> None:
    body = {"messages": HELLO, "max_tokens": 6, "temperature": 0, "logprobs": True, "top_logprobs": 2, "n": 2}
    check(http.post("/v1/chat/completions", json=body).json(), "CreateChatCompletionResponse")
    streamed = events(http, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    for chunk in streamed:
        check(chunk, "CreateChatCompletionStreamResponse")
    assert streamed[-1]["usage"]["completion_tokens"] > 0


def test_tool_call_objects_and_chunks_match_openais_schemas(http: httpx.Client) -> None:
    parameters = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": parameters}}
    body = {"messages": HELLO, "tools": [tool], "tool_choice": "required", "parallel_tool_calls": False}
    body |= {"max_tokens": 40, "temperature": 0}
    whole = http.post("/v1/chat/completions", json=body).json()
    check(whole, "CreateChatCompletionResponse")
    assert whole["choices"][0]["finish_reason"] == "tool_calls"
    streamed = events(http, "/v1/chat/completions", body)
    for chunk in streamed:
        check(chunk, "CreateChatCompletionStreamResponse")
    assert any("tool_calls" in chunk["choices"][0]["delta"] for chunk in streamed)


def test_completion_objects_and_chunks_match_openais_schemas(http: httpx.Client) -> None:
    # Not with `echo`: the first prompt token has no logprob, null as in OpenAI's own answers, which the schema's
    # `token_logprobs` (numbers only) leaves out.
    body = {"prompt": ["Once upon a time", "The sea"], "max_tokens": 4, "temperature": 0, "logprobs": 2}
    check(http.post("/v1/completions", json=body).json(), "CreateCompletionResponse")
    streamed = events(http, "/v1/completions", {**body, "stream_options": {"include_usage": True}})
    for chunk in streamed:
        check(chunk, "CompletionChunk")
    assert [chunk for chunk in streamed if "usage" in chunk] == streamed[-1:]  # no null usage: the schema has none


def test_models_and_errors_match_openais_schemas(http: httpx.Client) -> None:
    models = http.get("/v1/models").json()
    check(models, "ListModelsResponse")
    check(http.get(f"/v1/models/{models['data'][0]['id']}").json(), "Model")
    for refused in (
        http.post("/v1/chat/completions", json={"messages": []}),
        http.post("/v1/chat/completions", json={"messages": HELLO, "model": "gpt-4o"}),
        http.get("/v1/chat/completions"),
        http.post("/v1/completions", content=b"{"),
    ):
        assert refused.status_code >= 400
        check(refused.json(), "ErrorResponse")


def test_system_fingerprint_names_the_backend_configuration(http: httpx.Client, engine: Engine) -> None:
    chat = http.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 1}).json()
    completion = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1}).json()
    assert chat["system_fingerprint"] == completion["system_fingerprint"] == engine.system_fingerprint
    assert chat["system_fingerprint"].startswith("fp_")
    # What shapes the output, changed, changes it: `seed` users see that reproducibility may not hold.
    elsewhere = replace(engine.loaded, device=torch.device("cuda"))
    assert elsewhere.system_fingerprint != engine.system_fingerprint


def test_every_served_name_is_listed_accepted_and_echoed(
    serve_with: Callable[..., AbstractContextManager[str]],
) -> None:
    with serve_with(served_model_name=["smol", "gpt-4o-mini"]) as url, httpx.Client(base_url=url) as http:
        models = http.get("/v1/models").json()
        assert [model["id"] for model in models["data"]] == ["smol", "gpt-4o-mini"]
        body = {"messages": HELLO, "max_tokens": 1}
        assert http.post("/v1/chat/completions", json=body).json()["model"] == "smol"
        alias = http.post("/v1/chat/completions", json={**body, "model": "gpt-4o-mini"}).json()
        assert alias["model"] == "gpt-4o-mini"
        streamed = events(http, "/v1/completions", {"prompt": "Hi", "max_tokens": 2, "model": "gpt-4o-mini"})
        assert {chunk["model"] for chunk in streamed} == {"gpt-4o-mini"}
        assert http.get("/v1/models/gpt-4o-mini").json()["id"] == "gpt-4o-mini"
        unknown = http.post("/v1/chat/completions", json={**body, "model": "SmolLM2-135M-Instruct"})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
