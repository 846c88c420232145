"""Structured outputs on the embedded model: `response_format` and vLLM's `structured_outputs` are enforced by the
grammar (every answer parses and validates), streamed and whole alike; replacements and stop strings leave
constrained content alone; a schema that cannot be enforced is a 400 naming its field. The reasoning split is tested
here too, with a grammar that makes the model think first (no local model thinks by itself)."""

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import jsonschema
import openai
import pydantic
import pytest

from tokserve.config import Settings
from tokserve.engine import Engine

TRIP = [{"role": "user", "content": "Plan a short trip to Paris."}]


class Trip(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=16)
    days: int
    hotel: bool


def test_parse_with_a_pydantic_model(client: openai.OpenAI, settings: Settings) -> None:
    """The openai SDK's `parse`: a strict json_schema from the model class; the answer validates into it."""
    completion = client.chat.completions.parse(
        model=settings.model_name, messages=TRIP, response_format=Trip, temperature=0, max_tokens=60
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Trip)


def test_json_object_streamed_and_whole_agree(client: openai.OpenAI, settings: Settings) -> None:
    params: dict[str, Any] = {
        "model": settings.model_name,
        "messages": TRIP,
        "response_format": {"type": "json_object"},
        "temperature": 0,
        "max_tokens": 80,
    }
    whole = client.chat.completions.create(**params)
    streamed = "".join(
        chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(stream=True, **params)
    )
    assert whole.choices[0].message.content == streamed
    if whole.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(streamed), dict)


def test_replacements_and_stops_leave_constrained_content_alone(
    serve_with: Callable[..., AbstractContextManager[str]], settings: Settings
) -> None:
    """A stop string or a replacement inside a JSON document would break it: neither applies there."""
    schema = {
        "type": "object",
        "properties": {"word": {"enum": ["a:b", "c:d"]}},
        "required": ["word"],
        "additionalProperties": False,
    }
    with (
        serve_with(replace=[(":", "=")]) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client,
    ):
        response = client.chat.completions.create(
            model=settings.model_name,
            messages=TRIP,
            response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema, "strict": True}},
            stop=["a"],
            temperature=0,
            max_tokens=20,
        )
    document = json.loads(response.choices[0].message.content or "")
    jsonschema.validate(document, schema)


def test_end_forcing_parameters_never_leave_a_document_without_a_token(http: Any, engine: Engine) -> None:
    """min_tokens and ignore_eos hide the end, a -100 bias the closing brace: the grammar's tokens still win, the
    document completes and ends the choice."""
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    (brace,) = engine.encode_text("}", add_special_tokens=False)
    body = {
        "messages": TRIP,
        "structured_outputs": {"json": schema},
        "min_tokens": 30,
        "ignore_eos": True,
        "max_tokens": 40,
        "logit_bias": {str(brace): -100},
        "temperature": 1.0,
        "seed": 3,
    }
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    jsonschema.validate(json.loads(choice["message"]["content"]), schema)


@pytest.mark.parametrize(
    ("outputs", "check"),
    [
        ({"choice": ["yes", "no"]}, lambda text: text in ("yes", "no")),
        ({"regex": "[0-9]{3}-[0-9]{2}"}, lambda text: len(text) == 6 and text[3] == "-"),
    ],
)
def test_vllm_structured_outputs(http: Any, outputs: dict[str, Any], check: Callable[[str], bool]) -> None:
    response = http.post(
        "/v1/chat/completions",
        json={"messages": TRIP, "structured_outputs": outputs, "max_tokens": 12, "temperature": 0},
    )
    assert response.status_code == 200, response.text
    assert check(response.json()["choices"][0]["message"]["content"])


def test_completions_take_structured_outputs_too(http: Any) -> None:
    response = http.post(
        "/v1/completions", json={"prompt": "Is water wet?", "guided_choice": ["yes", "no"], "max_tokens": 5}
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] in ("yes", "no")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}},
            "response_format.json_schema.schema",
        ),
        ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs.regex"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ],
)
def test_unenforceable_schemas_are_400_naming_the_field(
    client: openai.OpenAI, settings: Settings, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=settings.model_name, messages=TRIP, max_tokens=4, extra_body=body)
    assert caught.value.body["param"] == param  # type: ignore[index]


def test_reasoning_goes_to_reasoning_content(
    serve_with: Callable[..., AbstractContextManager[str]], settings: Settings
) -> None:
    """With --reasoning-parser think, <think>...</think> is reasoning_content and the rest content, streamed and
    whole alike; the grammar makes the model think first."""
    grammar = 'start: "<think>" /[a-z ]{1,30}/ "</think>" ANSWER\nANSWER: /[A-Z][a-z ]{1,20}[.]/'
    params: dict[str, Any] = {
        "model": settings.model_name,
        "messages": TRIP,
        "temperature": 0,
        "max_tokens": 40,
        "extra_body": {"structured_outputs": {"grammar": grammar}},
    }
    with (
        serve_with(reasoning_parser="think") as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as client,
    ):
        whole = client.chat.completions.create(**params).choices[0].message.model_dump()
        reasoning, content = [], []
        for chunk in client.chat.completions.create(stream=True, **params):
            delta = chunk.choices[0].delta.model_dump()
            reasoning.append(delta.get("reasoning_content") or "")
            content.append(delta.get("content") or "")
    assert whole["reasoning_content"] and "<think>" not in whole["reasoning_content"]
    assert whole["content"] and "think>" not in whole["content"] and whole["content"][0].isupper()
    assert ("".join(reasoning), "".join(content)) == (whole["reasoning_content"], whole["content"])
