"""The streaming parser of tool calls: a model's raw output, piece by piece, becomes text and calls.

Character by character, so any chunking of the output gives the same pieces once joined. The arguments come out as
the model wrote them (an incremental scan of strings, escapes and depth, never a re-serialisation), so joined they
are the raw JSON text of the arguments value. A call is committed (CallStart) when its name is complete; before
that, what turns out not to be a call comes back as text, markers and all: nothing is lost.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass

from tokserve.server.tool_formats import ToolFormat


@dataclass(frozen=True, slots=True)
class TextPiece:
    """Text outside any call."""

    text: str


@dataclass(frozen=True, slots=True)
class CallStart:
    """A call begins: `call` counts the calls of the output from 0."""

    call: int
    name: str


@dataclass(frozen=True, slots=True)
class CallArguments:
    """The next piece of a call's arguments, exactly as the model wrote them."""

    call: int
    text: str


ParsedPiece = TextPiece | CallStart | CallArguments

_EXPECTED = {"first_key": '"}', "key": '"', "colon": ":", "after_value": ",}"}
_SCALAR = frozenset("+-.0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class _CallObject:
    """One call's JSON object, scanned a character at a time after its `{`: finds the name, collects the arguments.

    Only the top level is parsed (keys, `:`, `,`); values are skimmed for their extent: strings, escapes and depth.
    """

    def __init__(self, arguments_key: str) -> None:
        self._arguments_key = arguments_key
        self._state = "first_key"  # first_key, key, in_key, colon, value, string, nested, scalar, after_value, closed
        self._key = ""  # raw text of the current key, quotes included
        self._target: str | None = None  # what the current value is: "name", "arguments" or nothing we keep
        self._value = ""  # raw text of the name's value
        self._depth, self._in_string, self._escaped = 0, False, False
        self.name: str | None = None
        self.arguments = ""  # arguments text not yet taken by the parser
        self._arguments_seen = False
        self.closed = False

    def feed(self, char: str) -> bool:
        """Take one character; False where it cannot continue the object."""
        if self._state in ("string", "nested", "scalar"):
            return self._feed_value(char)
        if self._state == "in_key":
            self._key += char
            if self._string_ends(char):
                self._state, self._target = "colon", self._target_of(self._key)
            return True
        if char.isspace():
            return True
        if self._state == "value":
            return self._start_value(char)
        if char not in _EXPECTED[self._state]:
            return False
        if char == '"':
            self._key, self._state, self._escaped = char, "in_key", False
        else:
            self._state = {":": "value", ",": "key", "}": "closed"}[char]
            self.closed = char == "}"
        return True

    def _target_of(self, key: str) -> str | None:
        try:
            decoded = json.loads(key)
        except ValueError:
            return None
        if decoded == "name" and self.name is None:
            return "name"
        if decoded == self._arguments_key and not self._arguments_seen:
            return "arguments"
        return None

    def _start_value(self, char: str) -> bool:
        if char == '"':
            self._state = "string"
        elif char in "{[" and self._target != "name":
            self._state, self._depth, self._in_string = "nested", 1, False
        elif char in _SCALAR and self._target != "name":
            self._state = "scalar"
        else:
            return False  # a value that is no JSON value, or a name that is no string: not a call
        self._escaped = False
        self._take(char)
        return True

    def _feed_value(self, char: str) -> bool:
        if self._state == "scalar" and char not in _SCALAR:
            return self._end_value() and self.feed(char)
        self._take(char)
        if self._state == "scalar":
            return True
        ends = self._string_ends(char) if self._state == "string" else self._nests(char)
        return self._end_value() if ends else True

    def _take(self, char: str) -> None:
        if self._target == "name":
            self._value += char
        elif self._target == "arguments":
            self.arguments += char

    def _string_ends(self, char: str) -> bool:
        """Track escapes inside a string whose opening quote is behind; True at its closing quote."""
        if self._escaped:
            self._escaped = False
        elif char == "\\":
            self._escaped = True
        elif char == '"':
            return True
        return False

    def _nests(self, char: str) -> bool:
        """Track depth inside an object or array value, strings included; True at its closing bracket."""
        if self._in_string:
            self._in_string = not self._string_ends(char)
        elif char == '"':
            self._in_string, self._escaped = True, False
        elif char in "{[":
            self._depth += 1
        elif char in "}]":
            self._depth -= 1
        return self._depth == 0

    def _end_value(self) -> bool:
        """A top-level value ended: keep the name; False where the name is no valid string."""
        if self._target == "arguments":
            self._arguments_seen = True
        elif self._target == "name":
            try:
                self.name = json.loads(self._value)
            except ValueError:
                return False
        self._state, self._target, self._value = "after_value", None, ""
        return True


class ToolCallParser:
    """Text and calls out of one output written in `format`, fed piece by piece."""

    def __init__(self, format: ToolFormat) -> None:
        self._format = format
        self._opener = format.opening.strip()
        self._closer = format.closing.strip() + format.end
        self._separator = format.separator.strip()
        self._scanning = not format.leading_only  # markers are looked for past the start of the output
        self._state = "text"  # text, expect (literals of the markup), call (an object), after_list
        self._lead = True  # the text so far is whitespace at the start or after calls: it may still open a call
        self._pending = ""  # text held back: it may still become markup
        self._raw = ""  # markup since the last commit: text again where no call comes of it
        self._expect: list[str] = []
        self._matched = 0
        self._then: Callable[[], None] = self._begin_object
        self._object: _CallObject | None = None
        self._committed = False  # the open object has had its CallStart
        self._calls = 0
        self._broken = False  # a started call's JSON went wrong before its object closed
        self._out: list[ParsedPiece] = []

    @property
    def calls(self) -> int:
        """Calls started so far."""
        return self._calls

    @property
    def complete(self) -> bool:
        """No call is open: every started call's JSON object closed (one that broke off never does)."""
        return not self._committed and not self._broken

    def put(self, text: str) -> list[ParsedPiece]:
        """The pieces the next piece of raw output (special tokens as text) makes certain."""
        for char in text:
            self._char(char)
        out, self._out = self._out, []
        return out

    def flush(self) -> list[ParsedPiece]:
        """The rest, at the end of the output: markup that made no call is text; whitespace after calls is dropped."""
        if self._state == "text":
            if not (self._lead and self._calls and self._pending.isspace()):
                self._text(self._pending)
        elif not self._committed and not self._raw.isspace():
            self._text(self._raw)
        self._pending = self._raw = ""
        out, self._out = self._out, []
        return out

    def _char(self, char: str) -> None:
        if self._state == "text":
            self._text_char(char)
        elif self._state == "expect":
            self._expect_char(char)
        elif self._state == "call":
            self._call_char(char)
        else:
            self._after_list_char(char)

    def _after_list_char(self, char: str) -> None:
        """After a call of a list: another call, the list's end, or (llama3_json) text where the calls stop."""
        if char.isspace():
            self._raw += char
        elif self._separator and char == self._separator[0]:
            self._expecting([self._separator, "{"], self._begin_object)
            self._expect_char(char)
        elif self._closer and char == self._closer[0]:
            self._expecting([self._closer], self._end_calls)
            self._expect_char(char)
        else:
            self._fail(char)

    def _text_char(self, char: str) -> None:
        self._pending += char
        if self._lead:
            stripped = self._pending.lstrip()
            marker = self._format.start
            if stripped.startswith(marker):
                self._markup(self._pending)
                self._expecting([self._opener, "{"], self._begin_object)
                return
            if marker.startswith(stripped):
                return
            if self._format.leading_only and stripped == "{":
                self._markup(self._pending)
                self._begin_object()
                return
            self._lead = False
        if not self._scanning:
            self._text(self._pending)
            self._pending = ""
        elif self._pending.endswith(self._format.start):
            self._text(self._pending[: -len(self._format.start)])
            self._markup(self._format.start)
            self._expecting([self._opener, "{"], self._begin_object)
        else:
            keep = len(self._pending) - _partial_suffix(self._pending, self._format.start)
            self._text(self._pending[:keep])
            self._pending = self._pending[keep:]

    def _markup(self, text: str) -> None:
        """`text` opens markup: held as raw, no longer as text."""
        self._raw, self._pending = text, ""

    def _expecting(self, literals: list[str], then: Callable[[], None]) -> None:
        """Markup to match next, whitespace allowed before each literal; then `then`."""
        self._state, self._expect, self._matched, self._then = "expect", [x for x in literals if x], 0, then
        if not self._expect:
            then()

    def _expect_char(self, char: str) -> None:
        literal = self._expect[0]
        if not (self._matched == 0 and char.isspace()):
            if char != literal[self._matched]:
                self._fail(char)
                return
            self._matched += 1
        self._raw += char
        if self._matched == len(literal):
            self._expect.pop(0)
            self._matched = 0
            if not self._expect:
                self._then()

    def _begin_object(self) -> None:
        self._state, self._object = "call", _CallObject(self._format.arguments_key)

    def _end_calls(self) -> None:
        self._state, self._lead, self._raw = "text", True, ""

    def _call_char(self, char: str) -> None:
        call = self._object
        assert call is not None
        if not call.feed(char):
            self._broken = self._broken or self._committed
            self._fail(char)
            return
        if not self._committed:
            self._raw += char
            if call.name is not None:
                self._emit(CallStart(self._calls, call.name))
                self._calls += 1
                self._committed, self._raw = True, ""
        if self._committed and call.arguments:
            self._emit(CallArguments(self._calls - 1, call.arguments))
            call.arguments = ""
        if call.closed and not self._committed:
            self._fail(None)  # a JSON object, but no call: its text, brace included
        elif call.closed:
            self._object, self._committed = None, False
            if self._format.per_call:
                self._expecting([self._closer], self._end_calls)
            else:
                self._state = "after_list"

    def _fail(self, char: str | None) -> None:
        """The markup went wrong at `char`: what was held since the last call is text, and `char` is read as text."""
        self._text(self._raw)
        self._raw, self._object, self._committed = "", None, False
        self._state, self._lead = "text", False
        if char is not None:
            self._text_char(char)

    def _text(self, text: str) -> None:
        if text:
            self._emit(TextPiece(text))

    def _emit(self, piece: ParsedPiece) -> None:
        """Append a piece, joined to the last one where both are text, or arguments of the same call."""
        last = self._out[-1] if self._out else None
        if isinstance(piece, TextPiece) and isinstance(last, TextPiece):
            self._out[-1] = TextPiece(last.text + piece.text)
        elif isinstance(piece, CallArguments) and isinstance(last, CallArguments) and last.call == piece.call:
            self._out[-1] = CallArguments(piece.call, last.text + piece.text)
        else:
            self._out.append(piece)


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that is a proper start of `marker`: what may still become one."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
