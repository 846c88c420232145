"""What a request asks of its answer's structure, in engine and pipeline terms: the grammar it is generated under,
how tool calls and thinking are parsed out of it (`Shape`), and, for chat, the messages and tools the template
renders. Blocking where it checks a grammar (the engine compiles it): `conversion.py` runs in a thread.

Which grammar: a forced tool call (`tool_choice` required or named) before `response_format` and vLLM's
`structured_outputs`, and those before `auto` tools (a lazy grammar that constrains a call once its opening marker
appears). A template without tools support gets the tools and the Hermes call format in its system prompt, and
calls and results in history as Hermes markup (the README documents it).
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tokserve.config import Settings
from tokserve.engine import Engine
from tokserve.errors import InvalidRequest
from tokserve.schemas import ChatCompletionNamedToolChoice, CreateChatCompletionRequest, GenerationParams
from tokserve.schemas.chat import (
    ChatCompletionRequestAssistantMessage,
    ChatCompletionRequestFunctionMessage,
    ChatCompletionRequestMessage,
    ChatCompletionRequestToolMessage,
)
from tokserve.schemas.tools import ResponseFormatJsonObject, ResponseFormatJsonSchema
from tokserve.server.deltas import Shape
from tokserve.server.tool_formats import FORMATS, Tool, ToolFormat, forced_grammar, lazy_grammar, schema_grammar

_FALLBACK = FORMATS["hermes"]
# Chat templates that know a call format write its marker.
_FORMAT_MARKERS = (("[TOOL_CALLS]", "mistral"), ("<tool_call>", "hermes"), ("<|python_tag|>", "llama3_json"))


@dataclass(frozen=True, slots=True)
class Structure:
    """A request's grammar (None: free text) and how its output is taken apart."""

    grammar: str | None = None
    shape: Shape = field(default_factory=Shape)
    skip_special_tokens: bool = True  # False when a marker to parse is a special token


@dataclass(frozen=True, slots=True)
class ChatStructure(Structure):
    messages: list[dict[str, Any]] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None  # for the template


def generation_structure(body: GenerationParams, engine: Engine) -> Structure:
    """The structured output of vLLM's and llama.cpp's fields (both endpoints), checked."""
    asked = body.constraint
    if asked is None:
        return Structure(skip_special_tokens=body.skip_special_tokens is not False)
    param, kind, value = asked
    if kind == "json":
        grammar = schema_grammar(value)
    elif kind == "regex":
        grammar = "start: /" + value.replace("/", "\\/") + "/"
    elif kind == "choice":
        grammar = "start: " + " | ".join(json.dumps(choice) for choice in value)
    else:
        grammar = value
    _check(grammar, engine, param)
    return Structure(grammar, Shape(raw_content=True), body.skip_special_tokens is not False)


def chat_structure(body: CreateChatCompletionRequest, engine: Engine, settings: Settings) -> ChatStructure:
    """Tools, tool choice, response format and reasoning of a chat request, checked; its messages for the template."""
    template = settings.chat_template_text or engine.chat_template or ""
    legacy = body.functions is not None
    tools = [Tool(f.name, f.parameters or {"type": "object", "properties": {}}) for f in _functions(body)]
    choice = _tool_choice(body, [tool.name for tool in tools])
    supports_tools = "tools" in template
    tool_format = _FALLBACK if not supports_tools else _format(settings.tool_call_parser, template)
    offered = tools if choice != "none" else []
    grammar, raw_content = _grammar(body, engine, tool_format, offered, choice)
    # Under a response format the answer is the document: nothing in it is parsed as a call.
    parsed = tool_format if offered and not raw_content else None
    reasoning = settings.reasoning_parser == "think" or (settings.reasoning_parser == "auto" and "<think>" in template)
    markers = ([tool_format.start, tool_format.end] if parsed else []) + (["<think>", "</think>"] if reasoning else [])
    special = any(marker in engine.vocabulary.special for marker in markers)
    messages = _messages(body.messages, fallback=bool(offered) and not supports_tools)
    if offered and not supports_tools:
        messages = _with_tools_prompt(messages, offered)
    template_tools = [_tool_for_template(f) for f in _functions(body) if any(f.name == t.name for t in offered)]
    return ChatStructure(
        grammar,
        Shape(parsed, reasoning, raw_content=raw_content, legacy_functions=legacy and parsed is not None),
        skip_special_tokens=body.skip_special_tokens is not False and not special,
        messages=messages,
        tools=template_tools if supports_tools and template_tools else None,
    )


def _grammar(
    body: CreateChatCompletionRequest, engine: Engine, tool_format: ToolFormat, offered: list[Tool], choice: str
) -> tuple[str | None, bool]:
    """The request's grammar, checked, and whether it constrains the content (a document, not calls in text)."""
    legacy = body.functions is not None
    parallel = body.parallel_tool_calls is not False and not legacy
    if offered and choice not in ("auto", "none"):
        # A named function is called once (as vLLM does); `required` may call several, unless parallel_tool_calls
        # is false.
        forced = [tool for tool in offered if choice == "required" or tool.name == choice]
        grammar = forced_grammar(tool_format, forced, parallel and choice == "required", engine.vocabulary.special)
        _check_tools(grammar, engine, offered, legacy)
        return grammar, False
    if (document := _response_format(body)) is not None:
        _check(document, engine, "response_format.json_schema.schema")
        return document, True
    if body.constraint is not None:
        return generation_structure(body, engine).grammar, True
    lazy = lazy_grammar(tool_format, offered, parallel, engine.vocabulary.special) if offered else None
    if lazy is not None:
        _check_tools(lazy, engine, offered, legacy)
    return lazy, False


def _functions(body: CreateChatCompletionRequest) -> list[Any]:
    if body.functions is not None:
        return list(body.functions)
    return [tool.function for tool in body.tools or ()]


def _tool_choice(body: CreateChatCompletionRequest, names: Sequence[str]) -> str:
    """ "none", "auto", "required", or the name of the one function to call."""
    legacy = body.functions is not None
    param = "function_call" if legacy else "tool_choice"
    asked = body.function_call if legacy else body.tool_choice
    if asked is None:
        return "auto" if names else "none"
    if isinstance(asked, str):
        if asked in ("required",) and not names:
            raise InvalidRequest("tool_choice 'required' needs tools.", param=param)
        return asked
    name = asked.function.name if isinstance(asked, ChatCompletionNamedToolChoice) else asked.name
    if name not in names:
        known = ", ".join(names) or "none"
        raise InvalidRequest(f"{param} names '{name}', which is not among the tools ({known}).", param=param)
    return name


def _format(parser: str, template: str) -> ToolFormat:
    if parser != "auto":
        return FORMATS[parser]
    return next((FORMATS[name] for marker, name in _FORMAT_MARKERS if marker in template), _FALLBACK)


def _response_format(body: CreateChatCompletionRequest) -> str | None:
    asked = body.response_format
    if isinstance(asked, ResponseFormatJsonObject):
        return schema_grammar({"type": "object"})
    if isinstance(asked, ResponseFormatJsonSchema):
        return schema_grammar(asked.json_schema.json_schema or {})
    return None


def _check(grammar: str, engine: Engine, param: str) -> None:
    if (error := engine.grammar_error(grammar)) is not None:
        raise InvalidRequest(f"{param} cannot be enforced: {error}", param=param)


def _check_tools(grammar: str, engine: Engine, tools: Sequence[Tool], legacy: bool) -> None:
    """A grammar that does not compile is a 400 naming the tool whose schema is at fault."""
    if engine.grammar_error(grammar) is not None:
        for number, tool in enumerate(tools):
            param = f"functions.{number}.parameters" if legacy else f"tools.{number}.function.parameters"
            _check(schema_grammar(tool.parameters), engine, param)
        _check(grammar, engine, "functions" if legacy else "tools")


def _tool_for_template(function: Any) -> dict[str, Any]:
    described = {"name": function.name, "description": function.description or ""}
    return {"type": "function", "function": {**described, "parameters": function.parameters or {"type": "object"}}}


def _messages(messages: Sequence[ChatCompletionRequestMessage], fallback: bool) -> list[dict[str, Any]]:
    """Messages as templates take them: tool calls' arguments as objects; with `fallback`, calls and results as
    Hermes markup in plain messages."""
    names: dict[str, str] = {}  # tool call id -> function name, for templates that show it beside a result
    rendered: list[dict[str, Any]] = []
    for number, message in enumerate(messages):
        if isinstance(message, ChatCompletionRequestAssistantMessage):
            rendered.append(_assistant(message, number, names, fallback))
        elif isinstance(message, ChatCompletionRequestToolMessage | ChatCompletionRequestFunctionMessage):
            content = message_text(message.content)
            if fallback:
                rendered.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
            elif isinstance(message, ChatCompletionRequestToolMessage):
                name = names.get(message.tool_call_id)
                tool = {"role": "tool", "content": content, "tool_call_id": message.tool_call_id}
                rendered.append(tool if name is None else {**tool, "name": name})
            else:
                rendered.append({"role": "tool", "content": content, "name": message.name})
        else:
            role = "system" if message.role == "developer" else message.role
            plain = {"role": role, "content": message_text(message.content)}
            rendered.append(plain if message.name is None else {**plain, "name": message.name})
    return rendered


def _assistant(
    message: ChatCompletionRequestAssistantMessage, number: int, names: dict[str, str], fallback: bool
) -> dict[str, Any]:
    calls = [(call.id, call.function) for call in message.tool_calls or ()]
    if message.function_call is not None:
        calls.append((f"call_{number}", message.function_call))
    parsed: list[dict[str, Any]] = []
    for position, (call_id, function) in enumerate(calls):
        names[call_id] = function.name
        where = "function_call" if call_id == f"call_{number}" else f"tool_calls.{position}.function"
        try:
            arguments = json.loads(function.arguments or "{}")
        except ValueError as error:
            raise InvalidRequest(
                f"The arguments of a call in history are not JSON: {error}",
                param=f"messages.{number}.{where}.arguments",
            ) from error
        parsed.append({"id": call_id, "type": "function", "function": {"name": function.name, "arguments": arguments}})
    content = message_text(message.content)
    if fallback and parsed:
        markup = [
            f"<tool_call>\n{json.dumps({'name': call['function']['name'], 'arguments': call['function']['arguments']})}"
            "\n</tool_call>"
            for call in parsed
        ]
        return {"role": "assistant", "content": "\n".join(filter(None, [content, *markup]))}
    rendered: dict[str, Any] = {"role": "assistant", "content": content}
    return {**rendered, "tool_calls": parsed} if parsed else rendered


def _with_tools_prompt(messages: list[dict[str, Any]], tools: Sequence[Tool]) -> list[dict[str, Any]]:
    """The fallback: the tools and how to call them, at the end of the system prompt (a new one if there is none)."""
    listed = "\n".join(json.dumps({"name": tool.name, "parameters": tool.parameters}) for tool in tools)
    prompt = (
        "You can call functions. Their JSON schemas, one per line:\n"
        f"<tools>\n{listed}\n</tools>\n"
        "To call a function, answer with its name and arguments as JSON between tags, like this:\n"
        '<tool_call>\n{"name": "NAME", "arguments": {...}}\n</tool_call>'
    )
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{prompt}"}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def message_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content)
