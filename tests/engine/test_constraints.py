"""Constrained decoding at the matcher level, with the embedded model's tokenizer and no model: random walks through
the masks of generated JSON schemas, and of forced hermes tool calls, end in documents and calls that validate, and
a mask never allows nothing before its grammar is complete."""

import dataclasses
import json
import random
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer, TokenizersBackend

from tokserve.engine.constraints import Grammars
from tokserve.engine.loading import embedded_model_file
from tokserve.server.tool_formats import FORMATS, Tool, forced_grammar, schema_grammar
from tokserve.server.tool_parser import CallArguments, CallStart, ToolCallParser

HERMES = FORMATS["hermes"]
VOCABULARY = 49152
STEPS = 200  # the walks are biased to close as they go (`_pick`): one still going after this many tokens is a bug
WALKS = 3  # walks per grammar, side by side in one batch of masks
# Keys and enum values that need escaping or are not ASCII, beside plain ones; strings are bounded by maxLength, an
# enum or a pattern, or close as the walk goes on (a bare "string", the tail of "^ab", an object without
# additionalProperties: false). No unanchored pattern: a random walk would rarely write what it requires.
KEYS = st.sampled_from(["a", "b", "id", "long_name", "with space", 'quo"te', "back\\slash", "é", "tab\t", ""])
TEXT = st.text(alphabet='ab "\\é\n€', max_size=4)
PATTERNS = ["^[a-z]{1,5}$", "^\\d{3}-\\d{2}$", "^(yes|no|maybe)$", "^[A-Z][a-z]?$", "^ab"]


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    tokenizer: TokenizersBackend
    grammars: Grammars
    end: int
    special: frozenset[int]
    closing: torch.Tensor  # the tokens made of `"`, `]` and `}` only: they end strings, arrays and objects
    short: torch.Tensor  # the tokens of one character


@pytest.fixture(scope="module")
def vocabulary() -> Iterator[Vocabulary]:
    """SmolLM2's tokenizer (about 4 s), its Grammars, and which of its tokens close or are short."""
    file = embedded_model_file()
    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    assert isinstance(tokenizer, TokenizersBackend)  # a GGUF's tokenizer is always the fast one
    end = tokenizer.eos_token_id
    assert isinstance(end, int)
    texts = tokenizer.backend_tokenizer.decode_batch([[i] for i in range(VOCABULARY)], skip_special_tokens=False)
    closing = torch.tensor([bool(text) and set(text) <= set('"]}') for text in texts])
    short = torch.tensor([len(text) == 1 for text in texts])
    grammars = Grammars(tokenizer.backend_tokenizer, VOCABULARY, [end])
    yield Vocabulary(tokenizer, grammars, end, frozenset(tokenizer.all_special_ids), closing, short)
    grammars.close()


def _leaves() -> st.SearchStrategy[dict[str, Any]]:
    bounds = st.tuples(st.integers(-1000, 1000), st.integers(0, 1000))
    return st.one_of(
        st.sampled_from([{"type": "boolean"}, {"type": "null"}, {"type": "integer"}, {"type": "number"}]),
        bounds.map(lambda b: {"type": "integer", "minimum": b[0], "maximum": b[0] + b[1]}),
        bounds.map(lambda b: {"type": "number", "minimum": b[0] / 4, "maximum": (b[0] + b[1]) / 4}),
        st.just({"type": "string"}),
        st.integers(0, 6).map(lambda n: {"type": "string", "maxLength": n}),
        st.lists(TEXT, min_size=1, max_size=4, unique=True).map(lambda values: {"enum": values}),
        st.sampled_from(PATTERNS).map(lambda pattern: {"type": "string", "pattern": pattern}),
    )


@st.composite
def _objects(draw: st.DrawFn, children: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    properties = draw(st.dictionaries(KEYS, children, max_size=3))
    required = draw(st.lists(st.sampled_from(sorted(properties)), unique=True)) if properties else []
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    if draw(st.integers(0, 3)):  # mostly closed: an open object takes any key and any value
        schema["additionalProperties"] = False
    return schema


@st.composite
def _arrays(draw: st.DrawFn, children: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    least = draw(st.integers(0, 2))
    return {"type": "array", "items": draw(children), "minItems": least, "maxItems": least + draw(st.integers(0, 2))}


def _containers(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        _objects(children),
        _arrays(children),
        st.lists(children, min_size=2, max_size=3).map(lambda options: {"anyOf": options}),
    )


SCHEMAS = st.recursive(_leaves(), _containers, max_leaves=6)
PARAMETERS = _objects(st.recursive(_leaves(), _containers, max_leaves=4))


def _pick(vocabulary: Vocabulary, allowed: torch.Tensor, rng: random.Random, progress: float) -> int:
    """A random allowed token: the end half the time it is allowed, else often a closing or a short one; the end
    and closing ones more often as the walk goes on (`progress`, from 0 to 1), so that every walk ends."""
    if allowed[vocabulary.end] and rng.random() < 0.5 + progress:
        return vocabulary.end
    roll = rng.random()
    for bias, kind in ((0.3 + progress, vocabulary.closing), (0.6 + progress, vocabulary.short)):
        if roll < bias and (allowed & kind).any():
            allowed = allowed & kind
            break
    candidates = allowed.nonzero()[:, 0]
    return int(candidates[rng.randrange(len(candidates))])


def _walks(vocabulary: Vocabulary, grammar: str, rng: random.Random) -> list[str]:
    """The texts of WALKS random walks through the grammar's masks to its completion: the walks are the rows of one
    batch of masks, as a step's constrained requests are, each at its own place in the grammar."""
    constraints = [vocabulary.grammars.constraint(grammar) for _ in range(WALKS)]
    walked: list[list[int]] = [[] for _ in range(WALKS)]
    going = list(range(WALKS))
    for step in range(STEPS):
        masks = vocabulary.grammars.masks([constraints[walk] for walk in going]).result()
        assert masks.shape == (len(going), VOCABULARY) and masks.dtype == torch.bool
        for walk, allowed in zip(list(going), masks, strict=True):
            ids = walked[walk]
            assert allowed.any(), f"nothing allowed after {ids}: {constraints[walk].error}"
            token = _pick(vocabulary, allowed, rng, step / STEPS)
            ids.append(token)
            if constraints[walk].advance(token):
                going.remove(walk)
            else:
                assert token != vocabulary.end, f"the end did not complete the grammar after {ids}"
        if not going:
            # Special tokens vanish from the decoded text: the end, last, is the only one a grammar may allow.
            assert not any(vocabulary.special & {*tokens[:-1]} for tokens in walked), walked
            return [_text(vocabulary, tokens) for tokens in walked]
    raise AssertionError(f"unfinished after {STEPS} tokens: {[walked[walk] for walk in going]}")


def _text(vocabulary: Vocabulary, ids: list[int]) -> str:
    text = vocabulary.tokenizer.decode(ids, skip_special_tokens=True)
    assert isinstance(text, str)  # one list of ids: one string
    return text


@settings(max_examples=100, deadline=None)
@given(schema=SCHEMAS, rng=st.randoms(use_true_random=False))
def test_walks_through_a_schema_grammar_end_in_valid_documents(
    vocabulary: Vocabulary, schema: dict[str, Any], rng: random.Random
) -> None:
    grammar = schema_grammar(schema)
    assert vocabulary.grammars.error(grammar) is None
    for text in _walks(vocabulary, grammar, rng):
        jsonschema.validate(json.loads(text), schema)


@settings(max_examples=40, deadline=None)
@given(weather=PARAMETERS, time=PARAMETERS, parallel=st.booleans(), rng=st.randoms(use_true_random=False))
def test_walks_through_a_forced_hermes_call_end_in_valid_calls(
    vocabulary: Vocabulary, weather: dict[str, Any], time: dict[str, Any], parallel: bool, rng: random.Random
) -> None:
    """Through the parser, as the server reads them: only calls, one unless parallel, each of a tool, whose
    arguments validate against its parameters."""
    tools = {"get_weather": weather, "get_time": time}
    grammar = forced_grammar(HERMES, [Tool(name, schema) for name, schema in tools.items()], parallel, {})
    assert vocabulary.grammars.error(grammar) is None
    for text in _walks(vocabulary, grammar, rng):
        parser = ToolCallParser(HERMES)
        pieces = parser.put(text) + parser.flush()
        assert parser.complete and all(isinstance(piece, CallStart | CallArguments) for piece in pieces), pieces
        names = [piece.name for piece in pieces if isinstance(piece, CallStart)]
        assert len(names) == 1 or (parallel and len(names) > 1), text
        for call, name in enumerate(names):
            arguments = [piece.text for piece in pieces if isinstance(piece, CallArguments) and piece.call == call]
            jsonschema.validate(json.loads("".join(arguments)), tools[name])


def test_an_invalid_schema_is_an_error_naming_it(vocabulary: Vocabulary) -> None:
    grammar = schema_grammar({"type": "objectx"})
    error = vocabulary.grammars.error(grammar)
    assert error is not None and "objectx" in error
    with pytest.raises(ValueError, match="objectx"):
        vocabulary.grammars.constraint(grammar)
