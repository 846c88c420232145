"""How a model writes tool calls, and the llguidance grammars that make it write valid ones.

Pure text: a grammar is a Lark string in llguidance's dialect (docs/syntax.md of llguidance), compiled by the engine.
No llguidance, torch or fastapi here. Each call's JSON is an embedded schema (`%json {...}`) whose properties are
`name` then the arguments: llguidance writes properties in schema order, so the name streams before the arguments.

llguidance's Lark, as 1.9.1 reads it: a special token by id is `<[ID]>` and is allowed in rules, not in terminals;
`[lazy]` is accepted on lowercase rules only (on an uppercase terminal it is a syntax error); a lazy lexeme ends at
the first match, so text after a trigger is bound to the call. The JSON spacing is fixed by `x-guidance` options.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# The spacing of Python's json.dumps and Jinja's tojson, with which every chat template renders its tool calls, so a
# model meets its training text; fixed, because free whitespace lets small models loop on newlines.
_JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    # Keywords llguidance does not implement (uniqueItems, not, ...) widen the schema instead of failing the
    # request: clients send their framework's schemas as they are.
    "lenient": True,
}
# Where schemas keep their `$ref` targets: moved to the call schema's root, where `#/$defs/...` now resolves.
_DEFINITIONS = ("$defs", "definitions")
_TEXT = r"/(.|\n)*/"


@dataclass(frozen=True, slots=True)
class ToolFormat:
    """How one family of models writes its calls.

    `per_call`: each call is `start opening JSON closing end`, calls joined by `separator`; otherwise the whole
    list is `start opening JSON separator JSON ... closing end`. `start` and `end` are the parts that may be special
    tokens. `leading_only`: calls are recognised only at the very start of the output, and `start` is optional.
    """

    name: str
    start: str
    end: str
    opening: str
    closing: str
    separator: str
    per_call: bool
    leading_only: bool
    arguments_key: str


FORMATS: Mapping[str, ToolFormat] = MappingProxyType(
    {
        format.name: format
        for format in (
            # Hermes 2 Pro, Qwen 2.5/3, and the fallback for templates without tool support
            ToolFormat("hermes", "<tool_call>", "</tool_call>", "\n", "\n", "\n", True, False, "arguments"),
            # Llama 3.1/3.2 JSON tool calling: note `parameters`
            ToolFormat("llama3_json", "<|python_tag|>", "", "", "", "; ", False, True, "parameters"),
            # Mistral v3 tokenizer: `[TOOL_CALLS]` is a special token; the list ends at end of sequence
            ToolFormat("mistral", "[TOOL_CALLS]", "", "[", "]", ", ", False, False, "arguments"),
        )
    }
)


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; `parameters` is the JSON schema of its arguments."""

    name: str
    parameters: dict[str, Any]


def forced_grammar(format: ToolFormat, tools: Sequence[Tool], parallel: bool, special_ids: Mapping[str, int]) -> str:
    """A grammar whose outputs are exactly one call of one of `tools` (one or more calls if `parallel`)."""
    start = _piece(format.start, special_ids)
    if format.leading_only:
        start = f"({start})?"
    if format.per_call:
        top = "call" + (f" ({_literal(format.separator)} call)*" if parallel else "")
        return _grammar(format, tools, parallel, special_ids, top, start)
    return _grammar(format, tools, parallel, special_ids, "calls", start)


def lazy_grammar(
    format: ToolFormat, tools: Sequence[Tool], parallel: bool, special_ids: Mapping[str, int]
) -> str | None:
    """A grammar of free text in which a call, once its start marker appears, must be a valid call of `tools`.

    None for `leading_only` formats (llama3_json): they have no marker to trigger on, a call is a bare `{` at the
    start, so "auto" output there is parsed but not constrained.
    """
    if format.leading_only:
        return None
    if format.start in special_ids:
        # Free text cannot contain a special token: the text lexeme ends where the token comes.
        trigger = f"trigger: TEXT {_piece(format.start, special_ids)}"
    else:
        trigger = f"trigger[lazy]: TEXT {_literal(format.start)}"
    top = "TEXT | calls"  # a list format's text ends where its list begins
    if format.per_call:
        top = "call* TEXT" if parallel else "TEXT | call"
    return _grammar(format, tools, parallel, special_ids, top, "trigger") + f"{trigger}\nTEXT: {_TEXT}\n"


def schema_grammar(schema: dict[str, Any]) -> str:
    """A grammar whose outputs are one JSON document of `schema` (response_format json_object or json_schema)."""
    return f"start: %json {json.dumps({**schema, 'x-guidance': _JSON_OPTIONS})}\n"


def _grammar(
    format: ToolFormat, tools: Sequence[Tool], parallel: bool, special_ids: Mapping[str, int], top: str, start: str
) -> str:
    """The rules every tool grammar shares: `top` is the start rule's body, `start` the marker's expression."""
    if not tools:
        raise ValueError("a tool grammar needs at least one tool")
    opening, closing = _literal(format.opening), _literal(format.closing)
    end = _piece(format.end, special_ids)
    if format.per_call:
        body = f"call: {start} {opening} tool {closing} {end}"
    else:
        more = f" ({_literal(format.separator)} tool)*" if parallel else ""
        body = f"calls: {start} {opening} tool{more} {closing} {end}"
    lines = [f"start: {top}", " ".join(body.split()), "tool: " + " | ".join(f"tool_{i}" for i in range(len(tools)))]
    lines += [f"tool_{i}: %json {json.dumps(_call_schema(format, tool))}" for i, tool in enumerate(tools)]
    return "\n".join(lines) + "\n"


def _call_schema(format: ToolFormat, tool: Tool) -> dict[str, Any]:
    """`{"name": <const>, ARGUMENTS_KEY: <parameters>}`, name first, nothing else."""
    parameters = {key: value for key, value in tool.parameters.items() if key not in _DEFINITIONS}
    definitions = {key: tool.parameters[key] for key in _DEFINITIONS if key in tool.parameters}
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, format.arguments_key: parameters},
        "required": ["name", format.arguments_key],
        "additionalProperties": False,
        **definitions,
        "x-guidance": _JSON_OPTIONS,
    }


def _piece(text: str, special_ids: Mapping[str, int]) -> str:
    """A marker as its special token where the tokenizer has one, else as text."""
    if text in special_ids:
        return f"<[{special_ids[text]}]>"
    return _literal(text)


def _literal(text: str) -> str:
    """A Lark string literal; nothing for the empty string, which Lark's strings cannot be."""
    return json.dumps(text) if text else ""
