"""A Responses API request in chat terms: `input` items (and the stored conversation of `previous_response_id`)
become chat messages, the flat function tools chat's tools, `text.format` a response format; the chat path then
plans it (templates, tools, grammars, the buffer stage), so the two endpoints cannot drift apart.

The conversation kept for a later turn is chat messages as JSON: this request's input and its answer appended to
the previous conversation. `instructions` are not part of it (OpenAI's behaviour: they are not inherited).
"""

import json
import uuid
from typing import Any

from pydantic import BaseModel, ValidationError

from tokserve.errors import InvalidRequest
from tokserve.schemas import CreateChatCompletionRequest
from tokserve.schemas.response_items import (
    EasyInputMessage,
    FunctionCallOutputItemParam,
    FunctionToolCall,
    FunctionToolCallOutputResource,
    FunctionToolCallResource,
    InputMessageResource,
    InputTextContent,
    ItemReferenceParam,
    OutputMessage,
    OutputTextContent,
    ReasoningItem,
)
from tokserve.schemas.responses import CreateResponse, TextResponseFormatJsonSchema, ToolChoiceFunction

# The `include` value that asks for logprobs; the others name nothing this server leaves out.
_LOGPROBS = "message.output_text.logprobs"


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def input_messages(body: CreateResponse) -> list[dict[str, Any]]:
    """The request's input items as chat messages (reasoning items and references to stored items dropped: the
    template never shows past thinking, and what a reference names is already in the stored conversation)."""
    if isinstance(body.input, str):
        return [{"role": "user", "content": body.input}]
    messages: list[dict[str, Any]] = []
    for number, item in enumerate(body.input or ()):
        if isinstance(item, EasyInputMessage):
            content = item.content if isinstance(item.content, str) else "".join(part.text for part in item.content)
            messages.append({"role": item.role, "content": content})
        elif isinstance(item, FunctionToolCall):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            previous = messages[-1] if messages else None
            if previous is not None and previous["role"] == "assistant" and previous.get("tool_calls") is not None:
                previous["tool_calls"].append(call)  # parallel calls: one assistant message
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItemParam):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
        elif isinstance(item, ItemReferenceParam) and body.previous_response_id is None:
            raise InvalidRequest(
                "An item_reference names an item of a stored response: send previous_response_id with it.",
                param=f"input.{number}",
            )
        elif not isinstance(item, ReasoningItem | ItemReferenceParam):
            raise InvalidRequest(f"Input items of type {item.type} are not supported.", param=f"input.{number}")
    return messages


def chat_request(
    body: CreateResponse, history: list[dict[str, Any]], inputs: list[dict[str, Any]], template: str
) -> CreateChatCompletionRequest:
    """The chat request that generates this response: `history` (the stored conversation, if any), then `inputs`
    (`input_messages(body)`)."""
    instructions = [{"role": "system", "content": body.instructions}] if body.instructions else []
    chat: dict[str, Any] = {
        "model": body.model,
        "messages": [*instructions, *history, *inputs],
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "logprobs": _LOGPROBS in (body.include or ()),
        "stream": bool(body.stream),
        "parallel_tool_calls": body.parallel_tool_calls,
    }
    if chat["logprobs"] and body.top_logprobs:
        chat["top_logprobs"] = body.top_logprobs
    if body.tools:
        chat["tools"] = [
            {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
            for tool in body.tools
        ]
    if isinstance(body.tool_choice, ToolChoiceFunction):
        chat["tool_choice"] = {"type": "function", "function": {"name": body.tool_choice.name}}
    elif body.tool_choice is not None:
        chat["tool_choice"] = body.tool_choice
    if body.text is not None:
        chat["response_format"] = _response_format(body.text.format)
    # Reasoning effort maps onto the template's thinking switch where it has one (Qwen3, SmolLM3).
    if body.reasoning is not None and body.reasoning.effort is not None and "enable_thinking" in template:
        chat["chat_template_kwargs"] = {"enable_thinking": body.reasoning.effort not in ("none", "minimal")}
    if not chat["messages"]:
        raise InvalidRequest("There is nothing to answer: input is empty.", param="input")
    try:
        return CreateChatCompletionRequest.model_validate(chat)
    except ValidationError as error:
        raise InvalidRequest(f"The input cannot be answered: {error.errors()[0]['msg']}", param="input") from error


def _response_format(format: Any) -> dict[str, Any]:
    if isinstance(format, TextResponseFormatJsonSchema):
        schema = {"name": format.name, "schema": format.json_schema, "strict": format.strict}
        return {"type": "json_schema", "json_schema": schema}
    return {"type": format.type}


def conversation(history: list[dict[str, Any]], inputs: list[dict[str, Any]], answer: list[dict[str, Any]]) -> str:
    """The conversation to keep for a later turn, as JSON: the history, this input, this answer."""
    return json.dumps([*history, *inputs, *answer])


def input_resources(body: CreateResponse) -> list[BaseModel]:
    """The request's input items as GET /v1/responses/{id}/input_items lists them: with ids, completed."""
    if isinstance(body.input, str):
        return [InputMessageResource(id=new_id("msg"), role="user", content=[InputTextContent(text=body.input)])]
    resources: list[BaseModel] = []
    for item in body.input or ():
        if isinstance(item, EasyInputMessage):
            parts = [item.content] if isinstance(item.content, str) else [part.text for part in item.content]
            if item.role == "assistant":
                texts = [OutputTextContent(text=text) for text in parts]
                resources.append(OutputMessage(id=new_id("msg"), status="completed", content=texts))
            else:
                texts_in = [InputTextContent(text=text) for text in parts]
                resources.append(InputMessageResource(id=new_id("msg"), role=item.role, content=texts_in))
        elif isinstance(item, FunctionToolCall):
            fields = item.model_dump(exclude={"id", "status"})
            resources.append(FunctionToolCallResource(**fields, id=item.id or new_id("fc"), status="completed"))
        elif isinstance(item, FunctionCallOutputItemParam):
            fields = item.model_dump(exclude={"id", "status"})
            resources.append(FunctionToolCallOutputResource(**fields, id=item.id or new_id("fco"), status="completed"))
    return resources
