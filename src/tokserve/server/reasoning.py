"""The thinking split: `<think>...</think>` at the start of an output is reasoning, the rest is the answer.

Pure text, fed piece by piece in any chunking: it holds back only what could still be part of a marker, so the
pieces it gives are the same, joined, however the output was cut.
"""

_NEWLINES = "\r\n"


class ReasoningSplitter:
    """Splits one output into (is_reasoning, text) pieces, markers removed.

    Reasoning is recognised only where the output starts with `start` (after whitespace), or where the prompt
    already opened the block (`thinking`, as templates do that end the prompt with "<think>\\n"). The newlines right
    after `end` are dropped, as vLLM shows Qwen3's answers.
    """

    def __init__(self, start: str = "<think>", end: str = "</think>", thinking: bool = False) -> None:
        self._start, self._end = start, end
        self._state = "reasoning" if thinking else "lead"  # lead -> reasoning -> after_end -> answer; lead -> answer
        self._held = ""

    @property
    def reasoning(self) -> bool:
        """The output is inside its thinking: the block was opened and is not closed yet."""
        return self._state == "reasoning"

    def put(self, text: str) -> list[tuple[bool, str]]:
        """The pieces `text`, the next piece of output, makes certain."""
        out: list[tuple[bool, str]] = []
        self._held += text
        while self._held:
            before = self._state
            self._step(out)
            if self._state == before:
                break
        return out

    def flush(self) -> list[tuple[bool, str]]:
        """The rest, at the end of the output: a marker's start left unfinished is text of its side."""
        out: list[tuple[bool, str]] = []
        if self._state != "after_end":
            _add(out, self._state == "reasoning", self._held)
        self._held = ""
        return out

    def _step(self, out: list[tuple[bool, str]]) -> None:
        """Give what `_held` makes certain in the current state; change state where a marker decides it."""
        if self._state == "lead":
            self._lead(out)
        elif self._state == "reasoning":
            self._reasoning(out)
        elif self._state == "after_end":
            rest = self._held.lstrip(_NEWLINES)
            self._held = ""
            if rest:
                self._state = "answer"
                _add(out, False, rest)
        else:
            _add(out, False, self._held)
            self._held = ""

    def _lead(self, out: list[tuple[bool, str]]) -> None:
        stripped = self._held.lstrip()
        if stripped.startswith(self._start):
            self._held = stripped[len(self._start) :]
            self._state = "reasoning"
        elif not self._start.startswith(stripped):
            self._state = "answer"

    def _reasoning(self, out: list[tuple[bool, str]]) -> None:
        found = self._held.find(self._end)
        if found >= 0:
            _add(out, True, self._held[:found])
            self._held = self._held[found + len(self._end) :]
            self._state = "after_end"
            return
        keep = _partial_suffix(self._held, self._end)
        _add(out, True, self._held[: len(self._held) - keep])
        self._held = self._held[len(self._held) - keep :]


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that is a proper start of `marker`: what may still become one."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _add(out: list[tuple[bool, str]], is_reasoning: bool, text: str) -> None:
    """Append a piece, joined to the last one where it is of the same side; empty pieces are no pieces."""
    if not text:
        return
    if out and out[-1][0] == is_reasoning:
        out[-1] = (is_reasoning, out[-1][1] + text)
    else:
        out.append((is_reasoning, text))
