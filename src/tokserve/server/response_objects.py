"""The Responses API's wire shape of one answer: `ResponseEvents` renders a choice's typed deltas as the spec's
stream events (each numbered, each named) or as one `Response`, and keeps the answer in the store when asked.

An item opens when the first delta of its kind comes (reasoning, a message, each function call) and closes, with its
`.done` events, when another opens or the choice ends. Streams end with `response.completed` or
`response.incomplete`; a failure after the start is `response.failed`. There is no `[DONE]` here: not in the spec.
"""

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import BaseModel
from sse_starlette import ServerSentEvent

from tokserve.engine import Vocabulary
from tokserve.schemas import CompletionUsage, ErrorResponse
from tokserve.schemas.response_events import (
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseFailedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseLogProb,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseReasoningTextDeltaEvent,
    ResponseReasoningTextDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseTopLogProb,
)
from tokserve.schemas.response_items import (
    FunctionToolCall,
    ItemStatus,
    LogProb,
    OutputMessage,
    OutputTextContent,
    ReasoningItem,
    ReasoningTextContent,
    TopLogProb,
)
from tokserve.schemas.responses import (
    IncompleteDetails,
    InputTokensDetails,
    Response,
    ResponseError,
    ResponseUsage,
)
from tokserve.server.chunks import Event
from tokserve.server.deltas import Delta, Finish, Logprob, Piece, ReasoningPiece, WholeChoice
from tokserve.server.responses import new_id

Item = OutputMessage | ReasoningItem | FunctionToolCall


class ResponseEvents:
    """One response, streamed or whole. `template` is the Response as the request set it up (id, model, echoed
    settings); `keep` receives the final Response when the answer is over (`closed`), for the store."""

    def __init__(
        self,
        template: Response,
        vocabulary: Vocabulary,
        logprobs: bool,
        keep: Callable[[Response], Awaitable[None]],
    ) -> None:
        self._response = template
        self._vocabulary, self._logprobs = vocabulary, logprobs
        self._keep = keep
        self._sequence = 0
        self._items: list[Item] = []
        self._open: Item | None = None
        self._finish: Finish | None = None
        self.final: Response | None = None  # the response as it ended, streamed or not

    # Streams

    def start(self, index: int) -> list[Event]:
        return [
            self._event(ResponseCreatedEvent, response=self._response),
            self._event(ResponseInProgressEvent, response=self._response),
        ]

    def delta(self, delta: Delta) -> list[Event]:
        if isinstance(delta, Piece):
            return self._text(delta)
        if isinstance(delta, ReasoningPiece):
            events = self._opening(ReasoningItem, lambda: ReasoningItem(id=new_id("rs"), content=[_reasoning("")]))
            item = self._open
            assert isinstance(item, ReasoningItem) and item.content is not None
            item.content[0].text += delta.text
            return [*events, self._event(ResponseReasoningTextDeltaEvent, **self._at(item), delta=delta.text)]
        events = []
        if delta.id is not None:
            events = self._close()
            call = FunctionToolCall(id=new_id("fc"), call_id=delta.id, name=delta.name or "", arguments="")
            events += self._add(call.model_copy(update={"status": "in_progress"}))
        item = self._open
        assert isinstance(item, FunctionToolCall)
        item.arguments += delta.arguments
        if delta.arguments:
            events.append(self._event(ResponseFunctionCallArgumentsDeltaEvent, **self._at(item), delta=delta.arguments))
        return events

    def finish(self, finish: Finish) -> list[Event]:
        self._finish = finish
        return self._close()

    def end(self, usage: CompletionUsage, include_usage: bool) -> list[Event]:
        self.final = self._ended(usage)
        kind = ResponseIncompleteEvent if self.final.status == "incomplete" else ResponseCompletedEvent
        return [self._event(kind, response=self.final)]

    def failed(self, error: ErrorResponse) -> list[Event]:
        failure = ResponseError(code="server_error", message=error.error.message)
        self.final = self._response.model_copy(update={"status": "failed", "error": failure, "output": self._items})
        return [self._event(ResponseFailedEvent, response=self.final)]

    def done(self) -> list[Event]:
        return []

    async def closed(self, failure: str | None) -> None:
        """The answer is over: keep it (a stream whose client left, as it stood, `incomplete`)."""
        if failure == "cancelled":
            self.final = self._response.model_copy(update={"status": "incomplete", "output": self._items})
        if self.final is not None:
            await self._keep(self.final)

    # Whole

    def response(self, choices: Sequence[WholeChoice], usage: CompletionUsage) -> Response:
        (choice,) = choices
        if choice.reasoning is not None:
            self._items.append(ReasoningItem(id=new_id("rs"), content=[_reasoning(choice.reasoning)]))
        status: ItemStatus = "incomplete" if choice.finish.reason == "length" else "completed"
        if choice.content or not choice.calls:
            content = OutputTextContent(text=choice.content, logprobs=self._output_logprobs(choice.logprobs))
            self._items.append(OutputMessage(id=new_id("msg"), status=status, content=[content]))
        for call_id, name, arguments in choice.calls or ():
            self._items.append(
                FunctionToolCall(id=new_id("fc"), call_id=call_id, name=name, arguments=arguments, status="completed")
            )
        self._finish = choice.finish
        self.final = self._ended(usage)
        return self.final

    # Parts

    def _text(self, piece: Piece) -> list[Event]:
        events = self._opening(OutputMessage, lambda: OutputMessage(id=new_id("msg"), status="in_progress", content=[]))
        item = self._open
        assert isinstance(item, OutputMessage)
        if not item.content:
            item.content.append(OutputTextContent(text=""))
            part = OutputTextContent(text="")
            events.append(self._event(ResponseContentPartAddedEvent, **self._at(item), part=part))
        content = item.content[0]
        content.text += piece.text
        content.logprobs += self._output_logprobs(piece.logprobs)
        logprobs = self._delta_logprobs(piece.logprobs)
        if piece.text or logprobs:
            events.append(self._event(ResponseTextDeltaEvent, **self._at(item), delta=piece.text, logprobs=logprobs))
        return events

    def _opening(self, kind: type[Item], make: Any) -> list[Event]:
        if isinstance(self._open, kind):
            return []
        return [*self._close(), *self._add(make())]

    def _add(self, item: Item) -> list[Event]:
        self._items.append(item)
        self._open = item
        return [self._event(ResponseOutputItemAddedEvent, output_index=len(self._items) - 1, item=item)]

    def _close(self) -> list[Event]:
        item, self._open = self._open, None
        if item is None:
            return []
        status: ItemStatus = "completed"
        if self._finish is not None and self._finish.reason == "length":
            status = "incomplete"
        events: list[Event] = []
        if isinstance(item, OutputMessage):
            part = item.content[0] if item.content else OutputTextContent(text="")
            logprobs = [ResponseLogProb(token=p.token, logprob=p.logprob) for p in part.logprobs]
            events.append(self._event(ResponseTextDoneEvent, **self._at(item), text=part.text, logprobs=logprobs))
            events.append(self._event(ResponseContentPartDoneEvent, **self._at(item), part=part))
        elif isinstance(item, ReasoningItem) and item.content:
            part_text = item.content[0].text
            events.append(self._event(ResponseReasoningTextDoneEvent, **self._at(item), text=part_text))
        elif isinstance(item, FunctionToolCall):
            done = {"name": item.name, "arguments": item.arguments}
            events.append(self._event(ResponseFunctionCallArgumentsDoneEvent, **self._at(item, content=False), **done))
        if not isinstance(item, ReasoningItem):
            item.status = status
        index = self._items.index(item)
        events.append(self._event(ResponseOutputItemDoneEvent, output_index=index, item=item))
        return events

    def _at(self, item: Item, content: bool = True) -> dict[str, Any]:
        place: dict[str, Any] = {"item_id": item.id, "output_index": self._items.index(item)}
        return {**place, "content_index": 0} if content else place

    def _ended(self, usage: CompletionUsage) -> Response:
        cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
        wire_usage = ResponseUsage(
            input_tokens=usage.prompt_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=cached),
            output_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        )
        cut = self._finish is not None and self._finish.reason == "length"
        return self._response.model_copy(
            update={
                "status": "incomplete" if cut else "completed",
                "incomplete_details": IncompleteDetails(reason="max_output_tokens") if cut else None,
                "completed_at": None if cut else int(time.time()),
                "output": self._items,
                "usage": wire_usage,
            }
        )

    def _event(self, kind: type[BaseModel], **fields: Any) -> ServerSentEvent:
        event = kind(**fields, sequence_number=self._sequence)
        self._sequence += 1
        return ServerSentEvent(data=event.model_dump_json(), event=getattr(event, "type"))  # noqa: B009

    def _output_logprobs(self, logprobs: Sequence[Logprob]) -> list[LogProb]:
        if not self._logprobs:
            return []
        result = []
        for token_id, entry, silent in logprobs:
            text, raw = ("", b"") if silent else self._token(token_id)
            top = [TopLogProb(token=t, logprob=lp, bytes=list(b)) for t, b, lp in self._alternatives(entry)]
            logprob = max(entry.logprob, -9999.0) if entry else -9999.0
            result.append(LogProb(token=text, logprob=logprob, bytes=list(raw), top_logprobs=top))
        return result

    def _delta_logprobs(self, logprobs: Sequence[Logprob]) -> list[ResponseLogProb]:
        return [
            ResponseLogProb(
                token=entry.token,
                logprob=entry.logprob,
                top_logprobs=[ResponseTopLogProb(token=top.token, logprob=top.logprob) for top in entry.top_logprobs],
            )
            for entry in self._output_logprobs(logprobs)
        ]

    def _alternatives(self, entry: Any) -> list[tuple[str, bytes, float]]:
        if entry is None:
            return []
        return [(*self._token(token_id), max(logprob, -9999.0)) for token_id, logprob in entry.top]

    def _token(self, token_id: int) -> tuple[str, bytes]:
        text, raw = self._vocabulary.token(token_id)
        return text, raw if raw is not None else text.encode()


def _reasoning(text: str) -> ReasoningTextContent:
    return ReasoningTextContent(text=text)


def answer_messages(response: Response) -> list[dict[str, Any]]:
    """A response's output as the chat messages that continue its conversation."""
    text = "".join(part.text for item in response.output if isinstance(item, OutputMessage) for part in item.content)
    calls = [
        {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
        for item in response.output
        if isinstance(item, FunctionToolCall)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    return [{**message, "tool_calls": calls} if calls else message]


def dumped(items: Sequence[BaseModel]) -> str:
    return json.dumps([item.model_dump(mode="json") for item in items])
