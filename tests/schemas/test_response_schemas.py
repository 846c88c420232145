"""The Responses API's wire models: every object and stream event they build, dumped as the server sends it, checked
against OpenAI's own schemas (tests/data/openai-schemas.json, cut from openai-openapi.json); and the requests they
take, refuse by name, or ignore."""

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

from openai_schemas import SCHEMAS, problems
from tokserve.schemas import (
    CreateResponse,
    DeletedResponse,
    EasyInputMessage,
    FunctionCallOutputItemParam,
    FunctionTool,
    FunctionToolCall,
    FunctionToolCallOutputResource,
    FunctionToolCallResource,
    IncompleteDetails,
    InputMessageResource,
    InputTextContent,
    InputTokensDetails,
    ItemReferenceParam,
    LogProb,
    OutputMessage,
    OutputTextContent,
    Reasoning,
    ReasoningItem,
    ReasoningTextContent,
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseError,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseItemList,
    ResponseLogProb,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseReasoningTextDeltaEvent,
    ResponseReasoningTextDoneEvent,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseTextParam,
    ResponseTopLogProb,
    ResponseUsage,
    TextResponseFormatJsonSchema,
    ToolChoiceFunction,
    TopLogProb,
)


def check(model: BaseModel, schema: str) -> dict[str, Any]:
    """The model as the server sends it, which must validate against the spec's schema."""
    dumped: dict[str, Any] = json.loads(model.model_dump_json())
    assert dumped == model.model_dump(mode="json")
    assert not problems(dumped, schema), (schema, problems(dumped, schema), dumped)
    return dumped


# Sample objects, built as the server would build them

CREATED = 1741476542
LOGPROB = LogProb(
    token="Hi", logprob=-0.25, bytes=[72, 105], top_logprobs=[TopLogProb(token="Hi", logprob=-0.25, bytes=[72, 105])]
)
TOOL = FunctionTool(name="get_weather", parameters={"type": "object", "properties": {"city": {"type": "string"}}})
REASONING = ReasoningItem(id="rs_1", content=[ReasoningTextContent(text="The user greets me.")], status="completed")
MESSAGE = OutputMessage(id="msg_1", status="completed", content=[OutputTextContent(text="Hi", logprobs=[LOGPROB])])
CALL = FunctionToolCall(
    id="fc_1", call_id="call_1", name="get_weather", arguments='{"city": "Paris"}', status="completed"
)
USAGE = ResponseUsage(
    input_tokens=12, input_tokens_details=InputTokensDetails(cached_tokens=8), output_tokens=9, total_tokens=21
)


def response(**fields: Any) -> Response:
    return Response.model_validate({"id": "resp_1", "created_at": CREATED, "model": "smol", **fields})


COMPLETED = response(
    status="completed",
    completed_at=CREATED + 1,
    output=[REASONING, MESSAGE, CALL],
    usage=USAGE,
    tools=[TOOL],
    tool_choice=ToolChoiceFunction(type="function", name="get_weather"),
    temperature=0.0,
    top_p=1.0,
    text=ResponseTextParam(
        format=TextResponseFormatJsonSchema.model_validate(
            {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": True}
        ),
        verbosity="medium",
    ),
    reasoning=Reasoning(effort="low", summary="auto"),
    metadata={"session": "42"},
    user="alice",
    top_logprobs=1,
    max_output_tokens=64,
    previous_response_id="resp_0",
    instructions="Be brief.",
)
IN_PROGRESS = response(status="in_progress")


def test_a_completed_response_with_each_output_item_matches_openais_schema() -> None:
    dumped = check(COMPLETED, "Response")
    assert [item["type"] for item in dumped["output"]] == ["reasoning", "message", "function_call"]
    assert dumped["output"][0] == {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "The user greets me."}],
        "encrypted_content": None,
        "status": "completed",
    }
    assert dumped["output"][1]["content"][0]["annotations"] == []
    assert dumped["output"][2]["id"] == "fc_1" and dumped["output"][2]["status"] == "completed"
    assert dumped["text"]["format"] == {
        "type": "json_schema",
        "name": "answer",
        "schema": {"type": "object"},
        "strict": True,
    }
    assert dumped["tools"] == [
        {"type": "function", "name": "get_weather", "description": None, "parameters": TOOL.parameters, "strict": None}
    ]
    assert dumped["usage"]["input_tokens_details"] == {"cached_tokens": 8, "cache_write_tokens": 0}
    assert dumped["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}


def _required(schema: dict[str, Any]) -> set[str]:
    """The keys an object must have, through allOf and $ref."""
    if "$ref" in schema:
        return _required(SCHEMAS[schema["$ref"].rsplit("/", 1)[1]])
    return set(schema.get("required", [])).union(*(_required(part) for part in schema.get("allOf", [])))


def test_every_key_the_spec_requires_is_in_even_the_barest_response() -> None:
    required = _required(SCHEMAS["Response"])
    assert required == {
        "id", "object", "created_at", "error", "incomplete_details", "instructions", "model", "tools", "output",
        "parallel_tool_calls", "metadata", "tool_choice", "temperature", "top_p",
    }  # fmt: skip
    dumped = check(IN_PROGRESS, "Response")
    assert required <= dumped.keys()
    assert dumped["tool_choice"] == "auto" and dumped["tools"] == [] and dumped["metadata"] == {}
    assert dumped["text"] == {"format": {"type": "text"}, "verbosity": None}
    # The spec types `usage` and `user` as an object and a string, never null: left out until there is one.
    assert "usage" not in dumped and "user" not in dumped
    assert problems({**dumped, "usage": None}, "Response") and problems({**dumped, "user": None}, "Response")


def test_incomplete_and_failed_responses_match_openais_schema() -> None:
    incomplete = response(
        status="incomplete",
        output=[MESSAGE],
        usage=USAGE,
        incomplete_details=IncompleteDetails(reason="max_output_tokens"),
    )
    assert check(incomplete, "Response")["incomplete_details"] == {"reason": "max_output_tokens"}
    failed = response(status="failed", error=ResponseError(code="server_error", message="The model failed."))
    assert check(failed, "Response")["error"] == {"code": "server_error", "message": "The model failed."}


def _stream() -> list[BaseModel]:
    """One of each event this server sends, in a stream's order."""
    thought = {"item_id": "rs_1", "output_index": 0, "content_index": 0, "sequence_number": 0}
    said = {"item_id": "msg_1", "output_index": 1, "content_index": 0, "sequence_number": 0}
    called = {"item_id": "fc_1", "output_index": 2, "sequence_number": 0}
    top = [ResponseTopLogProb(token="Hi", logprob=-0.25)]
    events: list[Any] = [
        ResponseCreatedEvent(response=IN_PROGRESS, sequence_number=0),
        ResponseInProgressEvent(response=IN_PROGRESS, sequence_number=0),
        ResponseOutputItemAddedEvent(
            output_index=0,
            item=REASONING.model_copy(update={"content": [], "status": "in_progress"}),
            sequence_number=0,
        ),
        ResponseContentPartAddedEvent(**thought, part=ReasoningTextContent(text="")),
        ResponseReasoningTextDeltaEvent(**thought, delta="The user"),
        ResponseReasoningTextDoneEvent(**thought, text="The user greets me."),
        ResponseContentPartDoneEvent(**thought, part=ReasoningTextContent(text="The user greets me.")),
        ResponseOutputItemDoneEvent(output_index=0, item=REASONING, sequence_number=0),
        ResponseOutputItemAddedEvent(
            output_index=1, item=OutputMessage(id="msg_1", status="in_progress", content=[]), sequence_number=0
        ),
        ResponseContentPartAddedEvent(**said, part=OutputTextContent(text="")),
        ResponseTextDeltaEvent(**said, delta="Hi"),
        ResponseTextDeltaEvent(**said, delta="", logprobs=[ResponseLogProb(token="!", logprob=-2.0, top_logprobs=top)]),
        ResponseTextDoneEvent(**said, text="Hi"),
        ResponseContentPartDoneEvent(**said, part=MESSAGE.content[0]),
        ResponseOutputItemDoneEvent(output_index=1, item=MESSAGE, sequence_number=0),
        ResponseOutputItemAddedEvent(
            output_index=2, item=CALL.model_copy(update={"arguments": "", "status": "in_progress"}), sequence_number=0
        ),
        ResponseFunctionCallArgumentsDeltaEvent(**called, delta='{"city": '),
        ResponseFunctionCallArgumentsDoneEvent(**called, name="get_weather", arguments=CALL.arguments),
        ResponseOutputItemDoneEvent(output_index=2, item=CALL, sequence_number=0),
        ResponseCompletedEvent(response=COMPLETED, sequence_number=0),
        ResponseIncompleteEvent(
            response=response(status="incomplete", incomplete_details={"reason": "max_output_tokens"}),
            sequence_number=0,
        ),
        ResponseFailedEvent(
            response=response(status="failed", error={"code": "server_error", "message": "boom"}), sequence_number=0
        ),
        ResponseErrorEvent(code="server_error", message="boom", sequence_number=0),
    ]
    return [event.model_copy(update={"sequence_number": number}) for number, event in enumerate(events)]


def test_each_stream_event_matches_openais_schema() -> None:
    stream = _stream()
    names = set()
    for event in stream:
        dumped = check(event, "ResponseStreamEvent")
        names.add(dumped["type"])
        assert TypeAdapter(ResponseStreamEvent).validate_python(dumped) == event  # the union tells them apart
    assert names == {
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done", "response.output_text.delta", "response.output_text.done",
        "response.function_call_arguments.delta", "response.function_call_arguments.done", "response.completed",
        "response.incomplete", "response.failed", "error",
    }  # fmt: skip
    delta = check(stream[10], "ResponseTextDeltaEvent")
    assert delta["logprobs"] == []  # required by the spec even when not asked for
    assert check(stream[-1], "ResponseErrorEvent") == {
        "type": "error", "code": "server_error", "message": "boom", "param": None, "sequence_number": len(stream) - 1
    }  # fmt: skip


def test_the_schema_check_is_not_vacuous() -> None:
    """The oneOf unions of the spec would hide a check that passes anything: a missing required key fails."""
    delta = _stream()[10].model_dump(mode="json")
    assert problems({key: value for key, value in delta.items() if key != "logprobs"}, "ResponseStreamEvent")
    message = MESSAGE.model_dump(mode="json")
    assert problems({**message, "content": [{"type": "output_text", "text": "x"}]}, "OutputItem")


def test_the_input_item_list_and_the_delete_answer_match_openai() -> None:
    items = ResponseItemList(
        data=[
            InputMessageResource(id="msg_0", role="developer", content=[InputTextContent(text="Be brief.")]),
            InputMessageResource(id="msg_1", role="user", content=[InputTextContent(text="Weather in Paris?")]),
            REASONING,
            OutputMessage(id="msg_2", status="completed", content=[OutputTextContent(text="Let me look.")]),
            FunctionToolCallResource(
                id="fc_1", call_id="call_1", name="get_weather", arguments="{}", status="completed"
            ),
            FunctionToolCallOutputResource(id="fco_1", call_id="call_1", output="18C", status="completed"),
        ],
        first_id="msg_0",
        last_id="fco_1",
        has_more=False,
    )
    dumped = check(items, "ResponseItemList")
    assert ResponseItemList.model_validate(dumped) == items
    # The spec has no schema for the delete answer, only this example.
    assert DeletedResponse(id="resp_6786a1bec27481909a17d673315b29f6").model_dump(mode="json") == {
        "id": "resp_6786a1bec27481909a17d673315b29f6",
        "object": "response",
        "deleted": True,
    }


# Requests


def parse(body: dict[str, Any]) -> CreateResponse:
    return CreateResponse.model_validate_json(json.dumps(body))


def refusal(body: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ValidationError) as caught:
        parse(body)
    error: dict[str, Any] = caught.value.errors()[0]
    return error


def test_a_string_input_and_the_defaults() -> None:
    request = parse({"model": "smol", "input": "Say hello."})
    assert request.input == "Say hello."
    assert (request.stream, request.store, request.tools, request.tool_choice, request.logprobs) == (
        False,
        True,
        None,
        None,
        False,
    )


def test_a_list_input_with_each_item_type() -> None:
    request = parse(
        {
            "input": [
                {"role": "developer", "content": "Be brief."},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {
                    "type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "s"}],
                    "encrypted_content": "gAAA",
                },
                {
                    "type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
                    "content": [{"type": "output_text", "text": "Let me look.", "annotations": [], "logprobs": []}],
                },
                {
                    "type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
                    "arguments": "{}", "status": "completed",
                },
                {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
                {"type": "item_reference", "id": "msg_0"},
                {"id": "msg_00"},
            ],
            "include": ["message.output_text.logprobs", "reasoning.encrypted_content"],
        }
    )  # fmt: skip
    assert isinstance(request.input, list)
    kinds = [type(item) for item in request.input]
    assert kinds == [
        EasyInputMessage, EasyInputMessage, ReasoningItem, EasyInputMessage, FunctionToolCall, FunctionToolCall,
        FunctionCallOutputItemParam, ItemReferenceParam, ItemReferenceParam,
    ]  # fmt: skip
    developer, user, _, assistant, call, bare_call, _, _, bare_reference = request.input
    assert isinstance(developer, EasyInputMessage) and developer.content == "Be brief."
    assert isinstance(user, EasyInputMessage) and user.content == [InputTextContent(text="Weather?")]
    assert isinstance(assistant, EasyInputMessage) and assistant.content == [OutputTextContent(text="Let me look.")]
    assert isinstance(call, FunctionToolCall) and call.id == "fc_1"
    assert isinstance(bare_call, FunctionToolCall) and "id" not in bare_call.model_dump()
    assert isinstance(bare_reference, ItemReferenceParam) and bare_reference.type == "item_reference"
    assert request.logprobs


def test_the_served_parameters() -> None:
    request = parse(
        {
            "input": "Hi", "instructions": "Be brief.", "max_output_tokens": 1, "temperature": 0, "top_p": 0.5,
            "tools": [{"type": "function", "name": "get_weather", "description": "d", "parameters": {}}],
            "tool_choice": {"type": "function", "name": "get_weather"}, "parallel_tool_calls": False,
            "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}, "strict": True}},
            "reasoning": {"effort": "high", "summary": "auto"}, "metadata": {"k": "v"}, "user": "u", "store": False,
            "stream": True, "previous_response_id": "resp_0", "truncation": "auto", "top_logprobs": 20,
            "max_tool_calls": 3, "background": False, "conversation": None, "prompt": None,
        }
    )  # fmt: skip
    assert request.tools == [FunctionTool(name="get_weather", description="d", parameters={})]
    assert request.tool_choice == ToolChoiceFunction(type="function", name="get_weather")
    assert request.text is not None and isinstance(request.text.format, TextResponseFormatJsonSchema)
    assert request.text.format.json_schema == {"type": "object"}
    # What the response echoes validates as the spec's Response.
    echo = response(status="completed", tools=request.tools, tool_choice=request.tool_choice, text=request.text)
    check(echo, "Response")


@pytest.mark.parametrize(
    ("body", "where", "named"),
    [
        ({"background": True}, ("background",), "background"),
        ({"conversation": "conv_1"}, ("conversation",), "conversations"),
        ({"prompt": {"id": "pmpt_1"}}, ("prompt",), "prompts"),
        ({"context_management": [{"type": "compaction"}]}, ("context_management",), "context_management"),
        ({"moderation": {"model": "omni-moderation-latest"}}, ("moderation",), "moderation"),
        ({"text": {"verbosity": "low"}}, ("text", "verbosity"), "verbosity"),
        ({"tools": [{"type": "web_search"}]}, ("tools", 0), "web_search tools"),
        ({"tool_choice": {"type": "file_search"}}, ("tool_choice",), "file_search tool choices"),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, ("input", "list", 0), "web_search_call input items"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
            ("input", "list", 0, "message", "content", "list", 0),
            "input_image content parts",
        ),
    ],
)
def test_what_would_change_the_output_is_refused_by_name(
    body: dict[str, Any], where: tuple[Any, ...], named: str
) -> None:
    error = refusal({"input": "Hi", **body})
    assert error["type"] == "unsupported_parameter"
    assert error["loc"] == where and named in error["msg"]


def test_what_only_labels_or_routes_is_ignored() -> None:
    body = {
        "service_tier": "flex",
        "prompt_cache_key": "k",
        "safety_identifier": "s",
        "stream_options": {"include_obfuscation": False},
    }
    body |= {"text": {"verbosity": "medium"}, "include": ["reasoning.encrypted_content"], "unknown": 1}
    assert parse({"input": "Hi", **body}).model_dump(exclude_defaults=True) == {
        "input": "Hi",
        "text": {"verbosity": "medium"},
        "include": ["reasoning.encrypted_content"],
    }


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({}, ()),
        ({"input": []}, ()),
        ({"input": "Hi", "max_output_tokens": 0}, ("max_output_tokens",)),
        ({"input": "Hi", "top_logprobs": 21}, ("top_logprobs",)),
        ({"input": "Hi", "temperature": 2.5}, ("temperature",)),
        ({"input": "Hi", "metadata": {str(key): "v" for key in range(17)}}, ("metadata",)),
        ({"input": "Hi", "metadata": {"k" * 65: "v"}}, ("metadata", "k" * 65, "[key]")),
        ({"input": "Hi", "tool_choice": "any"}, ("tool_choice",)),
        ({"input": "Hi", "tools": [{"type": "function", "name": "no spaces"}]}, ("tools", 0, "name")),
        (
            {"input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]},
            ("input", "list", 0, "message"),
        ),
        ({"input": [{"role": "tool", "content": "x"}]}, ("input", "list", 0, "message", "role")),
        (
            {"input": [{"type": "function_call_output", "call_id": "c", "output": 18}]},
            ("input", "list", 0, "function_call_output", "output"),
        ),
        ({"input": ["Hi"]}, ("input", "list", 0)),
    ],
)
def test_invalid_requests_are_refused(body: dict[str, Any], where: tuple[Any, ...]) -> None:
    error = refusal(body)
    assert error["type"] != "unsupported_parameter"
    assert error["loc"][: len(where)] == where, error


def test_input_is_optional_only_after_a_previous_response() -> None:
    assert parse({"previous_response_id": "resp_0"}).input is None
    assert refusal({"instructions": "Be brief."})["ctx"] == {"param": "input"}


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
ITEM_KEYS = ["type", "role", "content", "id", "call_id", "name", "arguments", "output", "summary", "text", "status"]
ITEM_TYPES = ["message", "function_call", "function_call_output", "reasoning", "item_reference", "input_text", "x"]
ITEM = st.dictionaries(st.sampled_from(ITEM_KEYS), JSON | st.sampled_from(ITEM_TYPES), max_size=5)
FIELDS = [
    "model", "instructions", "previous_response_id", "max_output_tokens", "temperature", "top_p", "top_logprobs",
    "include", "tools", "tool_choice", "parallel_tool_calls", "max_tool_calls", "text", "reasoning", "stream", "store",
    "metadata", "user", "truncation", "background", "conversation", "prompt",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    body=st.fixed_dictionaries(
        {"input": st.text(max_size=8) | st.lists(ITEM | JSON, max_size=4) | JSON},
        optional={name: JSON for name in FIELDS},
    )
)
def test_any_json_body_parses_or_is_a_validation_error(body: dict[str, Any]) -> None:
    try:
        parse(body)
    except ValidationError as error:
        assert error.errors()  # the 400 handler names the first one
