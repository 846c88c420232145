"""The server's request limits: the body's size and JSON nesting, checked at the ASGI level before any route parses
the body, and the sizes inside a parsed request. Each breach is a `LimitExceeded` whose message names the flag that
sets the limit.

The limits are settings, not schema constants, so they are checked here rather than in `schemas/`.
"""

import asyncio
import re
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokserve.config import Settings
from tokserve.errors import BodyTimeout, InvalidRequest, LimitExceeded, RequestTooLarge, TokservError
from tokserve.schemas import GenerationParams
from tokserve.server.errors import error_json

# Deeper JSON than this is refused: parsing, validating and rendering nested values recurse, and Python's
# recursion limit (1,000 frames) turned 500 levels into a 500 with a traceback of a thousand frames.
MAX_JSON_DEPTH = 400
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_OPENING = {ord("["), ord("{")}
_CLOSING = {ord("]"), ord("}")}
_NOT_BRACKETS = bytes(set(range(256)) - _OPENING - _CLOSING)
# Bodies over this many bytes are scanned in a thread, so a crafted one cannot stall the event loop.
_SCAN_IN_THREAD = 10_000


class BodyLimits:
    """ASGI middleware: a body over `max_bytes` gets a 413 envelope, and no more of it than that is read; one that
    has not arrived whole within `timeout` seconds gets a 408; JSON nested deeper than MAX_JSON_DEPTH gets a 400.

    A declared Content-Length over the limit is refused before reading anything. Otherwise the body is read here,
    chunk by chunk, up to the limit, then handed to the app unchanged; later `receive` calls (the disconnect the
    routes watch for) go straight through. The 413 and the 408 close the connection: what is left of the body must
    not be read as a next request, and a client trickling it must not keep the connection (uvicorn restarts its
    keep-alive timer at every byte).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send, self._too_large())
            return
        try:
            async with asyncio.timeout(self.timeout):
                first = await self._read(receive)
        except TimeoutError:
            error = BodyTimeout(f"The request body did not arrive within {self.timeout:g} s (--body-timeout).")
            await self._refuse(scope, receive, send, error)
            return
        if first is None:
            await self._refuse(scope, receive, send, self._too_large())
            return
        if first["type"] == "http.request" and await _nests_too_deep(first["body"]):
            too_deep = LimitExceeded(f"The request body nests JSON deeper than {MAX_JSON_DEPTH} levels.")
            await error_json(Request(scope), too_deep)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return first

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> Message | None:
        """The whole body as one message, the disconnect if the client left first, None past `max_bytes`."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all: the app sees that
                return message
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return None
            if not message.get("more_body", False):
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

    def _too_large(self) -> RequestTooLarge:
        return RequestTooLarge(
            f"The request body is larger than {self.max_bytes} bytes, this server's limit (--max-body-bytes)."
        )

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, error: TokservError) -> None:
        response = error_json(Request(scope), error)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


async def _nests_too_deep(body: bytes) -> bool:
    """Whether `body`, read as JSON, nests deeper than MAX_JSON_DEPTH (unbalanced brackets: as deep as they open).

    Most bodies have fewer brackets than the limit and cost two counts; the rest drop their strings (whose brackets
    are text) and follow the depth bracket by bracket.
    """
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return False
    if len(body) > _SCAN_IN_THREAD:
        return await asyncio.to_thread(_depth_over, body)
    return _depth_over(body)


def _depth_over(body: bytes) -> bool:
    depth = 0
    for byte in _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS):
        depth += 1 if byte in _OPENING else -1
        if depth > MAX_JSON_DEPTH:
            return True
    return False


def _refuse_over(param: str, what: str, actual: int, limit: int, flag: str) -> None:
    if actual > limit:
        raise LimitExceeded(
            f"{param}: at most {limit} {what} on this server ({flag}); the request has {actual}.", param=param
        )


def check_generation_limits(body: GenerationParams, settings: Settings) -> None:
    """`n` and the stop strings, which both endpoints take."""
    _refuse_over("n", "choices", body.choices, settings.max_n, "--max-n")
    stops = body.stop_list
    _refuse_over("stop", "stop strings", len(stops), settings.max_stop_strings, "--max-stop-strings")
    for index, stop in enumerate(stops):
        param = "stop" if isinstance(body.stop, str) else f"stop.{index}"
        _refuse_over(param, "characters", len(stop), settings.max_stop_chars, "--max-stop-chars")


def check_max_tokens(asked: int | None, settings: Settings, param: str) -> None:
    """A max_tokens the request asks for, against --max-tokens-cap."""
    if asked is not None and settings.max_tokens_cap is not None:
        _refuse_over(param, "tokens", asked, settings.max_tokens_cap, "--max-tokens-cap")


def check_messages(contents: Sequence[str], settings: Settings) -> None:
    """A chat request's messages (their texts), against --max-messages and --max-content-chars."""
    _refuse_over("messages", "messages", len(contents), settings.max_messages, "--max-messages")
    for index, text in enumerate(contents):
        check_text(text, settings, f"messages.{index}.content")


def check_text(text: str, settings: Settings, param: str) -> None:
    """One text of a request (a message's content, a prompt, a suffix), against --max-content-chars; and whole
    characters only: JSON's `\\ud800` escape carries a lone surrogate, which no tokenizer takes."""
    _refuse_over(param, "characters", len(text), settings.max_content_chars, "--max-content-chars")
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as error:
            raise InvalidRequest(
                f"{param}: a lone surrogate (U+{ord(text[error.start]):04X}) at character {error.start} is not text.",
                param=param,
            ) from None


def check_prompts(count: int, settings: Settings) -> None:
    """The prompts of one completions request, against --max-prompts."""
    _refuse_over("prompt", "prompts", count, settings.max_prompts, "--max-prompts")


def check_queue_room(choices: int, max_queue: int, param: str) -> None:
    """A request's choices all wait in the queue at first; more than --max-queue holds can never be served."""
    _refuse_over(param, "choices (all wait in the queue at first)", choices, max_queue, "--max-queue")
