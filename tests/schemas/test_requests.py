"""Property tests of the request schemas: any JSON either parses or is refused with a ValidationError (the 400
path), never another exception; what lies within the documented ranges parses with its values, what lies outside
is refused; stop strings that parse are ones a StreamBuffer takes."""

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from tokserve.buffer import StreamBuffer
from tokserve.schemas import CreateChatCompletionRequest, CreateCompletionRequest

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "model", "messages", "prompt", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n",
    "temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty", "logit_bias", "top_k", "min_p",
    "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids", "logprobs", "top_logprobs", "echo", "suffix",
    "best_of", "tools", "response_format", "chat_template_kwargs", "continue_final_message", "add_generation_prompt",
]  # fmt: skip
# Bodies near the real shape: known field names with arbitrary values, so the validators themselves get exercised.
BODIES = st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=8) | st.dictionaries(st.text(max_size=8), JSON)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant"]), "content": st.text(max_size=20)}
)
STOPS = st.none() | st.text(min_size=1, max_size=5) | st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=4)
VALID_PARAMETERS = st.fixed_dictionaries(
    {},
    optional={
        "max_tokens": st.integers(1, 10_000),
        "n": st.integers(1, 128),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "stop": STOPS,
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
        "top_k": st.integers(-1, 1000),
        "min_p": st.floats(0, 1),
        "logit_bias": st.dictionaries(st.integers(0, 50_000).map(str), st.floats(-100, 100), max_size=3),
    },
)


def parses_or_refuses(model: type[BaseModel], body: Any) -> BaseModel | None:
    try:
        return model.model_validate_json(json.dumps(body))
    except ValidationError as error:
        assert error.errors()  # the 400 handler names the first one
        return None


@settings(max_examples=200, deadline=None)
@given(body=BODIES)
@pytest.mark.parametrize("model", [CreateChatCompletionRequest, CreateCompletionRequest])
def test_any_json_body_parses_or_is_a_validation_error(model: type[BaseModel], body: dict[str, Any]) -> None:
    parsed = parses_or_refuses(model, body)
    if parsed is not None:
        assert isinstance(parsed, CreateChatCompletionRequest | CreateCompletionRequest)
        StreamBuffer(stop=parsed.stop_strings or None)  # never refuses what the schema let through


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(MESSAGE, min_size=1, max_size=4), parameters=VALID_PARAMETERS)
def test_valid_chat_requests_parse_with_their_values(
    messages: list[dict[str, str]], parameters: dict[str, Any]
) -> None:
    parsed = CreateChatCompletionRequest.model_validate_json(json.dumps({"messages": messages, **parameters}))
    assert [message.content for message in parsed.messages] == [message["content"] for message in messages]
    for name, value in parameters.items():
        assert getattr(parsed, name) == value


@settings(max_examples=200, deadline=None)
@given(
    prompt=st.text(max_size=20) | st.lists(st.integers(0, 50_000), min_size=1, max_size=5),
    parameters=VALID_PARAMETERS,
)
def test_valid_completion_requests_parse_with_their_values(prompt: Any, parameters: dict[str, Any]) -> None:
    parsed = CreateCompletionRequest.model_validate_json(json.dumps({"prompt": prompt, **parameters}))
    assert parsed.prompts == [prompt]
    for name, value in parameters.items():
        assert getattr(parsed, name) == value


def floats(**bounds: float) -> st.SearchStrategy[float]:
    return st.floats(allow_nan=False, allow_infinity=False, **bounds)


OUT_OF_RANGE = {
    "max_tokens": st.integers(max_value=0),
    "n": st.integers(max_value=0) | st.integers(min_value=129),
    "temperature": floats(max_value=-1e-9) | floats(min_value=2.000001),
    "top_p": floats(max_value=-1e-9) | floats(min_value=1.000001),
    "presence_penalty": floats(max_value=-2.000001) | floats(min_value=2.000001),
    "top_logprobs": st.integers(max_value=-1) | st.integers(min_value=21),
    "seed": st.integers(min_value=2**63) | st.integers(max_value=-(2**63) - 1),
    "max_completion_tokens": st.integers(max_value=0),
}


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(OUT_OF_RANGE)), data=st.data())
def test_out_of_range_values_are_refused(name: str, data: st.DataObject) -> None:
    value = data.draw(OUT_OF_RANGE[name])
    body = {"messages": [{"role": "user", "content": "Hi"}], "logprobs": True, name: value}
    with pytest.raises(ValidationError):
        CreateChatCompletionRequest.model_validate_json(json.dumps(body))
