"""The per-choice pipeline: a choice's token events become typed deltas (content, reasoning, tool-call pieces) and
one Finish. Every wire shape renders these and nothing else (`chunks.py`); SSE framing is `streaming.py`'s.

A token's text, special tokens included where a parser needs them, goes to the reasoning split, then the answer to
the tool-call parser; only text outside calls reaches the StreamBuffer (replacements, stops), so neither touches
call markup or arguments. Content generated under a grammar (a JSON document) skips the buffer too: a replacement or
a stop string must never make valid JSON invalid.
"""

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from tokserve.buffer import StreamBuffer
from tokserve.engine import Decoder, TokenEvent, TokenLogprobs
from tokserve.schemas import FinishReason
from tokserve.server.reasoning import ReasoningSplitter
from tokserve.server.tool_formats import ToolFormat
from tokserve.server.tool_parser import CallArguments, CallStart, ParsedPiece, ToolCallParser


class Logprob(NamedTuple):
    """A token id and its logprobs (None for the first prompt token, which has nothing before it)."""

    token_id: int
    entry: TokenLogprobs | None
    # The token that ended generation (end-of-sequence, a stop token id) adds no text, so its entry's text is "";
    # it is listed all the same, as usage counts it.
    silent: bool = False


@dataclass(frozen=True, slots=True)
class Piece:
    """Content of one choice, safe to show, with the logprobs of the content tokens consumed since its last piece."""

    index: int
    text: str
    logprobs: tuple[Logprob, ...] = ()


@dataclass(frozen=True, slots=True)
class ReasoningPiece:
    """Thinking of one choice, before its answer."""

    index: int
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallPiece:
    """A piece of one tool call: its first carries `id` and `name`; `arguments` is the next piece of its JSON text."""

    index: int
    call: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


Delta = Piece | ReasoningPiece | ToolCallPiece


@dataclass(frozen=True, slots=True)
class Finish:
    """How a choice ended, how many tokens it generated, and how many of its prompt's were cached."""

    index: int
    reason: FinishReason
    stop_reason: str | int | None
    completion_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Shape:
    """What a choice's output holds beyond plain text, and how to take it apart."""

    tool_format: ToolFormat | None = None  # calls are parsed out in this format
    reasoning: bool = False  # <think>...</think> is split off as reasoning
    thinking: bool = False  # the prompt already opened the thinking
    raw_content: bool = False  # content is a constrained document: no replacements, no stop strings
    legacy_functions: bool = False  # calls are answered as the legacy `function_call`


class ChoiceDeltas:
    """One choice's pipeline: `token` for each generated token, then `finish`."""

    def __init__(self, index: int, decoder: Decoder, buffer: StreamBuffer, shape: Shape, reasoning: StreamBuffer):
        self.index = index
        self._decoder, self._buffer, self._shape = decoder, buffer, shape
        self._reasoning_buffer = reasoning
        self._splitter = ReasoningSplitter(thinking=shape.thinking) if shape.reasoning else None
        self._parser = ToolCallParser(shape.tool_format) if shape.tool_format else None
        self._call_ids: list[str] = []
        self._pending: list[Logprob] = []
        self._reasoned = False  # the thinking is over: its buffer has been flushed

    @property
    def stopped(self) -> bool:
        """A stop string ended the content."""
        return self._buffer.stopped

    @property
    def stop_str(self) -> str | None:
        return self._buffer.stop_str

    @property
    def calls(self) -> int:
        return len(self._call_ids)

    def token(self, event: TokenEvent, shown: bool, logprobs: bool) -> list[Delta]:
        """The deltas one generated token makes safe to show; `shown`: whether its text is part of the output."""
        assert event.token_id is not None
        text = self._decoder.step(event.token_id) if shown else ""
        entry = Logprob(event.token_id, event.logprobs, silent=not shown)
        in_content = self._in_content
        if logprobs:
            self._pending.append(entry)  # before routing: the piece its text makes carries it
        deltas = list(self._route(text))
        in_content = in_content and self._in_content
        if logprobs and shown and not in_content and self._pending and self._pending[-1] is entry:
            self._pending.pop()  # a token of a call or of the thinking: logprobs cover content only
        return deltas

    def end(self, include_stop_str: bool) -> list[Delta]:
        """What is held back, now that generation ended; the logprobs not yet given."""
        deltas: list[Delta] = []
        if self._buffer.stopped:
            if include_stop_str:
                deltas.append(self._piece(self._buffer.stop_str or ""))
        else:
            deltas += self._flush()
        if self._call_ids:  # what is left after calls is their closing markup, but for the silent end token
            self._pending[:] = [entry for entry in self._pending if entry.silent]
        if self._pending:
            deltas.append(self._piece(""))
        return [delta for delta in deltas if not isinstance(delta, Piece) or delta.text or delta.logprobs]

    @property
    def _in_content(self) -> bool:
        """Whether the text so far leaves the output in its answer, outside any call or thinking."""
        if self._splitter is not None and self._splitter.reasoning:
            return False
        return self._parser is None or self._parser.complete

    def _route(self, text: str) -> Iterator[Delta]:
        parts = self._splitter.put(text) if self._splitter is not None else [(False, text)]
        yield from self._parts(parts)

    def _flush(self) -> Iterator[Delta]:
        if self._splitter is not None:
            yield from self._parts(self._splitter.flush())
        if self._parser is not None:
            yield from self._parsed(self._parser.flush())
        yield from self._end_reasoning()
        if not self._buffer.stopped:
            yield from self._content(self._buffer.flush(), through_buffer=False)

    def _end_reasoning(self) -> Iterator[Delta]:
        """The thinking is over: what its buffer holds comes out before the answer."""
        if not self._reasoned:
            self._reasoned = True
            if reasoning := self._reasoning_buffer.flush():
                yield ReasoningPiece(self.index, reasoning)

    def _parts(self, parts: list[tuple[bool, str]]) -> Iterator[Delta]:
        for is_reasoning, text in parts:
            if is_reasoning:
                self._pending.clear()  # the tokens of the opening marker
                if shown := self._reasoning_buffer.put(text):
                    yield ReasoningPiece(self.index, shown)
                continue
            if text:
                yield from self._end_reasoning()
            if self._parser is not None:
                yield from self._parsed(self._parser.put(text))
            else:
                yield from self._content(text)

    def _parsed(self, pieces: list[ParsedPiece]) -> Iterator[Delta]:
        for piece in pieces:
            if isinstance(piece, CallStart):
                self._pending.clear()  # the tokens of its opening marker, held back as text until it was whole
                self._call_ids.append(f"call_{uuid.uuid4().hex[:24]}")
                yield ToolCallPiece(self.index, piece.call, self._call_ids[piece.call], piece.name)
            elif isinstance(piece, CallArguments):
                yield ToolCallPiece(self.index, piece.call, arguments=piece.text)
            else:
                yield from self._content(piece.text)

    def _content(self, text: str, through_buffer: bool = True) -> Iterator[Delta]:
        if self._buffer.stopped:
            return
        if through_buffer and not self._shape.raw_content:
            text = self._buffer.put(text)
        if text:
            yield self._piece(text)

    def _piece(self, text: str) -> Piece:
        piece = Piece(self.index, text, tuple(self._pending))
        self._pending.clear()
        return piece

    def finish_reason(self, end: str | None) -> FinishReason:
        if end == "length" and not self._buffer.stopped:
            return "length"
        if self._call_ids and not self._buffer.stopped:
            return "function_call" if self._shape.legacy_functions else "tool_calls"
        return "stop"


@dataclass(slots=True)
class WholeChoice:
    """A choice's deltas put together, for a response that is not streamed."""

    index: int
    finish: Finish
    content: str = ""
    reasoning: str | None = None
    calls: list[tuple[str, str, str]] | None = None  # (id, name, arguments)
    logprobs: tuple[Logprob, ...] = ()

    @classmethod
    def of(cls, deltas: list[Delta], finish: Finish) -> "WholeChoice":
        content: list[str] = []
        reasoning: list[str] = []
        calls: dict[int, list[str]] = {}
        logprobs: list[Logprob] = []
        for delta in deltas:
            if isinstance(delta, Piece):
                content.append(delta.text)
                logprobs += delta.logprobs
            elif isinstance(delta, ReasoningPiece):
                reasoning.append(delta.text)
            else:
                call = calls.setdefault(delta.call, [delta.id or "", delta.name or "", ""])
                call[2] += delta.arguments
        # A call cut short by max_tokens is no call: finish_reason "length" and no tool_calls.
        whole = [(id_, name, arguments) for id_, name, arguments in calls.values()]
        return cls(
            finish.index,
            finish,
            "".join(content),
            "".join(reasoning) if reasoning else None,
            whole if whole and finish.reason != "length" else None,
            tuple(logprobs),
        )
