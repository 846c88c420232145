"""Wire models of the Responses API's stream events, named as in openai-openapi.json: each has its `type` and the
`sequence_number` that orders the stream. Shapes only; what they carry is in responses.py and response_items.py.

The order of a stream: `response.created`, `response.in_progress`; per output item `response.output_item.added`,
its parts and deltas (`response.content_part.added`, `response.output_text.delta`..., `response.output_text.done`,
`response.content_part.done`; or the reasoning text's; or a call's arguments'), `response.output_item.done`; last
`response.completed`, `response.incomplete` or `response.failed`. `error` carries an error in OpenAI's fields.
"""

from typing import Annotated, Literal

from pydantic import Field

from tokserve.schemas.generation import WireModel
from tokserve.schemas.response_items import OutputItem, OutputTextContent, ReasoningTextContent
from tokserve.schemas.responses import Response

OutputContent = Annotated[OutputTextContent | ReasoningTextContent, Field(discriminator="type")]


class ResponseTopLogProb(WireModel):
    token: str
    logprob: float


class ResponseLogProb(WireModel):
    """A token's logprob in a text event: unlike the output text's `LogProb`, without `bytes`."""

    token: str
    logprob: float
    top_logprobs: list[ResponseTopLogProb] = Field(default_factory=list)


class ResponseCreatedEvent(WireModel):
    type: Literal["response.created"] = "response.created"
    response: Response
    sequence_number: int


class ResponseInProgressEvent(WireModel):
    type: Literal["response.in_progress"] = "response.in_progress"
    response: Response
    sequence_number: int


class ResponseCompletedEvent(WireModel):
    type: Literal["response.completed"] = "response.completed"
    response: Response
    sequence_number: int


class ResponseIncompleteEvent(WireModel):
    type: Literal["response.incomplete"] = "response.incomplete"
    response: Response
    sequence_number: int


class ResponseFailedEvent(WireModel):
    type: Literal["response.failed"] = "response.failed"
    response: Response
    sequence_number: int


class ResponseOutputItemAddedEvent(WireModel):
    type: Literal["response.output_item.added"] = "response.output_item.added"
    output_index: int
    item: OutputItem
    sequence_number: int


class ResponseOutputItemDoneEvent(WireModel):
    type: Literal["response.output_item.done"] = "response.output_item.done"
    output_index: int
    item: OutputItem
    sequence_number: int


class ResponseContentPartAddedEvent(WireModel):
    type: Literal["response.content_part.added"] = "response.content_part.added"
    item_id: str
    output_index: int
    content_index: int
    part: OutputContent
    sequence_number: int


class ResponseContentPartDoneEvent(WireModel):
    type: Literal["response.content_part.done"] = "response.content_part.done"
    item_id: str
    output_index: int
    content_index: int
    part: OutputContent
    sequence_number: int


class ResponseTextDeltaEvent(WireModel):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[ResponseLogProb] = Field(default_factory=list)  # required by the spec, even when not asked for
    sequence_number: int


class ResponseTextDoneEvent(WireModel):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[ResponseLogProb] = Field(default_factory=list)
    sequence_number: int


class ResponseFunctionCallArgumentsDeltaEvent(WireModel):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    item_id: str
    output_index: int
    delta: str
    sequence_number: int


class ResponseFunctionCallArgumentsDoneEvent(WireModel):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    item_id: str
    output_index: int
    name: str
    arguments: str
    sequence_number: int


class ResponseReasoningTextDeltaEvent(WireModel):
    type: Literal["response.reasoning_text.delta"] = "response.reasoning_text.delta"
    item_id: str
    output_index: int
    content_index: int
    delta: str
    sequence_number: int


class ResponseReasoningTextDoneEvent(WireModel):
    type: Literal["response.reasoning_text.done"] = "response.reasoning_text.done"
    item_id: str
    output_index: int
    content_index: int
    text: str
    sequence_number: int


class ResponseErrorEvent(WireModel):
    type: Literal["error"] = "error"
    code: str | None = None
    message: str
    param: str | None = None
    sequence_number: int


ResponseStreamEvent = Annotated[
    ResponseCreatedEvent
    | ResponseInProgressEvent
    | ResponseCompletedEvent
    | ResponseIncompleteEvent
    | ResponseFailedEvent
    | ResponseOutputItemAddedEvent
    | ResponseOutputItemDoneEvent
    | ResponseContentPartAddedEvent
    | ResponseContentPartDoneEvent
    | ResponseTextDeltaEvent
    | ResponseTextDoneEvent
    | ResponseFunctionCallArgumentsDeltaEvent
    | ResponseFunctionCallArgumentsDoneEvent
    | ResponseReasoningTextDeltaEvent
    | ResponseReasoningTextDoneEvent
    | ResponseErrorEvent,
    Field(discriminator="type"),
]
