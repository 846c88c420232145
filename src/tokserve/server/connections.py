"""Connections that hold on a public port: uvicorn's h11 protocol with a connection cap, a deadline for request
heads and strict request framing (issue 13).

uvicorn alone accepts connections until the process runs out of file descriptors, and its keep-alive timer restarts
on every byte, so idle or slowloris sockets (one byte of a head every second) could hold every descriptor while
/health timed out. `GuardedH11Protocol` changes three things and nothing else:

- At most `ConnectionSlots.capacity` connections are open. One more closes the connection that has waited longest
  for a request head, so idle and trickling sockets cannot hold the slots; when every connection is serving a
  request, the new one is closed at once. (uvicorn's `limit_concurrency` would answer /health 503 instead.)
- A connection waiting for a request head, new or kept alive after a response, must deliver all of it within
  `header_timeout` seconds of starting to wait, however it trickles. uvicorn's idle keep-alive timer stays.
- A head with both Content-Length and Transfer-Encoding, or with a line ended by a bare LF, gets a 400 in the error
  envelope and the connection is closed. h11 reads the first as chunked and keeps the connection, so bytes hidden
  from a proxy that framed by Content-Length would be answered as a second request; it accepts the second.

`throttle_accept_errors` keeps asyncio's "socket.accept() out of system resource", logged once per failed accept
(thousands a second when descriptors run out), to one line per interval. Nothing here knows the app or the engine.
"""

import asyncio
import logging
import re
import resource
import socket
import time
from collections.abc import Iterable
from typing import Any, ClassVar

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol
from uvicorn.server import ServerState

from tokserve.errors import InvalidRequest
from tokserve.server.errors import error_response

logger = logging.getLogger(__name__)

# Descriptors kept for everything but connections: model files, the log, pipes, sockets between accept and slot.
_SPARE_FILES = 64
_MOST_CONNECTIONS = 4096
_LOG_INTERVAL = 10.0
_ACCEPT_ERROR = "socket.accept() out of system resource"
# asyncio accepts up to `backlog` connections per turn of the loop, and a connection reaches its protocol (which can
# free a slot) two turns after its accept: three turns of accepts must fit in the spare descriptors, or accept() fails
# for want of one and asyncio stops accepting for a whole second. uvicorn gives its `backlog` to both asyncio and the
# kernel's listen queue, so `widen_listen_queues` gives the kernel back uvicorn's default.
ACCEPTS_PER_TURN = 8
_LISTEN_QUEUE = 2048
# h11's own end-of-head search (h11/_receivebuffer.py), so the bytes checked are the bytes h11 will parse.
_END_OF_HEAD = re.compile(b"\n\r?\n")


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:  # an infinite soft limit is refused by Linux: leave it
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as error:  # a sandbox may refuse it: serve within the soft limit then
        logger.warning("Could not raise the open-file limit from %d to %d: %s", soft, hard, error)
        return soft
    return hard


def connection_capacity(open_files: int, requested: int | None) -> int:
    """Connections served at once: `requested` or 4,096, at most what the open-file limit leaves room for."""
    fits = _MOST_CONNECTIONS if open_files == resource.RLIM_INFINITY else max(open_files - _SPARE_FILES, 1)
    return min(fits, requested if requested is not None else _MOST_CONNECTIONS)


class LogThrottle:
    """Lets one log record of a recurring event through per interval and counts the ones held back."""

    def __init__(self, interval: float = _LOG_INTERVAL) -> None:
        self.interval = interval
        self._quiet_until = float("-inf")
        self._held = 0

    def let_through(self) -> int | None:
        """None: stay quiet; otherwise log now, with this many held back since the last record."""
        now = time.monotonic()
        if now < self._quiet_until:
            self._held += 1
            return None
        held, self._held, self._quiet_until = self._held, 0, now + self.interval
        return held


def widen_listen_queues(servers: Iterable[asyncio.Server]) -> None:
    """Let the kernel queue `_LISTEN_QUEUE` connections for each listening socket (see `ACCEPTS_PER_TURN`)."""
    for server in servers:
        for listener in server.sockets:
            # A duplicate descriptor of the same socket: listen() sets the queue on the socket, not the descriptor.
            with socket.fromfd(listener.fileno(), listener.family, listener.type) as duplicate:
                duplicate.listen(_LISTEN_QUEUE)


def throttle_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log asyncio's accept errors for want of descriptors once per interval; pass every other error on."""
    previous = loop.get_exception_handler()
    throttle = LogThrottle()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _ACCEPT_ERROR:
            if previous is None:
                loop.default_exception_handler(context)
            else:
                previous(loop, context)
            return
        held = throttle.let_through()
        if held is not None:
            logger.error("%s: %s (%d more since the last such line)", _ACCEPT_ERROR, context.get("exception"), held)

    loop.set_exception_handler(handle)


class ConnectionSlots:
    """The server's connection slots: who holds one, and who waits for a request head, longest waiting first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # Not uvicorn's `server_state.connections`: that keeps a closed connection until its `connection_lost`.
        self._open: set[GuardedH11Protocol] = set()
        self._waiting: dict[GuardedH11Protocol, None] = {}  # insertion order: the longest wait first
        self._evicted = LogThrottle()
        self._refused = LogThrottle()

    def admit(self, connection: "GuardedH11Protocol") -> bool:
        """Give `connection` a slot, if need be closing the longest wait for a head; False: every slot is busy."""
        if len(self._open) >= self.capacity:
            if not self._waiting:
                if (held := self._refused.let_through()) is not None:
                    logger.warning(
                        "%d connections, all serving requests: closing new ones (%d more since the last such line)",
                        self.capacity,
                        held,
                    )
                return False
            oldest = next(iter(self._waiting))
            self.release(oldest)
            oldest.timeout_keep_alive_handler()  # closes it as uvicorn closes an idle keep-alive connection
            if (held := self._evicted.let_through()) is not None:
                logger.warning(
                    "%d connections open: closing the one waiting longest for a request head "
                    "(%d more since the last such line)",
                    self.capacity,
                    held,
                )
        self._open.add(connection)
        return True

    def await_head(self, connection: "GuardedH11Protocol") -> None:
        self._waiting[connection] = None

    def head_received(self, connection: "GuardedH11Protocol") -> None:
        self._waiting.pop(connection, None)

    def release(self, connection: "GuardedH11Protocol") -> None:
        self._open.discard(connection)
        self._waiting.pop(connection, None)


class StrictH11Connection(h11.Connection):
    """h11's server side, refusing the request heads that a proxy in front could frame differently."""

    def __init__(self, max_incomplete_event_size: int | None) -> None:
        if max_incomplete_event_size is None:
            super().__init__(h11.SERVER)
        else:
            super().__init__(h11.SERVER, max_incomplete_event_size)
        self.refusal: str | None = None

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        if self.their_state is h11.IDLE:
            data, _ = self.trailing_data
            end = _END_OF_HEAD.search(data)
            head = data[: end.end()] if end else data  # a JSON body may hold bare newlines; only the head counts
            if b"\n" in head.replace(b"\r\n", b""):
                self._refuse("Request head lines must end with CRLF, not a bare LF.")
        event = super().next_event()
        if isinstance(event, h11.Request):
            names = {name for name, _ in event.headers}
            if b"content-length" in names and b"transfer-encoding" in names:
                self._refuse("A request may not have both Content-Length and Transfer-Encoding.")
        return event

    def _refuse(self, message: str) -> None:
        self.refusal = message
        # uvicorn answers any RemoteProtocolError with `send_400_response` and closes the connection.
        raise h11.RemoteProtocolError(message, error_status_hint=400)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection slot, a deadline for request heads and strict framing."""

    slots: ClassVar[ConnectionSlots]
    header_timeout: ClassVar[float]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._strict = StrictH11Connection(config.h11_max_incomplete_event_size)
        self.conn = self._strict
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.slots.admit(self):
            transport.close()
            return
        self._track_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self.slots.release(self)
        self._end_head_deadline()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        self._track_head()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The websocket protocol takes the transport over (tokserve has no websocket route, so it refuses it).
        self.slots.release(self)
        self._end_head_deadline()
        super().handle_websocket_upgrade(event)

    def send_400_response(self, msg: str) -> None:
        # The error envelope instead of uvicorn's plain text, for h11's refusals as for ours.
        status, envelope = error_response(InvalidRequest(self._strict.refusal or msg))
        body = envelope.model_dump_json().encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        events = (
            h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status]),
            h11.Data(data=body),
            h11.EndOfMessage(),
        )
        self.transport.write(b"".join(self.conn.send(event) or b"" for event in events))
        self.transport.close()

    def _track_head(self) -> None:
        """Start the head deadline when the connection begins to wait for a request head; end it when one came."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self._head_deadline is None:
            # Unlike uvicorn's keep-alive timer, no byte restarts this one: a head trickled forever still times out.
            self._head_deadline = self.loop.call_later(self.header_timeout, self.timeout_keep_alive_handler)
            self.slots.await_head(self)
        elif not waiting and self._head_deadline is not None:
            self._end_head_deadline()
            self.slots.head_received(self)

    def _end_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None


def guarded_h11(capacity: int, header_timeout: float) -> type[GuardedH11Protocol]:
    """The protocol class for one server (its slots are shared by that server's connections only)."""

    class ServerGuardedH11Protocol(GuardedH11Protocol):
        pass

    ServerGuardedH11Protocol.slots = ConnectionSlots(capacity)
    ServerGuardedH11Protocol.header_timeout = header_timeout
    logger.info(
        "At most %d connections; request heads must arrive within %gs of the wait's start", capacity, header_timeout
    )
    return ServerGuardedH11Protocol
