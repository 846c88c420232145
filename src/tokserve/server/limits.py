"""The server's request limits: the body size, checked at the ASGI level before any route reads the body, and the
sizes inside a parsed request. Each breach is a `LimitExceeded` whose message names the flag that sets the limit.

The limits are settings, not schema constants, so they are checked here rather than in `schemas/`.
"""

from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokserve.config import Settings
from tokserve.errors import LimitExceeded, RequestTooLarge
from tokserve.schemas import GenerationParams
from tokserve.server.errors import error_json


class BodySizeLimit:
    """ASGI middleware: a body over `max_bytes` gets a 413 envelope, and no more of it than that is read.

    A declared Content-Length over the limit is refused before reading anything. Otherwise the body is read here,
    chunk by chunk, up to the limit, then handed to the app unchanged; later `receive` calls (the disconnect the
    routes watch for) go straight through.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all: the app sees that
                first = message
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return first

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = RequestTooLarge(
            f"The request body is larger than {self.max_bytes} bytes, this server's limit (--max-body-bytes)."
        )
        await error_json(Request(scope), error)(scope, receive, send)


def _refuse_over(param: str, what: str, actual: int, limit: int, flag: str) -> None:
    if actual > limit:
        raise LimitExceeded(
            f"{param}: at most {limit} {what} on this server ({flag}); the request has {actual}.", param=param
        )


def check_generation_limits(body: GenerationParams, settings: Settings) -> None:
    """`n` and the stop strings, which both endpoints take."""
    _refuse_over("n", "choices", body.choices, settings.max_n, "--max-n")
    _refuse_over("stop", "stop strings", len(body.stop_strings), settings.max_stop_strings, "--max-stop-strings")
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
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
    """One text of a request (a message's content, a prompt, a suffix), against --max-content-chars."""
    _refuse_over(param, "characters", len(text), settings.max_content_chars, "--max-content-chars")
