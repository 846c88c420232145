"""Constrained decoding at the matcher level, with the embedded model's tokenizer and no model: random walks through
the masks of generated JSON schemas and of forced hermes tool calls end in documents that validate, and a mask never
allows nothing before the grammar is complete."""

import dataclasses
import json
import random
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

VOCABULARY = 49152
STEPS = 200  # a walk still going after this many tokens is dropped, not failed (see `test_most_walks_finish`)
# Keys and enum values that need escaping, or are not ASCII, besides plain ones.
KEYS = st.sampled_from(["a", "b", "id", "long_name", "with space", 'quo"te', "back\\slash", "é", "tab\t", ""])
ENUM_TEXT = st.text(alphabet='ab "\\é\n€', max_size=4)
PATTERNS = ["^[a-z]{1,5}$", "^\\d{3}-\\d{2}$", "^(yes|no|maybe)$", "^[A-Z][a-z]?$", "x[0-9]"]


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    tokenizer: TokenizersBackend
    grammars: Grammars
    end: int
    special: frozenset[int]
    closing: torch.Tensor  # tokens whose text holds `"`, `]` or `}`: they end strings, arrays, objects
    short: torch.Tensor  # tokens of one character at most


@pytest.fixture(scope="module")
def vocabulary() -> Vocabulary:
    """SmolLM2's tokenizer (about 4 s), its Grammars, and which tokens close or are short, for biased walks."""
    file = embedded_model_file()
    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    assert isinstance(tokenizer, TokenizersBackend)
    end = tokenizer.eos_token_id
    assert isinstance(end, int)
    texts = tokenizer.backend_tokenizer.decode_batch([[i] for i in range(VOCABULARY)], skip_special_tokens=False)
    closing = torch.tensor([any(char in text for char in '"]}') for text in texts])
    short = torch.tensor([len(text) <= 1 for text in texts])
    grammars = Grammars(tokenizer.backend_tokenizer, VOCABULARY, [end])
    yield Vocabulary(tokenizer, grammars, end, frozenset(tokenizer.all_special_ids), closing, short)
    grammars.close()


def _leaves() -> st.SearchStrategy[dict[str, Any]]:
    bounds = st.tuples(st.integers(-1000, 1000), st.integers(0, 1000))
    return st.one_of(
        st.just({"type": "boolean"}),
        st.just({"type": "null"}),
        st.just({"type": "integer"}),
        bounds.map(lambda b: {"type": "integer", "minimum": b[0], "maximum": b[0] + b[1]}),
        st.just({"type": "number"}),
        bounds.map(lambda b: {"type": "number", "minimum": b[0] / 4, "maximum": (b[0] + b[1]) / 4}),
        st.just({"type": "string"}),
        st.integers(0, 6).map(lambda n: {"type": "string", "maxLength": n}),
        st.lists(ENUM_TEXT, min_size=1, max_size=4, unique=True).map(lambda values: {"enum": values}),
        st.sampled_from(PATTERNS).map(lambda pattern: {"type": "string", "pattern": pattern}),
    )


@st.composite
def _objects(draw: st.DrawFn, children: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    properties = draw(st.dictionaries(KEYS, children, max_size=3))
    required = draw(st.lists(st.sampled_from(sorted(properties)), unique=True)) if properties else []
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    if draw(st.integers(0, 3)):  # mostly closed; open objects take any key and value
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


def _pick(vocabulary: Vocabulary, allowed: torch.Tensor, rng: random.Random) -> int:
    """A random allowed token: the end half the time it is allowed, else often a closing or a short token."""
    if allowed[vocabulary.end] and rng.random() < 0.5:
        return vocabulary.end
    roll = rng.random()
    for bias, kind in ((0.3, vocabulary.closing), (0.6, vocabulary.short)):
        if roll < bias and (allowed & kind).any():
            allowed = allowed & kind
            break
    candidates = allowed.nonzero()[:, 0]
    return int(candidates[rng.randrange(len(candidates))])


def _walk(vocabulary: Vocabulary, grammar: str, rng: random.Random) -> str | None:
    """The text of a random walk through the grammar's masks to its completion; None past STEPS tokens."""
    constraint = vocabulary.grammars.constraint(grammar)
    ids: list[int] = []
    for _ in range(STEPS):
        masks = vocabulary.grammars.masks([constraint]).result()
        assert masks.shape == (1, VOCABULARY) and masks.dtype == torch.bool
        assert masks[0].any(), f"nothing allowed after {ids}: {constraint.error}"
        token = _pick(vocabulary, masks[0], rng)
        ids.append(token)
        if constraint.advance(token):
            # Special tokens would vanish from the text below: the end is the only one a grammar may allow.
            assert not vocabulary.special & set(ids[:-1]), ids
            assert ids[-1] == vocabulary.end or ids[-1] not in vocabulary.special
            return vocabulary.tokenizer.decode(ids, skip_special_tokens=True)
        assert token != vocabulary.end, "the end token did not complete the grammar"
    return None


@settings(max_examples=60, deadline=None)
@given(schema=SCHEMAS, rng=st.randoms(use_true_random=False))
def test_walks_through_a_schema_grammar_end_in_valid_documents(
    vocabulary: Vocabulary, schema: dict[str, Any], rng: random.Random
) -> None:
    grammar = schema_grammar(schema)
    assert vocabulary.grammars.error(grammar) is None
    texts = [_walk(vocabulary, grammar, rng) for _ in range(3)]
    finished = [text for text in texts if text is not None]
    assert finished, schema
    for text in finished:
        jsonschema.validate(json.loads(text), schema)


@settings(max_examples=30, deadline=None)
@given(parameters=PARAMETERS, other=PARAMETERS, parallel=st.booleans(), rng=st.randoms(use_true_random=False))
def test_walks_through_a_forced_hermes_call_end_in_valid_calls(
    vocabulary: Vocabulary, parameters: dict[str, Any], other: dict[str, Any], parallel: bool, rng: random.Random
) -> None:
    tools = {"get_weather": parameters, "get_time": other}
    grammar = forced_grammar(FORMATS["hermes"], [Tool(name, schema) for name, schema in tools.items()], parallel, {})
    assert vocabulary.grammars.error(grammar) is None
    text = _walk(vocabulary, grammar, rng)
    if text is None:
        return
    parser = ToolCallParser(FORMATS["hermes"])
    pieces = parser.put(text) + parser.flush()
    assert parser.complete
    names = [piece.name for piece in pieces if isinstance(piece, CallStart)]
    assert len(names) == 1 or (parallel and len(names) > 1), text
    assert all(isinstance(piece, CallStart | CallArguments) for piece in pieces), pieces
    for index, name in enumerate(names):
        arguments = "".join(piece.text for piece in pieces if isinstance(piece, CallArguments) and piece.call == index)
        jsonschema.validate(json.loads(arguments), tools[name])


def test_an_invalid_schema_is_an_error_naming_it(vocabulary: Vocabulary) -> None:
    grammar = schema_grammar({"type": "objectx"})
    error = vocabulary.grammars.error(grammar)
    assert error is not None and "objectx" in error
    with pytest.raises(ValueError, match="objectx"):
        vocabulary.grammars.constraint(grammar)
