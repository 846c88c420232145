"""StreamBuffer against DESIGN.md's "The buffer stage": seeds, oracles over random chunkings, errors, after-stop."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokserve.buffer import StreamBuffer

# The seed document's examples (shared/seeds/004_70789c0c9e7cd5ec.txt).
SEED_FRAGMENTS = [
    "He", "llo", " ", "t", "h", "ere", "!<", "N", "L>m", "y ", "nam", "e", " ", "is", " tokfl", "ow.",
    "<", "N", "L>N", "ice", " to ", "me", "et you.",
]  # fmt: skip
SEED_CUMULATIVE = [
    "は", "はい", "はい、", "はい、こちら", "はい、こちらを", "はい、こちらをお", "はい、こちらをお勧め",
    "はい、こちらをお勧めします", "はい、こちらをお勧めします。", "はい、こちらをお勧めします。<",
    "はい、こちらをお勧めします。<N", "はい、こちらをお勧めします。<NL", "はい、こちらをお勧めします。<NL>",
    "はい、こちらをお勧めします。<NL><", "はい、こちらをお勧めします。<NL><N", "はい、こちらをお勧めします。<NL><NL",
    "はい、こちらをお勧めします。<NL><NL>", "はい、こちらをお勧めします。<NL><NL>「",
    "はい、こちらをお勧めします。<NL><NL>「ハチ", "はい、こちらをお勧めします。<NL><NL>「ハチ公",
    "はい、こちらをお勧めします。<NL><NL>「ハチ公像", "はい、こちらをお勧めします。<NL><NL>「ハチ公像」",
    "はい、こちらをお勧めします。<NL><NL>「ハチ公像」は", "はい、こちらをお勧めします。<NL><NL>「ハチ公像」は、",
    "はい、こちらをお勧めします。<NL><NL>「ハチ公像」は、最も有名な",
]  # fmt: skip


# --- oracles, written from DESIGN.md without looking at the implementation -----------------------------------


def replace_all(text: str, replacements: dict[str, str]) -> str:
    """R(T): re.sub over the escaped keys, longest first."""
    if not replacements:
        return text
    pattern = "|".join(re.escape(key) for key in sorted(replacements, key=len, reverse=True))
    return re.sub(pattern, lambda match: replacements[match.group()], text)


def first_stop(text: str, stops: list[str]) -> tuple[int, str] | None:
    """The first end position at which a stop string ends (the longest there): (cut position, stop)."""
    for end in range(1, len(text) + 1):
        ending = [stop for stop in stops if text.endswith(stop, 0, end)]
        if ending:
            stop = max(ending, key=len)
            return end - len(stop), stop
    return None


def final_output(text: str, replacements: dict[str, str], stops: list[str]) -> tuple[str, str | None]:
    replaced = replace_all(text, replacements)
    found = first_stop(replaced, stops)
    return (replaced, None) if found is None else (replaced[: found[0]], found[1])


def decided_replacement(text: str, replacements: dict[str, str]) -> str:
    """R of the input parsed leftmost-longest up to the first undecided position (where more input could
    still start a search string, or extend a match into a longer one)."""
    pieces, position = [], 0
    while position < len(text):
        rest = text[position:]
        if any(len(key) > len(rest) and key.startswith(rest) for key in replacements):
            break
        key = max((key for key in replacements if rest.startswith(key)), key=len, default=None)
        pieces.append(text[position] if key is None else replacements[key])
        position += 1 if key is None else len(key)
    return "".join(pieces)


def early_bound(text: str, replacements: dict[str, str], stops: list[str]) -> tuple[str, bool]:
    """What must have been emitted after input `text`, and whether the buffer must have stopped by then."""
    decided = decided_replacement(text, replacements)
    found = first_stop(decided, stops)
    if found is not None:
        return decided[: found[0]], True
    held = max(
        (len(decided) - start for start in range(len(decided)) if any(
            len(stop) > len(decided) - start and stop.startswith(decided[start:]) for stop in stops
        )),
        default=0,
    )  # fmt: skip
    return decided[: len(decided) - held], False


# --- strategies ---------------------------------------------------------------------------------------------

ALPHABET = "ab<>"  # small, so that patterns really collide and overlap
WIDE_ALPHABET = "a<日😀é\u0301"  # CJK, an emoji beyond the BMP, a letter and a combining mark
EXTRA = "ab<>Xé\u0301😀日"  # replacements may produce what the input never holds


def patterns(alphabet: str, max_size: int) -> st.SearchStrategy[list[str]]:
    return st.lists(st.text(alphabet, min_size=1, max_size=4), max_size=max_size, unique=True)


@st.composite
def cases(draw: st.DrawFn, alphabet: str = ALPHABET) -> tuple[str, dict[str, str], list[str], list[str]]:
    keys = draw(patterns(alphabet, 4))
    replacements = {key: draw(st.text(EXTRA, max_size=3)) for key in keys}
    stops = draw(patterns(alphabet + "X", 3))
    if stops and len(stops[0]) > 1 and draw(st.booleans()):
        stops.append(stops[0][:-1])  # a stop that is a prefix of another ends first
    text = draw(st.text(alphabet, max_size=40))
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=len(text))))
    fragments = [text[start:end] for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    return text, replacements, stops, fragments


ANY_CASE = st.one_of(cases(), cases(alphabet=WIDE_ALPHABET))
PROPERTY = settings(deadline=None, max_examples=600, suppress_health_check=[HealthCheck.too_slow])


# --- properties ---------------------------------------------------------------------------------------------


@PROPERTY
@given(ANY_CASE)
def test_any_chunking_gives_the_oracle_output(case: tuple[str, dict[str, str], list[str], list[str]]) -> None:
    text, replacements, stops, fragments = case
    buffer = StreamBuffer(replacements=replacements, stop=stops)
    emitted = "".join(buffer.put(fragment) for fragment in fragments) + buffer.flush()
    expected, stop_str = final_output(text, replacements, stops)
    assert emitted == expected == buffer.text
    assert buffer.stop_str == stop_str
    assert buffer.stopped == (stop_str is not None)


@PROPERTY
@given(ANY_CASE)
def test_every_put_is_never_wrong_and_early(case: tuple[str, dict[str, str], list[str], list[str]]) -> None:
    text, replacements, stops, fragments = case
    buffer = StreamBuffer(replacements=replacements, stop=stops)
    expected, _ = final_output(text, replacements, stops)
    taken = ""
    for fragment in fragments:
        buffer.put(fragment)
        taken += fragment
        bound, must_stop = early_bound(taken, replacements, stops)
        assert expected.startswith(buffer.text), "emitted text that later input contradicts"
        assert buffer.text.startswith(bound), f"held back more than the Early bound {bound!r}"
        if must_stop:
            assert buffer.stopped
        if buffer.stopped:
            assert buffer.text == expected
        # holding: exactly when, were the input to end now, flush() would return text.
        if_ended_now, _ = final_output(taken, replacements, stops)
        assert buffer.holding == (not buffer.stopped and len(if_ended_now) > len(buffer.text))


@settings(deadline=None, max_examples=300)
@given(cases())
def test_put_cumulative_equals_put(case: tuple[str, dict[str, str], list[str], list[str]]) -> None:
    _, replacements, stops, fragments = case
    by_put = StreamBuffer(replacements=replacements, stop=stops)
    by_cumulative = StreamBuffer(replacements=replacements, stop=stops)
    so_far = ""
    for fragment in fragments:
        so_far += fragment
        assert by_cumulative.put_cumulative(so_far) == by_put.put(fragment)
    assert by_cumulative.flush() == by_put.flush()


# --- the seeds ----------------------------------------------------------------------------------------------


def test_seed_tokflow_example() -> None:
    buffer = StreamBuffer(replacements=[("<NL>", "\n")])
    pieces = [buffer.put(fragment) for fragment in SEED_FRAGMENTS]
    assert "".join(pieces) + buffer.flush() == "Hello there!\nmy name is tokflow.\nNice to meet you."
    assert pieces[6:9] == ["!", "", "\nm"]  # "<" and "N" are never shown


def test_seed_sentence_stop_example() -> None:
    buffer = StreamBuffer(stop="<NL>")
    for text in SEED_CUMULATIVE:
        buffer.put_cumulative(text)
        if buffer.stopped:
            break
    assert buffer.stopped
    assert buffer.text == "はい、こちらをお勧めします。"
    assert buffer.stop_str == "<NL>"
    assert buffer.flush() == ""


# --- documented semantics, case by case ---------------------------------------------------------------------


def test_a_stream_that_ends_inside_a_possible_tag_loses_nothing() -> None:
    # tokflow 1.3.1 returns "" for all of this, put and flush alike: the answer is lost.
    buffer = StreamBuffer(replacements={"<NL>": "\n"})
    assert buffer.put("Answer: 3 <") == "Answer: 3 "
    assert buffer.put("N") == ""
    assert buffer.flush() == "<N"


def test_longest_replacement_wins_and_output_is_not_rescanned() -> None:
    buffer = StreamBuffer(replacements={"a": "b", "aa": "<aa>", "b": "a"})
    assert buffer.put("aaab") + buffer.flush() == "<aa>ba"


def test_self_overlapping_search_strings() -> None:
    buffer = StreamBuffer(replacements={"aab": "1", "aaab": "2"})
    assert [buffer.put(char) for char in "aaaab"] + [buffer.flush()] == ["", "", "", "a", "2", ""]


def test_stop_that_ends_first_wins_and_the_longest_among_those_ending_there() -> None:
    earliest_end = StreamBuffer(stop=["abcd", "bc"])
    assert earliest_end.put("xabcd") == "xa"
    assert earliest_end.stop_str == "bc"
    shorter_at_same_start = StreamBuffer(stop=["abc", "ab"])
    assert shorter_at_same_start.put("xabc") == "x"
    assert shorter_at_same_start.stop_str == "ab"
    longest = StreamBuffer(stop=["c", "bc", "abc"])
    assert longest.put("xabc") == "x"
    assert longest.stop_str == "abc"


def test_stops_see_replaced_text() -> None:
    newline_stop = StreamBuffer(replacements={"<NL>": "\n"}, stop=["\n"])
    assert newline_stop.put("one<N") + newline_stop.put("L>two") == "one"
    assert newline_stop.stop_str == "\n"
    tag_stop = StreamBuffer(replacements={"<NL>": "\n"}, stop=["<NL>"])
    assert tag_stop.put("one<NL>two") + tag_stop.flush() == "one\ntwo"
    assert not tag_stop.stopped


def test_a_prefix_of_a_stop_is_held_then_released() -> None:
    buffer = StreamBuffer(stop="###")
    assert buffer.put("a #") == "a "
    assert buffer.holding
    assert buffer.put("#b") == "##b"
    assert not buffer.holding
    assert buffer.put("##") == ""
    assert buffer.flush() == "##"
    assert buffer.text == "a ##b##"


def test_holding_is_false_when_what_is_held_replaces_to_nothing() -> None:
    buffer = StreamBuffer(replacements={"<EOS>": "", "<": "&lt;"})
    assert buffer.put("x<EO") == "x"
    assert buffer.holding
    buffer = StreamBuffer(replacements={"<": "", "<EOS>": "!"})
    assert buffer.put("x<") == "x"
    assert not buffer.holding  # flush() would replace "<" by "" and return nothing
    assert buffer.flush() == ""


def test_after_a_stop_input_is_ignored() -> None:
    buffer = StreamBuffer(replacements={"<NL>": "\n"}, stop="END")
    assert buffer.put("doneEND and more <NL>") == "done"
    assert buffer.stopped
    assert not buffer.holding
    assert buffer.put("more END") == ""
    assert buffer.put_cumulative("doneEND and more <NL> even more") == ""
    assert buffer.flush() == ""
    assert buffer.text == "done"


def test_stop_found_by_flush() -> None:
    buffer = StreamBuffer(replacements={"<E": "<end", "<EX": "?"}, stop="end")
    assert buffer.put("the <E") == "the "  # "<E" could still grow into "<EX"
    assert not buffer.stopped
    assert buffer.flush() == "<"
    assert buffer.stopped
    assert buffer.stop_str == "end"


def test_put_cumulative_shares_history_with_put() -> None:
    buffer = StreamBuffer(stop="<NL>")
    assert buffer.put("ab") == "ab"
    assert buffer.put_cumulative("abc") == "c"
    assert buffer.put_cumulative("abc") == ""
    with pytest.raises(ValueError):
        buffer.put_cumulative("xbcd")
    with pytest.raises(ValueError):
        buffer.put_cumulative("ab")  # shorter: does not extend
    assert buffer.put("d") == "d"  # the failed calls changed nothing
    assert buffer.text == "abcd"


def test_put_after_flush_raises() -> None:
    buffer = StreamBuffer()
    buffer.put("text")
    assert buffer.flush() == ""
    with pytest.raises(RuntimeError):
        buffer.put("more")
    with pytest.raises(RuntimeError):
        buffer.put_cumulative("text more")


def test_replacements_as_dict_or_pairs_and_stop_as_str_or_list() -> None:
    for replacements in ({"<NL>": "\n"}, [("<NL>", "\n")]):
        for stop in ("STOP", ["STOP"], ("STOP", "STOP")):
            buffer = StreamBuffer(replacements=replacements, stop=stop)
            assert buffer.put("a<NL>bSTOPc") == "a\nb"
            assert buffer.stop_str == "STOP"


def test_without_patterns_text_passes_through() -> None:
    buffer = StreamBuffer()
    assert [buffer.put(fragment) for fragment in SEED_FRAGMENTS] == SEED_FRAGMENTS
    assert not buffer.holding
    assert buffer.flush() == ""


@pytest.mark.parametrize(
    ("replacements", "stop", "error"),
    [
        ({"": "x"}, None, ValueError),
        ([("a", "1"), ("a", "2")], None, ValueError),
        (None, "", ValueError),
        (None, ["ok", ""], ValueError),
        ({1: "x"}, None, TypeError),
        ({"a": None}, None, TypeError),
        ([("a", "1", "2")], None, TypeError),
        (["ab"], None, TypeError),
        (None, [b"stop"], TypeError),
    ],
)
def test_invalid_arguments(replacements: object, stop: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        StreamBuffer(replacements=replacements, stop=stop)  # type: ignore[arg-type]


@pytest.mark.parametrize("fragment", [None, b"bytes", 3, ["a"]])
def test_a_fragment_that_is_not_a_str_raises(fragment: object) -> None:
    buffer = StreamBuffer(replacements={"<NL>": "\n"})
    with pytest.raises(TypeError):
        buffer.put(fragment)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        buffer.put_cumulative(fragment)  # type: ignore[arg-type]
    assert buffer.put("still fine") == "still fine"


def test_long_patterns_do_not_hit_recursion_limits() -> None:
    # A client sends the stop strings: one of thousands of characters must work, not raise RecursionError.
    long_tag, long_stop = "<" + "x" * 5000 + ">", "s" * 5000
    buffer = StreamBuffer(replacements={long_tag: "R"}, stop=[long_stop, "s" * 2500 + "t"])
    assert buffer.put("a" + long_tag[:3000]) == "a"
    assert buffer.put(long_tag[3000:] + "b") == "Rb"
    assert buffer.put("s" * 2500) == ""
    assert buffer.put("s" * 2499 + "!") == "s" * 4999 + "!"
    assert buffer.put("s" * 2500 + "t after") == ""
    assert buffer.stop_str == "s" * 2500 + "t"
