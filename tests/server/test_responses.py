"""The Responses API on the embedded model with the openai SDK and the OpenAI Agents SDK: objects and stream events
checked against OpenAI's schemas, a function-tool round trip, conversations through `previous_response_id`, JSON
output, the stored responses (across a restart, deleted, refused with --no-store), a failure mid-stream."""

import asyncio
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from agents import (
    Agent,
    ModelSettings,
    Runner,
    function_tool,
    set_default_openai_api,
    set_default_openai_client,
    set_tracing_disabled,
)

from openai_schemas import check

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
MODEL = "SmolLM2-135M-Instruct"


def _sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)


def _events(http: httpx.Client, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        names, payloads = [], []
        for line in response.iter_lines():
            if line.startswith("event: "):
                names.append(line.removeprefix("event: "))
            elif line.startswith("data: "):
                payloads.append(json.loads(line.removeprefix("data: ")))
    assert names == [payload["type"] for payload in payloads]  # each event named as its type
    return list(zip(names, payloads, strict=True))


def test_streamed_and_whole_responses_match_openais_schemas_and_agree(http: httpx.Client) -> None:
    body = {"model": MODEL, "input": "Say hello.", "max_output_tokens": 12, "temperature": 0}
    whole = http.post("/v1/responses", json=body).json()
    check(whole, "Response")
    assert whole["id"].startswith("resp_") and whole["object"] == "response"
    assert whole["status"] == "incomplete" and whole["incomplete_details"] == {"reason": "max_output_tokens"}
    assert whole["usage"]["output_tokens"] == 12
    events = _events(http, body)
    for _, event in events:
        check(event, "ResponseStreamEvent")
    assert [event["sequence_number"] for _, event in events] == list(range(len(events)))
    names = [name for name, _ in events]
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert names[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    text = "".join(event["delta"] for name, event in events if name == "response.output_text.delta")
    assert (
        text == whole["output"][0]["content"][0]["text"] == events[-1][1]["response"]["output"][0]["content"][0]["text"]
    )


def test_sdk_create_stream_and_stored_objects(client: openai.OpenAI) -> None:
    first = client.responses.create(model=MODEL, input="Name a colour.", max_output_tokens=40, temperature=0)
    assert first.output_text
    with client.responses.stream(model=MODEL, input="Name a colour.", max_output_tokens=40, temperature=0) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == first.output_text
    assert client.responses.retrieve(first.id).output_text == first.output_text
    (item,) = client.responses.input_items.list(first.id).data
    assert item.type == "message" and item.content[0].text == "Name a colour."  # type: ignore[union-attr]
    assert client.responses.delete(first.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)


def test_a_conversation_continues_through_previous_response_id(client: openai.OpenAI) -> None:
    """The second turn reads the first as history: the prefix cache finds it, and instructions are not inherited."""
    first = client.responses.create(
        model=MODEL, instructions="Answer in one word.", input="My name is Ada.", max_output_tokens=8, temperature=0
    )
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, input="What is my name?", max_output_tokens=8, temperature=0
    )
    assert second.previous_response_id == first.id and second.instructions is None
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model=MODEL, previous_response_id="resp_missing", input="Hi", max_output_tokens=2)
    assert missing.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_function_tool_round_trip(client: openai.OpenAI) -> None:
    call_response = client.responses.create(
        model=MODEL,
        input="What is the weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=60,
        temperature=0,
    )
    (call,) = [item for item in call_response.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    answer = client.responses.create(
        model=MODEL,
        previous_response_id=call_response.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 degrees and sunny"}],
        tools=[WEATHER],  # type: ignore[list-item]
        max_output_tokens=16,
        temperature=0,
    )
    assert answer.output_text


def test_streamed_function_call_arguments(http: httpx.Client) -> None:
    body = {"input": "Weather in Paris?", "tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False}
    events = _events(http, {**body, "max_output_tokens": 60, "temperature": 0})
    for _, event in events:
        check(event, "ResponseStreamEvent")
    deltas = [event["delta"] for name, event in events if name == "response.function_call_arguments.delta"]
    (done,) = [event for name, event in events if name == "response.function_call_arguments.done"]
    assert len(deltas) > 1 and "".join(deltas) == done["arguments"] and done["name"] == "get_weather"
    assert events[-1][0] == "response.completed"


def test_text_format_json_schema(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "maxLength": 12}},
        "required": ["colour"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model=MODEL,
        input="Name a colour.",
        text={"format": {"type": "json_schema", "name": "colour", "schema": schema, "strict": True}},
        max_output_tokens=30,
    )
    jsonschema.validate(json.loads(response.output_text), schema)


def test_stored_responses_survive_a_restart(
    serve_with: Callable[..., AbstractContextManager[str]], tmp_path: Path
) -> None:
    database = str(tmp_path / "responses.sqlite3")
    with serve_with(responses_db=database) as url, _sdk(url) as sdk:
        kept = sdk.responses.create(model=MODEL, input="Hi", max_output_tokens=3)
        unkept = sdk.responses.create(model=MODEL, input="Hi", max_output_tokens=3, store=False)
    with serve_with(responses_db=database) as url, _sdk(url) as sdk:
        assert sdk.responses.retrieve(kept.id).output_text == kept.output_text
        with pytest.raises(openai.NotFoundError):
            sdk.responses.retrieve(unkept.id)
    with serve_with(no_store=True) as url, _sdk(url) as sdk:
        answer = sdk.responses.create(model=MODEL, input="Hi", max_output_tokens=3)
        assert answer.store is False
        with pytest.raises(openai.NotFoundError):
            sdk.responses.retrieve(answer.id)


def test_a_stream_whose_client_left_is_stored_incomplete(
    http: httpx.Client, base_url: str, wait_until: Callable[[Callable[[], bool]], None]
) -> None:
    body = {"input": "Tell me a long story.", "max_output_tokens": 200, "stream": True}
    with (
        httpx.Client(base_url=base_url, timeout=120) as leaving,
        leaving.stream("POST", "/v1/responses", json=body) as stream,
    ):
        payloads = (json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: "))
        response_id = next(payloads)["response"]["id"]
        next(event for event in payloads if event["type"] == "response.output_text.delta")
    # Left after the first text: the server keeps what it had once it notices (at its next event).
    wait_until(lambda: http.get(f"/v1/responses/{response_id}").status_code == 200)
    stored = http.get(f"/v1/responses/{response_id}").json()
    check(stored, "Response")
    assert stored["status"] == "incomplete" and stored["output"][0]["content"][0]["text"]


def test_a_failure_mid_stream_is_a_failed_response(http: httpx.Client, fault_marker: str) -> None:
    events = _events(http, {"input": f"{fault_marker}2 Hello", "max_output_tokens": 10})
    name, event = events[-1]
    check(event, "ResponseStreamEvent")
    assert name == "response.failed" and event["response"]["status"] == "failed"
    assert event["response"]["error"]["code"] == "server_error"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "Hi", "tools": [{"type": "web_search"}]}, "tools.0"),
        ({"input": "Hi", "background": True}, "background"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0"),
    ],
)
def test_refused_inputs_name_the_field(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    response = http.post("/v1/responses", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_openai_agents_sdk_on_its_default_responses_model(base_url: str) -> None:
    set_tracing_disabled(True)
    seen: list[str] = []

    @function_tool
    def weather(city: str) -> str:
        """The weather in a city."""
        seen.append(city)
        return f"18 degrees in {city}"

    async def run() -> str:
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0)
        set_default_openai_client(client, use_for_tracing=False)
        set_default_openai_api("responses")
        agent = Agent(
            name="forecaster",
            instructions="Answer questions about the weather.",
            model=MODEL,
            tools=[weather],
            model_settings=ModelSettings(tool_choice="required", parallel_tool_calls=False, temperature=0),
            tool_use_behavior="stop_on_first_tool",
        )
        result = await Runner.run(agent, "What is the weather in Paris?")
        await client.close()
        return str(result.final_output)

    output = asyncio.run(run())
    (city,) = seen
    assert output == f"18 degrees in {city}"
