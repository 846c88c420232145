"""Tool calling in /v1/chat/completions on the embedded model, whose template has no tools: the fallback (the tools
in the system prompt, Hermes markup). A 135M model rarely chooses a call, so calls are forced (`required`, a named
tool); the grammar makes them valid, and the parser turns them into OpenAI's tool calls, streamed and whole."""

import json
from typing import Any

import jsonschema
import openai
import pytest

from tokserve.config import Settings

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        # Closed, as OpenAI's strict schemas are: open objects let a 135M model invent keys until max_tokens.
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 12}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def _streamed(client: openai.OpenAI, **params: Any) -> tuple[list[dict[str, Any]], str | None, str, list[Any]]:
    """The calls put together from the deltas as the openai SDK's users do, the finish reason, the content, and
    every tool-call delta as sent."""
    calls: dict[int, dict[str, Any]] = {}
    finish, content, deltas = None, [], []
    for chunk in client.chat.completions.create(stream=True, **params):
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        content.append(choice.delta.content or "")
        for delta in choice.delta.tool_calls or ():
            deltas.append(delta)
            call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = call["id"] or delta.id
            call["name"] += delta.function.name or "" if delta.function else ""
            call["arguments"] += (delta.function.arguments or "") if delta.function else ""
    return [calls[index] for index in sorted(calls)], finish, "".join(content), deltas


def test_required_call_is_valid_streamed_and_whole_alike(client: openai.OpenAI, settings: Settings) -> None:
    params: dict[str, Any] = {
        "model": settings.model_name,
        "messages": ASK,
        "tools": [WEATHER],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": 0,
        "max_tokens": 60,
    }
    whole = client.chat.completions.create(**params)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])

    calls, finish, content, deltas = _streamed(client, **params)
    assert finish == "tool_calls" and content == ""
    assert [(c["name"], c["arguments"]) for c in calls] == [("get_weather", call.function.arguments)]
    # The first delta of the call names it, with its id and type; no later one repeats them; each has its index.
    first, *rest = deltas
    assert first.index == 0 and first.id and first.type == "function" and first.function.name == "get_weather"
    assert rest, "the arguments come in pieces as they are generated"
    assert all(d.index == 0 and d.id is None and d.type is None and d.function.name is None for d in rest)


def test_logprobs_cover_content_not_calls(client: openai.OpenAI, settings: Settings) -> None:
    response = client.chat.completions.create(
        model=settings.model_name,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        logprobs=True,
        temperature=0,
        max_tokens=60,
    )
    choice = response.choices[0]
    assert choice.message.tool_calls and choice.logprobs is not None and choice.logprobs.content == []


def test_named_tool_choice_calls_that_tool(client: openai.OpenAI, settings: Settings) -> None:
    response = client.chat.completions.create(
        model=settings.model_name,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0,
        max_tokens=40,
    )
    calls = response.choices[0].message.tool_calls or []
    assert calls and {call.function.name for call in calls} == {"get_time"}
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), TIME["function"]["parameters"])


def test_history_with_calls_and_results_renders(client: openai.OpenAI, settings: Settings) -> None:
    """A round trip: the call and its result go back in history (arguments as the JSON string OpenAI sends)."""
    history: list[Any] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
    ]
    response = client.chat.completions.create(
        model=settings.model_name, messages=history, tools=[WEATHER], temperature=0, max_tokens=12
    )
    assert response.choices[0].message.content


def test_call_cut_by_max_tokens_is_length_without_calls(client: openai.OpenAI, settings: Settings) -> None:
    response = client.chat.completions.create(
        model=settings.model_name, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=8
    )
    choice = response.choices[0]
    assert choice.finish_reason == "length" and not choice.message.tool_calls


def test_legacy_functions_answer_in_their_shape(client: openai.OpenAI, settings: Settings) -> None:
    response = client.chat.completions.create(
        model=settings.model_name,
        messages=ASK,
        functions=[WEATHER["function"]],
        function_call={"name": "get_weather"},
        temperature=0,
        max_tokens=40,
    )
    choice = response.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.function_call is not None and choice.message.function_call.name == "get_weather"
    jsonschema.validate(json.loads(choice.message.function_call.arguments), WEATHER["function"]["parameters"])


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        (
            {"tools": [{**WEATHER, "function": {"name": "f", "parameters": {"type": "objectx"}}}]},
            "tools.0.function.parameters",
        ),
        ({"messages": [*ASK, {"role": "tool", "content": "18 degrees"}]}, "messages.1.tool_call_id"),
        ({"tool_choice": "required", "tools": None}, "tool_choice"),
    ],
)
def test_bad_tool_requests_name_the_field(
    client: openai.OpenAI, settings: Settings, change: dict[str, Any], param: str
) -> None:
    params = {"model": settings.model_name, "messages": ASK, "tools": [WEATHER], "max_tokens": 4, **change}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**{key: value for key, value in params.items() if value is not None})
    assert caught.value.body is not None
    assert caught.value.body["param"] == param  # type: ignore[index]


def test_call_arguments_in_history_must_be_json(client: openai.OpenAI, settings: Settings) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{not json"}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=settings.model_name,
            messages=[*ASK, {"role": "assistant", "tool_calls": [call]}],
            max_tokens=4,
        )
    assert caught.value.body["param"] == "messages.1.tool_calls.0.function.arguments"  # type: ignore[index]
