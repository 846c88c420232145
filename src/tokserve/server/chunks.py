"""Wire objects of one response: every chunk of a request carries the same `id` and `created`.

`ChatChunks` and `CompletionChunks` differ only in shape; `streaming.py` drives either through `Chunks`.
"""

import time
from dataclasses import dataclass
from typing import Protocol

from tokserve.schemas import (
    ChatCompletionChoice,
    ChatCompletionResponseMessage,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponseDelta,
    CompletionChoice,
    CompletionUsage,
    CreateChatCompletionResponse,
    CreateChatCompletionStreamResponse,
    CreateCompletionResponse,
    FinishReason,
    WireModel,
)


@dataclass(frozen=True, slots=True)
class Finish:
    """How the text ended, and what it cost."""

    reason: FinishReason
    stop_reason: str | None
    usage: CompletionUsage


class Chunks(Protocol):
    def start(self) -> str | None: ...
    def content(self, text: str) -> str: ...
    def finish(self, finish: Finish) -> str: ...
    def usage(self, usage: CompletionUsage) -> str: ...
    def response(self, text: str, finish: Finish) -> WireModel: ...


class ChatChunks:
    """`chat.completion.chunk` objects and the `chat.completion` response."""

    def __init__(self, request_id: str, model: str) -> None:
        self._id, self._model, self._created = request_id, model, int(time.time())

    def _chunk(self, choices: list[ChatCompletionStreamChoice], usage: CompletionUsage | None = None) -> str:
        return CreateChatCompletionStreamResponse(
            id=self._id, created=self._created, model=self._model, choices=choices, usage=usage
        ).model_dump_json()

    def start(self) -> str:
        delta = ChatCompletionStreamResponseDelta(role="assistant", content="")
        return self._chunk([ChatCompletionStreamChoice(delta=delta)])

    def content(self, text: str) -> str:
        return self._chunk([ChatCompletionStreamChoice(delta=ChatCompletionStreamResponseDelta(content=text))])

    def finish(self, finish: Finish) -> str:
        choice = ChatCompletionStreamChoice(
            delta=ChatCompletionStreamResponseDelta(), finish_reason=finish.reason, stop_reason=finish.stop_reason
        )
        return self._chunk([choice])

    def usage(self, usage: CompletionUsage) -> str:
        return self._chunk([], usage)

    def response(self, text: str, finish: Finish) -> CreateChatCompletionResponse:
        choice = ChatCompletionChoice(
            message=ChatCompletionResponseMessage(content=text),
            finish_reason=finish.reason,
            stop_reason=finish.stop_reason,
        )
        return CreateChatCompletionResponse(
            id=self._id, created=self._created, model=self._model, choices=[choice], usage=finish.usage
        )


class CompletionChunks:
    """`text_completion` objects, streamed or whole: the same shape either way."""

    def __init__(self, request_id: str, model: str) -> None:
        self._id, self._model, self._created = request_id, model, int(time.time())

    def _object(
        self, choices: list[CompletionChoice], usage: CompletionUsage | None = None
    ) -> CreateCompletionResponse:
        return CreateCompletionResponse(
            id=self._id, created=self._created, model=self._model, choices=choices, usage=usage
        )

    def start(self) -> None:
        return None

    def content(self, text: str) -> str:
        return self._object([CompletionChoice(text=text)]).model_dump_json()

    def finish(self, finish: Finish) -> str:
        choice = CompletionChoice(text="", finish_reason=finish.reason, stop_reason=finish.stop_reason)
        return self._object([choice]).model_dump_json()

    def usage(self, usage: CompletionUsage) -> str:
        return self._object([], usage).model_dump_json()

    def response(self, text: str, finish: Finish) -> CreateCompletionResponse:
        choice = CompletionChoice(text=text, finish_reason=finish.reason, stop_reason=finish.stop_reason)
        return self._object([choice], finish.usage)
