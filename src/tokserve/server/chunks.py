"""Wire objects of one response: every chunk of a request carries the same `id` and `created`.

`ChatChunks` and `CompletionChunks` differ only in shape; `streaming.py` drives either through `Chunks`, with the
typed deltas of `deltas.py`. Logprobs arrive as token ids with `TokenLogprobs`; the engine's `Vocabulary` gives
their text and bytes.
"""

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol, TypedDict

from sse_starlette import ServerSentEvent

from tokserve.engine import Vocabulary
from tokserve.schemas import (
    ChatCompletionChoice,
    ChatCompletionChoiceLogprobs,
    ChatCompletionMessageToolCall,
    ChatCompletionMessageToolCallChunk,
    ChatCompletionResponseMessage,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponseDelta,
    ChatCompletionTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionUsage,
    CreateChatCompletionResponse,
    CreateChatCompletionStreamResponse,
    CreateCompletionResponse,
    ErrorResponse,
    FunctionCall,
    FunctionCallChunk,
    TopLogprob,
    WireModel,
)
from tokserve.server.deltas import Delta, Finish, Logprob, Piece, ReasoningPiece, WholeChoice

# OpenAI's stand-in for a log-probability too small to write (JSON has no -Infinity).
_UNLIKELY = -9999.0


# One SSE event: its data, or data with an event name.
Event = str | ServerSentEvent


class Chunks(Protocol):
    """A response's wire shape: the SSE events of each step of a stream, or the whole response."""

    def start(self, index: int) -> list[Event]: ...
    def delta(self, delta: Delta) -> list[Event]: ...
    def finish(self, finish: Finish) -> list[Event]: ...
    def end(self, usage: CompletionUsage, include_usage: bool) -> list[Event]: ...
    def failed(self, error: ErrorResponse) -> list[Event]: ...
    def done(self) -> list[Event]: ...
    async def closed(self, failure: str | None) -> None: ...
    def response(self, choices: Sequence[WholeChoice], usage: CompletionUsage) -> WireModel: ...


class _Stamp(TypedDict):
    """The fields every object of one response repeats."""

    id: str
    created: int
    model: str
    system_fingerprint: str


class _ResponseObjects(ABC):
    """What both shapes share: one stamp for every object of the response, and how logprobs are read."""

    def __init__(self, request_id: str, model: str, fingerprint: str, vocabulary: Vocabulary, logprobs: bool) -> None:
        self._stamp = _Stamp(id=request_id, created=int(time.time()), model=model, system_fingerprint=fingerprint)
        self._vocabulary, self._logprobs = vocabulary, logprobs

    def end(self, usage: CompletionUsage, include_usage: bool) -> list[Event]:
        return [self._usage(usage)] if include_usage else []

    def failed(self, error: ErrorResponse) -> list[Event]:
        return [error.model_dump_json()]

    def done(self) -> list[Event]:
        return ["[DONE]"]

    async def closed(self, failure: str | None) -> None:
        return None

    @abstractmethod
    def _usage(self, usage: CompletionUsage) -> str:
        """The chunk that carries the usage."""


class ChatChunks(_ResponseObjects):
    """`chat.completion.chunk` objects and the `chat.completion` response; with `legacy_functions`, a call takes
    the shape of the legacy `functions` (`function_call`, one call)."""

    def __init__(
        self,
        request_id: str,
        model: str,
        fingerprint: str,
        vocabulary: Vocabulary,
        logprobs: bool,
        legacy_functions: bool = False,
    ) -> None:
        super().__init__(request_id, model, fingerprint, vocabulary, logprobs)
        self._legacy_functions = legacy_functions

    def _chunk(self, choices: list[ChatCompletionStreamChoice], usage: CompletionUsage | None = None) -> str:
        return CreateChatCompletionStreamResponse(**self._stamp, choices=choices, usage=usage).model_dump_json()

    def start(self, index: int) -> list[Event]:
        delta = ChatCompletionStreamResponseDelta(role="assistant", content="")
        return [self._chunk([ChatCompletionStreamChoice(index=index, delta=delta)])]

    def delta(self, delta: Delta) -> list[Event]:
        if isinstance(delta, Piece):
            choice = ChatCompletionStreamChoice(
                index=delta.index,
                delta=ChatCompletionStreamResponseDelta(content=delta.text),
                logprobs=self._chat_logprobs(delta.logprobs),
            )
        elif isinstance(delta, ReasoningPiece):
            choice = ChatCompletionStreamChoice(
                index=delta.index, delta=ChatCompletionStreamResponseDelta(reasoning_content=delta.text)
            )
        else:
            function = FunctionCallChunk(name=delta.name, arguments=delta.arguments)
            if self._legacy_functions:
                wire = ChatCompletionStreamResponseDelta(function_call=function)
            else:
                call = ChatCompletionMessageToolCallChunk(
                    index=delta.call, id=delta.id, type="function" if delta.id else None, function=function
                )
                wire = ChatCompletionStreamResponseDelta(tool_calls=[call])
            choice = ChatCompletionStreamChoice(index=delta.index, delta=wire)
        return [self._chunk([choice])]

    def finish(self, finish: Finish) -> list[Event]:
        choice = ChatCompletionStreamChoice(
            index=finish.index,
            delta=ChatCompletionStreamResponseDelta(),
            finish_reason=finish.reason,
            stop_reason=finish.stop_reason,
        )
        return [self._chunk([choice])]

    def _usage(self, usage: CompletionUsage) -> str:
        return self._chunk([], usage)

    def response(self, choices: Sequence[WholeChoice], usage: CompletionUsage) -> CreateChatCompletionResponse:
        return CreateChatCompletionResponse(
            **self._stamp,
            choices=[
                ChatCompletionChoice(
                    index=choice.index,
                    message=self._message(choice),
                    logprobs=self._chat_logprobs(choice.logprobs),
                    finish_reason=choice.finish.reason,
                    stop_reason=choice.finish.stop_reason,
                )
                for choice in choices
            ],
            usage=usage,
        )

    def _message(self, choice: WholeChoice) -> ChatCompletionResponseMessage:
        calls = [
            ChatCompletionMessageToolCall(id=id_, function=FunctionCall(name=name, arguments=arguments))
            for id_, name, arguments in choice.calls or ()
        ]
        # OpenAI's content is null beside calls when the model wrote no text.
        content = choice.content or (None if calls else "")
        if self._legacy_functions:
            function_call = calls[0].function if calls else None
            return ChatCompletionResponseMessage(
                content=content, reasoning_content=choice.reasoning, function_call=function_call
            )
        return ChatCompletionResponseMessage(
            content=content, reasoning_content=choice.reasoning, tool_calls=calls or None
        )

    def _chat_logprobs(self, logprobs: Sequence[Logprob]) -> ChatCompletionChoiceLogprobs | None:
        if not self._logprobs:
            return None
        content = []
        for token_id, entry, silent in logprobs:
            chosen = self._top(token_id, entry.logprob if entry else _UNLIKELY)
            if silent:
                chosen = TopLogprob(token="", logprob=chosen.logprob, bytes=[])
            alternatives = [self._top(top_id, logprob) for top_id, logprob in entry.top] if entry else []
            content.append(ChatCompletionTokenLogprob(**dict(chosen), top_logprobs=alternatives))
        return ChatCompletionChoiceLogprobs(content=content)

    def _top(self, token_id: int, logprob: float) -> TopLogprob:
        text, raw = self._vocabulary.token(token_id)
        return TopLogprob(token=text, logprob=max(logprob, _UNLIKELY), bytes=None if raw is None else list(raw))


class CompletionChunks(_ResponseObjects):
    """`text_completion` objects, streamed or whole: the same shape either way.

    Logprobs take the legacy shape; `text_offset` counts characters of the token texts from the choice's start.
    """

    def __init__(self, request_id: str, model: str, fingerprint: str, vocabulary: Vocabulary, logprobs: bool) -> None:
        super().__init__(request_id, model, fingerprint, vocabulary, logprobs)
        self._offsets: dict[int, int] = {}  # per choice, where the next token's text starts

    def _object(
        self, choices: list[CompletionChoice], usage: CompletionUsage | None = None
    ) -> CreateCompletionResponse:
        return CreateCompletionResponse(**self._stamp, choices=choices, usage=usage)

    def start(self, index: int) -> list[Event]:
        return []

    def delta(self, delta: Delta) -> list[Event]:
        if not isinstance(delta, Piece):
            raise TypeError(f"a completion has text only, not {type(delta).__name__}")
        choice = CompletionChoice(index=delta.index, text=delta.text, logprobs=self._legacy_logprobs(delta))
        return [self._chunk(choice)]

    def finish(self, finish: Finish) -> list[Event]:
        choice = CompletionChoice(
            index=finish.index, text="", finish_reason=finish.reason, stop_reason=finish.stop_reason
        )
        return [self._chunk(choice)]

    def _chunk(self, choice: CompletionChoice) -> str:
        # The schema has no null `usage` (chat's has): the key is only on the usage chunk.
        return self._object([choice]).model_dump_json(exclude={"usage"})

    def _usage(self, usage: CompletionUsage) -> str:
        return self._object([], usage).model_dump_json()

    def response(self, choices: Sequence[WholeChoice], usage: CompletionUsage) -> CreateCompletionResponse:
        return self._object(
            [
                CompletionChoice(
                    index=choice.index,
                    text=choice.content,
                    logprobs=self._legacy_logprobs(Piece(choice.index, choice.content, choice.logprobs)),
                    finish_reason=choice.finish.reason,
                    stop_reason=choice.finish.stop_reason,
                )
                for choice in choices
            ],
            usage,
        )

    def _legacy_logprobs(self, piece: Piece) -> CompletionLogprobs | None:
        if not self._logprobs:
            return None
        result = CompletionLogprobs(text_offset=[], token_logprobs=[], tokens=[], top_logprobs=[])
        offset = self._offsets.get(piece.index, 0)
        for token_id, entry, silent in piece.logprobs:
            text = "" if silent else self._vocabulary.token(token_id)[0]
            result.text_offset.append(offset)
            result.tokens.append(text)
            offset += len(text)
            if entry is None:
                result.token_logprobs.append(None)
                result.top_logprobs.append(None)
                continue
            result.token_logprobs.append(max(entry.logprob, _UNLIKELY))
            # The alternatives and, as OpenAI does, the chosen token: up to logprobs + 1 entries.
            alternatives = {self._vocabulary.token(top_id)[0]: max(lp, _UNLIKELY) for top_id, lp in entry.top}
            result.top_logprobs.append({**alternatives, text: max(entry.logprob, _UNLIKELY)})
        self._offsets[piece.index] = offset
        return result
