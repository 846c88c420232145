"""StreamBuffer: text replacements and stop strings over a stream of text fragments.

Pure Python with no dependency, importing nothing of tokserve's: usable as a library on its own.

Two stages run per fragment, each exact for every chunking of the input:

1. Replacement, R(T): leftmost-longest, one pass, replaced text never rescanned. The undecided tail of the
   input (from the first scan position where a search string could still start or grow) waits for more input.
2. Stops, on the replaced text U = R(T): the stop string that ends first (the longest of those ending there)
   cuts the output before it. The longest tail of decided U that is a proper prefix of a stop string waits.

Both stages search with one regular expression built from a trie of all their strings, so the search runs in
the `re` engine's C loop and the number of patterns does not multiply the cost. What is held between calls is
shorter than the longest pattern, so no call rescans the stream so far: a call costs the Python work of a few
steps plus C work over the fragment and the held text. At each position the trie is walked only as far as the
text follows some pattern: a step or two for tag-like patterns, up to the longest pattern on self-similar text
such as a run of "a" against "aaaab" (benchmarks/RESULTS.md measures both). A fragment that holds no character
that starts a pattern, while nothing is held, is emitted as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

__all__ = ["StreamBuffer"]

# A trie over strings: one child per next character; the key "" marks the end of a string.
_Trie = dict[str, "_Trie"]


def _build_trie(strings: Iterable[str]) -> _Trie:
    root: _Trie = {}
    for string in strings:
        node = root
        for char in string:
            node = node.setdefault(char, {})
        node[""] = {}
    return root


def _children(node: _Trie) -> list[tuple[str, _Trie]]:
    return [(char, child) for char, child in sorted(node.items()) if char]


def _alternation(branches: list[str]) -> str:
    return branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"


def _match_regex(node: _Trie, *, longest: bool) -> str:
    """A regex for the strings below `node`: the longest (or shortest) at a given start position.

    Groups nest only where the trie branches or a string ends, never once per character, so long patterns stay
    within the recursion limits of this builder and of `re`.
    """
    chain = []
    while "" not in node and len(onward := _children(node)) == 1:
        char, node = onward[0]
        chain.append(re.escape(char))
    branches = [re.escape(char) + _match_regex(child, longest=longest) for char, child in _children(node)]
    if not branches:
        return "".join(chain)
    if "" not in node:
        return "".join([*chain, _alternation(branches)])
    # This node ends a string: going deeper first finds the longest, stopping here first the shortest.
    return "".join([*chain, "(?:", "|".join(branches), ")?" if longest else ")??"])


def _open_regex(root: _Trie) -> str | None:
    """A regex for a non-empty proper prefix of a string in the trie that runs to the end of the input."""
    branches = [re.escape(char) + _open_tail(child) for char, child in _children(root) if _children(child)]
    return _alternation(branches) if branches else None


def _open_tail(node: _Trie) -> str:
    """After a proper prefix that ends at `node`: the input ends here, or runs on along a longer proper prefix."""
    steps = []
    # Along a chain, "(?:c|\Z)" steps need not nest: once the input has ended, every later "\Z" holds as well.
    while len(onward := [(char, child) for char, child in _children(node) if _children(child)]) == 1:
        char, node = onward[0]
        steps.append(f"(?:{re.escape(char)}|\\Z)")
    branches = [re.escape(char) + _open_tail(child) for char, child in onward]
    return "".join([*steps, _alternation([*branches, r"\Z"])])


def _replacement_pairs(replacements: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> dict[str, str]:
    pairs = replacements.items() if isinstance(replacements, Mapping) else replacements or ()
    table: dict[str, str] = {}
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise TypeError(f"a replacement must be a (search, replacement) pair, not {pair!r}")
        search, replacement = pair
        if not isinstance(search, str) or not isinstance(replacement, str):
            raise TypeError(f"search and replacement strings must be str, not {pair!r}")
        if not search:
            raise ValueError("a search string must not be empty")
        if search in table:
            raise ValueError(f"search string {search!r} is given twice")
        table[search] = replacement
    return table


def _stop_strings(stop: str | Iterable[str] | None) -> list[str]:
    strings = [stop] if isinstance(stop, str) else list(stop or ())
    for string in strings:
        if not isinstance(string, str):
            raise TypeError(f"a stop string must be a str, not {string!r}")
        if not string:
            raise ValueError("a stop string must not be empty")
    return list(dict.fromkeys(strings))  # a stop given twice is the same stop


class StreamBuffer:
    """Applies replacements, then stop strings, to streamed text; emits each piece once nothing can change it.

    `replacements` maps search strings to their replacements (a dict or (search, replacement) pairs);
    `stop` is one stop string or several, matched on the replaced text.
    """

    def __init__(
        self,
        replacements: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        stop: str | Iterable[str] | None = None,
    ) -> None:
        self._table = _replacement_pairs(replacements)
        stops = _stop_strings(stop)

        keys = _build_trie(self._table)
        longest_key = _match_regex(keys, longest=True)
        open_key = _open_regex(keys)
        # At each scan position: either the rest of the input could still become (or grow into) a search
        # string ("open": undecided, wait), or the longest search string that matches there.
        parse = f"(?P<key>{longest_key})" if open_key is None else f"(?P<open>{open_key})|(?P<key>{longest_key})"
        self._parse = re.compile(parse).search if self._table else None
        self._final_parse = re.compile(longest_key).sub if self._table else None
        # The usual state inside a tag that arrives piece by piece: the whole undecided text is still a proper
        # prefix of a search string. A set lookup decides that without a regex call.
        self._key_prefixes = {key[:end] for key in self._table for end in range(1, len(key))}

        stop_trie = _build_trie(stops)
        open_stop = _open_regex(stop_trie)
        self._stop_search = re.compile(_match_regex(stop_trie, longest=False)).search if stops else None
        self._stop_prefix_search = re.compile(open_stop).search if open_stop is not None else None
        self._longest_stop = max(map(len, stops), default=0)

        # Characters that can start a search or stop string: a fragment without any of them, while nothing is
        # held, passes through untouched. A few characters are tested with `in`, which is cheaper than a regex.
        starters = "".join(sorted({string[0] for string in [*self._table, *stops]}))
        self._starters = starters if len(starters) <= 3 else ""
        self._starter_search = re.compile(f"[{re.escape(starters)}]").search if len(starters) > 3 else None

        self._inputs: list[str] = []  # every fragment taken, for put_cumulative
        self._outputs: list[str] = []  # every piece emitted
        self._pending = ""  # raw input not yet decided by the replacement stage
        self._held = ""  # decided, replaced text that could still begin a stop string
        self._quiet = True  # nothing pending or held, not stopped, not flushed: the fast path applies
        self._stop_str: str | None = None
        self._flushed = False

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        if len(self._outputs) > 1:
            self._outputs[:] = ["".join(self._outputs)]
        return self._outputs[0] if self._outputs else ""

    @property
    def stopped(self) -> bool:
        """Whether a stop string was found; after it, input is ignored."""
        return self._stop_str is not None

    @property
    def stop_str(self) -> str | None:
        """The stop string found, if any."""
        return self._stop_str

    @property
    def holding(self) -> bool:
        """Whether `flush()` would return text now."""
        if self._quiet or self.stopped or self._flushed:
            return False
        return bool(self._release(self._held + self._replace_rest(self._pending))[0])

    def put(self, fragment: str) -> str:
        """Take the next fragment; return the text that is now safe to show (possibly "")."""
        if not isinstance(fragment, str):
            raise TypeError(f"a fragment must be a str, not {type(fragment).__name__}")
        if self._quiet:
            for char in self._starters:
                if char in fragment:
                    break
            else:
                if self._starter_search is None or self._starter_search(fragment) is None:
                    self._inputs.append(fragment)
                    self._outputs.append(fragment)
                    return fragment
        elif self._flushed:
            raise RuntimeError("put() after flush()")
        elif self._stop_str is not None:
            return ""
        self._inputs.append(fragment)
        safe = self._replace(self._pending + fragment)
        if self._stop_search is not None:
            safe = self._cut(self._held + safe)
        self._outputs.append(safe)
        self._quiet = not (self._pending or self._held or self._stop_str is not None)
        return safe

    def put_cumulative(self, text: str) -> str:
        """Take the whole text so far, which must extend the text taken before; return what is safe to show."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        if self._flushed:
            raise RuntimeError("put_cumulative() after flush()")
        if len(self._inputs) > 1:
            self._inputs[:] = ["".join(self._inputs)]
        seen = self._inputs[0] if self._inputs else ""
        if not text.startswith(seen):
            raise ValueError("put_cumulative() text does not extend the text taken so far")
        return self.put(text[len(seen) :])

    def flush(self) -> str:
        """End of input: return what was held back ("" after a stop)."""
        if self._flushed or self.stopped:
            self._flushed = True
            self._quiet = False
            return ""
        released, stop_str = self._release(self._held + self._replace_rest(self._pending))
        self._pending = self._held = ""
        self._stop_str = stop_str
        self._flushed = True
        self._quiet = False
        self._outputs.append(released)
        return released

    def _replace(self, text: str) -> str:
        """Replace in `text` up to its undecided tail, which becomes the new pending input."""
        if self._parse is None:
            self._pending = ""
            return text
        if text in self._key_prefixes:
            self._pending = text
            return ""
        self._pending = ""
        if text in self._table:  # one whole search string that cannot grow any more
            return self._table[text]
        pieces: list[str] = []
        position = 0
        while position < len(text) and (match := self._parse(text, position)) is not None:
            start = match.start()
            if match.lastgroup == "open":
                self._pending = text[start:]
                return text[position:start] if position == 0 else "".join([*pieces, text[position:start]])
            pieces += (text[position:start], self._table[match.group()])
            position = match.end()
        return text if position == 0 else "".join([*pieces, text[position:]])

    def _replace_rest(self, text: str) -> str:
        """Replace in `text` as the end of the input: nothing is undecided any more."""
        if self._final_parse is None or not text:
            return text
        return self._final_parse(lambda match: self._table[match.group()], text)

    def _cut(self, text: str) -> str:
        """Stop stage on decided, replaced `text`: return what is safe, hold back a possible stop's start."""
        released, self._stop_str = self._release(text)
        if self._stop_str is not None:
            self._pending = self._held = ""
            return released
        tail = (
            self._stop_prefix_search(text, max(0, len(text) - self._longest_stop + 1))
            if self._stop_prefix_search is not None
            else None
        )
        if tail is None:
            self._held = ""
            return text
        self._held = text[tail.start() :]
        return text[: tail.start()]

    def _release(self, text: str) -> tuple[str, str | None]:
        """Cut `text` before its first stop string: (the text before it, that stop) or (text, None)."""
        if self._stop_search is None or (match := self._stop_search(text)) is None:
            return text, None
        # `match` starts leftmost and is the shortest there, yet a stop that starts later can end sooner: narrow
        # to the earliest end. A stop that starts earlier and ends at the same place was found first and wins.
        start, end = match.span()
        while (inner := self._stop_search(text, start + 1, end - 1)) is not None:
            start, end = inner.span()
        return text[:start], text[start:end]
