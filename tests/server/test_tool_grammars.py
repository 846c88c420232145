"""The tool and response-format grammars, compiled by llguidance against the embedded model's tokenizer: what each
accepts and refuses, special-token markers, and a forced call read back by the parser."""

import copy
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import llguidance
import llguidance.hf
import pytest
from transformers import AutoTokenizer, TokenizersBackend

from tokserve.engine.loading import embedded_model_file
from tokserve.server.tool_formats import FORMATS, Tool, ToolFormat, forced_grammar, lazy_grammar, schema_grammar
from tokserve.server.tool_parser import CallArguments, CallStart, TextPiece, ToolCallParser

HERMES, LLAMA, MISTRAL = FORMATS["hermes"], FORMATS["llama3_json"], FORMATS["mistral"]
WEATHER = Tool("get_weather", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
TIME = Tool("get_time", {"type": "object", "properties": {}})
NO_SPECIAL: dict[str, int] = {}
PARIS = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
NOW = '{"name": "get_time", "arguments": {}}'


@dataclasses.dataclass(frozen=True)
class Tokenizers:
    hf: TokenizersBackend
    ll: llguidance.LLTokenizer


@pytest.fixture(scope="module")
def tokenizers() -> Tokenizers:
    """SmolLM2's tokenizer, as transformers and llguidance see it (about 4 s)."""
    file = embedded_model_file()
    hf = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    assert isinstance(hf, TokenizersBackend)  # a GGUF's tokenizer is always the fast one
    return Tokenizers(hf, llguidance.hf.from_tokenizer(hf, n_vocab=49152, eos_token=hf.eos_token_id))


def accepts(tokenizers: Tokenizers, grammar: str, text: str = "", tokens: Sequence[int] | None = None) -> bool:
    """Whether `grammar` allows exactly `text` (or `tokens`), to its end."""
    assert llguidance.LLMatcher.validate_grammar(grammar, tokenizers.ll) == ""
    matcher = llguidance.LLMatcher(tokenizers.ll, grammar, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    ids = list(tokens) if tokens is not None else tokenizers.hf.encode(text, add_special_tokens=False)
    return matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()


def forced_prefix(tokenizers: Tokenizers, grammar: str) -> bytes:
    """What the grammar writes before the model has any choice."""
    return bytes(llguidance.LLMatcher(tokenizers.ll, grammar, log_level=0).compute_ff_bytes())


@pytest.mark.parametrize(
    ("format", "prefix"),
    [
        (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "'),
        (MISTRAL, '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "'),
        (LLAMA, ""),  # <|python_tag|> is optional: the model chooses
    ],
)
def test_a_forced_call_writes_its_markup_and_name_first(
    tokenizers: Tokenizers, format: ToolFormat, prefix: str
) -> None:
    assert forced_prefix(tokenizers, forced_grammar(format, [WEATHER], False, NO_SPECIAL)) == prefix.encode()


@pytest.mark.parametrize(
    ("text", "accepted"),
    [
        (f"<tool_call>\n{PARIS}\n</tool_call>", True),
        (f"<tool_call>\n{NOW}\n</tool_call>", True),
        (f"<tool_call>\n{PARIS}\n</tool_call>\n<tool_call>\n{NOW}\n</tool_call>", False),  # not parallel
        ('<tool_call>\n{"name":"get_weather","arguments":{"city":"Paris"}}\n</tool_call>', False),  # spacing
        ('<tool_call>\n{"name": "get_weather",  "arguments": {"city": "Paris"}}\n</tool_call>', False),
        ('<tool_call>\n{"arguments": {"city": "Paris"}, "name": "get_weather"}\n</tool_call>', False),  # order
        ('<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>', False),  # required city
        ('<tool_call>\n{"name": "get_news", "arguments": {}}\n</tool_call>', False),  # no such tool
        ('<tool_call>\n{"name": "get_time", "arguments": {}, "id": 1}\n</tool_call>', False),
        (f"Sure. <tool_call>\n{PARIS}\n</tool_call>", False),  # no text when a call is required
        (f"<tool_call>\n{PARIS}\n", False),
    ],
)
def test_hermes_forced(tokenizers: Tokenizers, text: str, accepted: bool) -> None:
    assert accepts(tokenizers, forced_grammar(HERMES, [WEATHER, TIME], False, NO_SPECIAL), text) is accepted


def test_parallel_allows_several_calls(tokenizers: Tokenizers) -> None:
    hermes = forced_grammar(HERMES, [WEATHER, TIME], True, NO_SPECIAL)
    assert accepts(tokenizers, hermes, f"<tool_call>\n{PARIS}\n</tool_call>\n<tool_call>\n{NOW}\n</tool_call>")
    assert accepts(tokenizers, hermes, f"<tool_call>\n{NOW}\n</tool_call>")
    mistral = forced_grammar(MISTRAL, [WEATHER, TIME], True, NO_SPECIAL)
    assert accepts(tokenizers, mistral, f"[TOOL_CALLS][{PARIS}, {NOW}]")
    assert not accepts(tokenizers, mistral, f"[TOOL_CALLS][{PARIS},{NOW}]")
    assert not accepts(
        tokenizers, forced_grammar(MISTRAL, [WEATHER, TIME], False, NO_SPECIAL), f"[TOOL_CALLS][{PARIS}, {NOW}]"
    )


def test_llama3_json_forced(tokenizers: Tokenizers) -> None:
    one = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    two = '{"name": "get_time", "parameters": {}}'
    grammar = forced_grammar(LLAMA, [WEATHER, TIME], True, NO_SPECIAL)
    assert accepts(tokenizers, grammar, one)
    assert accepts(tokenizers, grammar, f"<|python_tag|>{one}; {two}")
    assert not accepts(tokenizers, grammar, PARIS)  # `arguments`: llama writes `parameters`
    assert not accepts(tokenizers, grammar, f"{one};{two}")


def test_a_special_token_marker_is_matched_as_that_token(tokenizers: Tokenizers) -> None:
    """SmolLM2 has no tool tokens: <|im_start|> (id 1) stands in for one."""
    format = dataclasses.replace(HERMES, start="<|im_start|>")
    body = f"\n{PARIS}\n</tool_call>"
    grammar = forced_grammar(format, [WEATHER], False, {"<|im_start|>": 1})
    assert "<[1]>" in grammar
    assert accepts(tokenizers, grammar, tokens=[1, *tokenizers.hf.encode(body, add_special_tokens=False)])
    spelled = tokenizers.ll.greedy_tokenize("<|im_start|>" + body)  # the same characters, as text tokens
    assert not accepts(tokenizers, grammar, tokens=spelled)
    assert accepts(tokenizers, forced_grammar(format, [WEATHER], False, NO_SPECIAL), tokens=spelled)


def test_mistral_uses_its_token_where_the_tokenizer_has_it(tokenizers: Tokenizers) -> None:
    calls = f"[{PARIS}]"
    token = forced_grammar(MISTRAL, [WEATHER], False, {"[TOOL_CALLS]": 1})
    assert accepts(tokenizers, token, tokens=[1, *tokenizers.hf.encode(calls, add_special_tokens=False)])
    assert not accepts(tokenizers, token, "[TOOL_CALLS]" + calls)
    assert accepts(tokenizers, forced_grammar(MISTRAL, [WEATHER], False, NO_SPECIAL), "[TOOL_CALLS]" + calls)


@pytest.mark.parametrize(
    ("text", "accepted"),
    [
        ("The weather is fine, no call needed.", True),
        ("", True),
        ("A <tool_ca ll> is not a marker.", True),
        (f"Let me check.\n<tool_call>\n{PARIS}\n</tool_call>", True),
        (f"<tool_call>\n{PARIS}\n</tool_call>\n<tool_call>\n{NOW}\n</tool_call>", True),
        ("Let me check.\n<tool_call>\nnot json", False),
        ('<tool_call>\n{"name": "get_news", "arguments": {}}\n</tool_call>', False),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": 3}}\n</tool_call>', False),
    ],
)
def test_hermes_lazy(tokenizers: Tokenizers, text: str, accepted: bool) -> None:
    grammar = lazy_grammar(HERMES, [WEATHER, TIME], True, NO_SPECIAL)
    assert grammar is not None
    assert accepts(tokenizers, grammar, text) is accepted


def test_lazy_without_parallel_ends_after_one_call(tokenizers: Tokenizers) -> None:
    grammar = lazy_grammar(HERMES, [WEATHER, TIME], False, NO_SPECIAL)
    assert grammar is not None
    assert accepts(tokenizers, grammar, f"Checking. <tool_call>\n{PARIS}\n</tool_call>")
    assert not accepts(tokenizers, grammar, f"<tool_call>\n{PARIS}\n</tool_call>\n<tool_call>\n{NOW}\n</tool_call>")


def test_lazy_triggers_on_a_special_token(tokenizers: Tokenizers) -> None:
    grammar = lazy_grammar(MISTRAL, [WEATHER], False, {"[TOOL_CALLS]": 1})
    assert grammar is not None
    encode = tokenizers.hf.encode
    assert accepts(tokenizers, grammar, "Free text with [TOOL_CALLS] spelled out.")
    assert accepts(tokenizers, grammar, tokens=[*encode("Sure. "), 1, *encode(f"[{PARIS}]")])
    assert not accepts(tokenizers, grammar, tokens=[*encode("Sure. "), 1, *encode("hello")])
    per_call = lazy_grammar(dataclasses.replace(HERMES, start="<|im_start|>"), [WEATHER], True, {"<|im_start|>": 1})
    assert per_call is not None
    call = [1, *encode(f"\n{PARIS}\n</tool_call>")]
    assert accepts(tokenizers, per_call, tokens=[*encode("Sure. "), *call, *encode("\n"), *call, *encode(" Done.")])
    assert not accepts(tokenizers, per_call, tokens=[*encode("Sure. "), 1, *encode("\nnot json")])


def test_llama3_json_auto_is_not_constrained() -> None:
    assert lazy_grammar(LLAMA, [WEATHER], True, NO_SPECIAL) is None


def test_schema_grammar(tokenizers: Tokenizers) -> None:
    any_object = schema_grammar({"type": "object"})
    assert accepts(tokenizers, any_object, '{"a": [1, {"b": null}]}')
    assert not accepts(tokenizers, any_object, '{"a":1}')
    assert not accepts(tokenizers, any_object, '{\n  "a": 1\n}')
    assert not accepts(tokenizers, any_object, "[1]")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert accepts(tokenizers, schema_grammar(schema), '{"n": 3}')
    assert not accepts(tokenizers, schema_grammar(schema), '{"n": "3"}')


def test_definitions_and_the_callers_dicts(tokenizers: Tokenizers) -> None:
    """`$ref`s into the parameters' `$defs` still resolve inside the call schema; nothing given is changed."""
    parameters: dict[str, Any] = {
        "type": "object",
        "properties": {"unit": {"$ref": "#/$defs/Unit"}, "tags": {"type": "array", "uniqueItems": True}},
        "required": ["unit"],
        "$defs": {"Unit": {"enum": ["C", "F"]}},
    }
    tool = Tool("convert", parameters)
    before = copy.deepcopy(parameters)
    grammar = forced_grammar(HERMES, [tool], False, NO_SPECIAL)
    schema_grammar(parameters)
    assert parameters == before
    assert accepts(tokenizers, grammar, '<tool_call>\n{"name": "convert", "arguments": {"unit": "C"}}\n</tool_call>')
    assert not accepts(
        tokenizers, grammar, '<tool_call>\n{"name": "convert", "arguments": {"unit": "K"}}\n</tool_call>'
    )


def test_no_tools_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        forced_grammar(HERMES, [], False, NO_SPECIAL)


@pytest.mark.parametrize(
    ("format", "text"),
    [
        (HERMES, f"<tool_call>\n{PARIS}\n</tool_call>\n<tool_call>\n{NOW}\n</tool_call>"),
        (MISTRAL, f"[TOOL_CALLS][{PARIS}, {NOW}]"),
        (LLAMA, f"<|python_tag|>{PARIS.replace('arguments', 'parameters')}; {NOW.replace('arguments', 'parameters')}"),
    ],
)
def test_what_a_forced_grammar_accepts_the_parser_reads_back(
    tokenizers: Tokenizers, format: ToolFormat, text: str
) -> None:
    assert accepts(tokenizers, forced_grammar(format, [WEATHER, TIME], True, NO_SPECIAL), text)
    parser = ToolCallParser(format)
    pieces = [piece for token in tokenizers.hf.encode(text) for piece in parser.put(tokenizers.ll.decode_str([token]))]
    pieces += parser.flush()
    assert not any(isinstance(piece, TextPiece) for piece in pieces)
    names = [piece.name for piece in pieces if isinstance(piece, CallStart)]
    arguments = ["".join(p.text for p in pieces if isinstance(p, CallArguments) and p.call == i) for i in range(2)]
    assert names == ["get_weather", "get_time"]
    assert [json.loads(text) for text in arguments] == [{"city": "Paris"}, {}]
    assert parser.complete
