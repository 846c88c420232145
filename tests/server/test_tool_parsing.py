"""The tool-call parser and the thinking split, pure: every format, text around calls, broken calls back as text,
and the same result for every chunking of the output."""

import itertools
import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokserve.server.reasoning import ReasoningSplitter
from tokserve.server.tool_formats import FORMATS, ToolFormat
from tokserve.server.tool_parser import CallArguments, CallStart, ParsedPiece, TextPiece, ToolCallParser

HERMES, LLAMA, MISTRAL = FORMATS["hermes"], FORMATS["llama3_json"], FORMATS["mistral"]


def joined(pieces: Sequence[ParsedPiece]) -> list[ParsedPiece]:
    """Adjacent text, and adjacent arguments of one call, joined: what any chunking must agree on."""
    out: list[ParsedPiece] = []
    for piece in pieces:
        last = out[-1] if out else None
        if isinstance(piece, TextPiece) and isinstance(last, TextPiece):
            out[-1] = TextPiece(last.text + piece.text)
        elif isinstance(piece, CallArguments) and isinstance(last, CallArguments) and last.call == piece.call:
            out[-1] = CallArguments(piece.call, last.text + piece.text)
        else:
            out.append(piece)
    return out


def parse(format: ToolFormat, chunks: Sequence[str]) -> tuple[list[ParsedPiece], ToolCallParser]:
    parser = ToolCallParser(format)
    pieces = [piece for chunk in chunks for piece in parser.put(chunk)]
    return joined(pieces + parser.flush()), parser


def cut(text: str, cuts: Sequence[int]) -> list[str]:
    bounds = [0, *sorted(cuts), len(text)]
    return [text[start:end] for start, end in itertools.pairwise(bounds)]


def chunkings(text: str) -> list[list[str]]:
    """All at once, a character at a time, and a few fixed splits."""
    return [[text], list(text), cut(text, range(0, len(text), 3)), cut(text, range(0, len(text), 7))]


def call(name: str, arguments: str, index: int = 0) -> list[ParsedPiece]:
    return [CallStart(index, name), CallArguments(index, arguments)]


WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
HERMES_CASES: list[tuple[str, list[ParsedPiece], bool]] = [
    ("Just text, no <tool call.", [TextPiece("Just text, no <tool call.")], True),
    (f"<tool_call>\n{WEATHER}\n</tool_call>", call("get_weather", '{"city": "Paris"}'), True),
    (
        f"Let me check.\n<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>\n"
        '{"arguments": {"q": "a\\"}{"}, "name": "search"}\n</tool_call>\n',
        [
            TextPiece("Let me check.\n"),
            *call("get_weather", '{"city": "Paris"}'),
            *call("search", '{"q": "a\\"}{"}', 1),
        ],
        True,
    ),
    (
        f"  <tool_call>{WEATHER}</tool_call> Done.",
        [*call("get_weather", '{"city": "Paris"}'), TextPiece(" Done.")],
        True,
    ),
    ("a <tool_call>\nnot json</tool_call> b", [TextPiece("a <tool_call>\nnot json</tool_call> b")], True),
    ('<tool_call>\n{"nom": "x"}\n</tool_call>', [TextPiece('<tool_call>\n{"nom": "x"}\n</tool_call>')], True),
    ('<tool_call>\n{"name": 3}', [TextPiece('<tool_call>\n{"name": 3}')], True),
    ('<tool_call>\n{"name": "f", "arguments": {"a": 1', call("f", '{"a": 1'), False),
    ('<tool_call>\n{"name": "f", "arguments": {}} oops', [*call("f", "{}"), TextPiece(" oops")], True),
    ('<tool_call>\n{"name": "f"}\n</tool_call>', [CallStart(0, "f")], True),
    ('<tool_call>\n{"name": "f", "arguments": {}, "x": [1, "]"]}\n</tool_call>', call("f", "{}"), True),
    ('<tool_call>\n{"name": "f", "arguments": {"a": 1}] x', [*call("f", '{"a": 1}'), TextPiece("] x")], False),
]
LLAMA_CASES: list[tuple[str, list[ParsedPiece], bool]] = [
    ('{"name": "f", "parameters": {"a": [1, {"b": "}"}]}}', call("f", '{"a": [1, {"b": "}"}]}'), True),
    (
        ' <|python_tag|>{"name": "f", "parameters": {}}; {"parameters": null, "name": "g"}',
        [*call("f", "{}"), *call("g", "null", 1)],
        True,
    ),
    ('{"name": "f", "arguments": {}}', [CallStart(0, "f")], True),
    ('{"nome": "f"} hi', [TextPiece('{"nome": "f"} hi')], True),
    ('Hello {"name": "f", "parameters": {}}', [TextPiece('Hello {"name": "f", "parameters": {}}')], True),
    ("<|python_tag|>print(1)", [TextPiece("<|python_tag|>print(1)")], True),
    ("  ", [TextPiece("  ")], True),
    ('{"name": "f", "parameters": {}} and more', [*call("f", "{}"), TextPiece(" and more")], True),
]
MISTRAL_CASES: list[tuple[str, list[ParsedPiece], bool]] = [
    (
        '[TOOL_CALLS][{"name": "f", "arguments": {}}, {"name": "g", "arguments": {"x": 1}}]',
        [*call("f", "{}"), *call("g", '{"x": 1}', 1)],
        True,
    ),
    (
        'Sure. [TOOL_CALLS] [ {"name": "f", "arguments": 12 } , oops',
        [TextPiece("Sure. "), *call("f", "12"), TextPiece(" , oops")],
        True,
    ),
    ("[TOOL_CALLS]hello", [TextPiece("[TOOL_CALLS]hello")], True),
    ("[TOOL_CALLS", [TextPiece("[TOOL_CALLS")], True),
    ('[TOOL_CALLS][{"name": "f", "arguments": {"a": "[TOOL_CALLS]"}}]', call("f", '{"a": "[TOOL_CALLS]"}'), True),
]


@pytest.mark.parametrize(
    ("format", "text", "expected", "complete"),
    [(HERMES, *case) for case in HERMES_CASES]
    + [(LLAMA, *case) for case in LLAMA_CASES]
    + [(MISTRAL, *case) for case in MISTRAL_CASES],
)
def test_parser_examples_in_every_chunking(
    format: ToolFormat, text: str, expected: list[ParsedPiece], complete: bool
) -> None:
    for chunks in chunkings(text):
        pieces, parser = parse(format, chunks)
        assert pieces == expected, chunks
        assert parser.complete is complete
        assert parser.calls == sum(isinstance(piece, CallStart) for piece in expected)


def test_text_comes_out_early_holding_back_only_a_marker_start() -> None:
    parser = ToolCallParser(HERMES)
    assert parser.put("Hello <to") == [TextPiece("Hello ")]
    assert parser.put("ol") == []
    assert parser.put("box>") == [TextPiece("<toolbox>")]
    assert parser.put(" <tool_call>\n") == [TextPiece(" ")]
    assert parser.put('{"name": "f", "argu') == [CallStart(0, "f")]
    assert parser.put('ments": {"a"') == [CallArguments(0, '{"a"')]
    assert not parser.complete
    assert parser.put(": 1}}\n</tool_call>") == [CallArguments(0, ": 1}")]
    assert parser.complete
    assert parser.put("\n") == []
    assert parser.flush() == []


def test_arguments_before_the_name_wait_for_it() -> None:
    parser = ToolCallParser(MISTRAL)
    assert parser.put('[TOOL_CALLS][{"arguments": {"a": 1}, ') == []
    assert parser.put('"name": "f"}') == [CallStart(0, "f"), CallArguments(0, '{"a": 1}')]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
ARGUMENTS = st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4)
CALLS = st.lists(st.tuples(st.text(min_size=1, max_size=10), ARGUMENTS), min_size=1, max_size=3)
# Text that plays with the markers' characters without writing one.
TEXT = st.text(alphabet="<tool_call>[TOOL_CALLS]{} \né", max_size=30).filter(
    lambda text: "<tool_call>" not in text and "[TOOL_CALLS]" not in text
)
JSON_STYLES = [{}, {"separators": (",", ":")}, {"indent": 1}, {"ensure_ascii": False}]


def written(format: ToolFormat, calls: list[tuple[str, str]], text: str, marked: bool) -> str:
    """The output a model writes: `text` (not for llama3_json), then `calls` (name, arguments JSON) in `format`."""
    objects = [f'{{"name": {json.dumps(name)}, "{format.arguments_key}": {arguments}}}' for name, arguments in calls]
    start = format.start if marked or not format.leading_only else ""
    if format.per_call:
        wrapped = [f"{start}{format.opening}{obj}{format.closing}{format.end}" for obj in objects]
        return text + format.separator.join(wrapped)
    prefix = "" if format.leading_only else text
    return f"{prefix}{start}{format.opening}{format.separator.join(objects)}{format.closing}{format.end}"


@settings(max_examples=300, deadline=None)
@given(
    format=st.sampled_from([HERMES, LLAMA, MISTRAL]),
    calls=CALLS,
    text=TEXT,
    marked=st.booleans(),
    style=st.sampled_from(JSON_STYLES),
    data=st.data(),
)
def test_any_chunking_gives_the_calls_back_as_written(
    format: ToolFormat,
    calls: list[tuple[str, dict[str, Any]]],
    text: str,
    marked: bool,
    style: dict[str, Any],
    data: st.DataObject,
) -> None:
    raw = [(name, json.dumps(arguments, **style)) for name, arguments in calls]
    output = written(format, raw, text, marked)
    cuts = data.draw(st.lists(st.integers(0, len(output)), max_size=len(output)), label="cuts")
    pieces, parser = parse(format, cut(output, cuts))

    expected_text = "" if format.leading_only or text.isspace() else text
    expected: list[ParsedPiece] = [TextPiece(expected_text)] if expected_text else []
    for index, (name, arguments) in enumerate(raw):
        expected += call(name, arguments, index)
    assert pieces == expected
    assert parser.calls == len(calls) and parser.complete
    assert [json.loads(piece.text) for piece in pieces if isinstance(piece, CallArguments)] == [a for _, a in calls]


@settings(max_examples=300, deadline=None)
@given(
    format=st.sampled_from([HERMES, LLAMA, MISTRAL]),
    output=st.text(alphabet='<tool_call>[TOOL_CALLS]<|python_tag|>{}"\\:;, \nnamearguments', max_size=80),
    data=st.data(),
)
def test_any_chunking_of_any_output_gives_the_same_pieces(format: ToolFormat, output: str, data: st.DataObject) -> None:
    whole, _ = parse(format, [output])
    cuts = data.draw(st.lists(st.integers(0, len(output)), max_size=len(output)), label="cuts")
    assert parse(format, cut(output, cuts))[0] == whole
    if not any(isinstance(piece, CallStart) for piece in whole):
        assert "".join(piece.text for piece in whole if isinstance(piece, TextPiece)) == output


# --- the thinking split ---------------------------------------------------------------------------------------

REASONING_CASES: list[tuple[str, bool, list[tuple[bool, str]]]] = [
    ("<think>\nhmm\n</think>\n\nAnswer", False, [(True, "\nhmm\n"), (False, "Answer")]),
    ("  <think>a</think>b\n", False, [(True, "a"), (False, "b\n")]),
    ("<think>a</think>\n\n", False, [(True, "a")]),
    ("<think>a</think> b", False, [(True, "a"), (False, " b")]),
    ("<thin", False, [(False, "<thin")]),
    ("Hello <think>x</think>", False, [(False, "Hello <think>x</think>")]),
    ("  ", False, [(False, "  ")]),
    ("still thinking </thi", True, [(True, "still thinking </thi")]),
    ("x</think>\n\ny", True, [(True, "x"), (False, "y")]),
    ("</think>y</think>", True, [(False, "y</think>")]),
    ("<think>a<think>b</think>c", False, [(True, "a<think>b"), (False, "c")]),
]


def split(chunks: Sequence[str], thinking: bool) -> list[tuple[bool, str]]:
    splitter = ReasoningSplitter(thinking=thinking)
    out: list[tuple[bool, str]] = []
    for piece in [p for chunk in chunks for p in splitter.put(chunk)] + splitter.flush():
        assert piece[1], "no empty pieces"
        if out and out[-1][0] == piece[0]:
            out[-1] = (piece[0], out[-1][1] + piece[1])
        else:
            out.append(piece)
    return out


@pytest.mark.parametrize(("text", "thinking", "expected"), REASONING_CASES)
def test_reasoning_examples_in_every_chunking(text: str, thinking: bool, expected: list[tuple[bool, str]]) -> None:
    for chunks in chunkings(text):
        assert split(chunks, thinking) == expected, chunks


def test_reasoning_holds_back_only_a_marker_start() -> None:
    splitter = ReasoningSplitter()
    assert splitter.put(" <th") == []
    assert not splitter.reasoning
    assert splitter.put("ink>Let me see</") == [(True, "Let me see")]
    assert splitter.reasoning
    assert splitter.put("b> ok</think>\n") == [(True, "</b> ok")]
    assert not splitter.reasoning
    assert splitter.put("\nYes") == [(False, "Yes")]


def test_reasoning_markers_are_configurable() -> None:
    splitter = ReasoningSplitter(start="<|begin_of_thought|>", end="<|end_of_thought|>")
    assert splitter.put("<|begin_of_thought|>x<|end_of_thought|>\ny") + splitter.flush() == [(True, "x"), (False, "y")]


@settings(max_examples=300, deadline=None)
@given(
    output=st.text(alphabet="<think></think> \na", max_size=40),
    thinking=st.booleans(),
    data=st.data(),
)
def test_any_chunking_splits_the_same(output: str, thinking: bool, data: st.DataObject) -> None:
    whole = split([output], thinking)
    cuts = data.draw(st.lists(st.integers(0, len(output)), max_size=len(output)), label="cuts")
    assert split(cut(output, cuts), thinking) == whole
    if not thinking and not output.lstrip().startswith("<think>"):
        assert whole == ([(False, output)] if output else [])
