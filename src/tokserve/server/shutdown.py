"""Graceful shutdown: on SIGTERM (or a first Ctrl-C) the server drains instead of stopping; a dead model worker
ends the process with status 1 so that its supervisor starts a fresh one.

uvicorn on its own closes idle connections at once, and sse-starlette ends every stream as soon as uvicorn begins to
exit (its `AppStatus` patches `Server.handle_exit`). So `DrainingServer` takes the signal itself: /health says
`draining` and new requests get 503 with Retry-After (the listening socket and open connections stay up, so a load
balancer sees the state instead of a refused connection), generations in flight finish for up to `drain_timeout`
seconds, those still running then end with an error event and `[DONE]`, and only then is uvicorn told to exit.
A second signal cuts the drain short the same way (error events, `[DONE]`, exit 0). uvicorn then waits at most
`_CLOSE_TIMEOUT` for the connections: one whose client stopped reading would otherwise hold the process for ever
(its send waits on a full socket buffer), so its task is cancelled and the process exits all the same.
"""

import asyncio
import logging
import signal
import socket
import sys
from types import FrameType

import uvicorn

from tokserve.config import Settings
from tokserve.server.app import create_app
from tokserve.server.connections import (
    ACCEPTS_PER_TURN,
    connection_capacity,
    guarded_h11,
    raise_open_file_limit,
    throttle_accept_errors,
    widen_listen_queues,
)
from tokserve.server.dependencies import ServerState

logger = logging.getLogger(__name__)

# After the deadline, streams get this long to send their error event before uvicorn closes the connections.
_GRACE_AFTER_DEADLINE = 5.0
# After a second signal: as long, but short enough to count as prompt.
_GRACE_AFTER_SECOND_SIGNAL = 1.0
# Then uvicorn waits this long for connections and tasks before it cancels them (its `timeout_graceful_shutdown`).
_CLOSE_TIMEOUT = 2
# The status the process ends with when the model worker died: not 0, so that `restart: on-failure` and
# Kubernetes start a new one.
_EXIT_WORKER_DIED = 1


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain above in front of its own shutdown, and the exit of an unhealthy one."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self._state = state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()  # a second signal: since Python 3.10 an Event binds to no loop until used
        self.exit_code = 0

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        throttle_accept_errors(asyncio.get_running_loop())
        await super().startup(sockets)
        widen_listen_queues(self.servers)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not calling super() on the first signal: it would start uvicorn's shutdown (and sse-starlette's) now.
        # Nor appending to `_captured_signals`: uvicorn would re-raise the signal after serving, and the process
        # would die of it instead of exiting 0.
        if self._loop is None:  # before serving began: nothing to drain
            self.should_exit = True
            return
        self._loop.call_soon_threadsafe(self._start_drain, signal.Signals(sig).name)

    async def on_tick(self, counter: int) -> bool:
        # uvicorn's tick (every 0.1 s) is where a worker that died is noticed: no thread or poll of our own.
        if self._draining is None and self._state.health == "unhealthy":
            self.exit_code = _EXIT_WORKER_DIED
            self._start_drain("unhealthy")
        return await super().on_tick(counter)

    def _start_drain(self, reason: str) -> None:
        if self._draining is None:
            self._draining = asyncio.get_running_loop().create_task(self._drain(reason))
        elif not self._hurry.is_set():
            logger.warning("%s again: ending %d requests in flight now", reason, self._state.drain.in_flight)
            self._hurry.set()
        else:  # a third signal: no more waiting of any kind
            self.force_exit = self.should_exit = True

    async def _drain(self, reason: str) -> None:
        state = self._state
        if reason == "unhealthy":
            # What waited or ran has been failed by the worker as it died: let those answers out, then exit.
            logger.critical("Unhealthy (the model worker died or never loaded): exiting with status %d", self.exit_code)
            await state.drain.wait_idle(_GRACE_AFTER_DEADLINE)
            self.should_exit = True
            return
        timeout = state.settings.drain_timeout
        state.phase = "draining"
        logger.info("%s: draining %d requests in flight for up to %gs", reason, state.drain.in_flight, timeout)
        if not await self._wait_idle_unless_hurried(timeout):
            logger.warning("Drain ended: ending %d requests still in flight", state.drain.in_flight)
            state.drain.expired.set()
            await state.drain.wait_idle(_GRACE_AFTER_SECOND_SIGNAL if self._hurry.is_set() else _GRACE_AFTER_DEADLINE)
        self.should_exit = True

    async def _wait_idle_unless_hurried(self, timeout: float) -> bool:
        """True once nothing is in flight; False when `timeout` passed or a second signal came first."""
        idle = asyncio.ensure_future(self._state.drain.wait_idle(timeout))
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            await asyncio.wait({idle, hurry}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurry.cancel()
            idle.cancel()
        return idle.done() and not idle.cancelled() and idle.result()


def serve(settings: Settings) -> None:
    """Serve `create_app(settings)` until a signal and its drain end it, or its model worker dies (status 1)."""
    app = create_app(settings)
    capacity = connection_capacity(raise_open_file_limit(), settings.max_connections)
    # log_config None: uvicorn's loggers go through the handler `tokserve serve` set up (plain or JSON).
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        http=guarded_h11(capacity, settings.header_timeout),
        backlog=ACCEPTS_PER_TURN,
        timeout_graceful_shutdown=_CLOSE_TIMEOUT,
    )
    state: ServerState = app.state.tokserve
    server = DrainingServer(config, state)
    server.run()
    if state.engine is not None:
        # Already done by the lifespan, unless a third signal skipped it: stop the worker before the interpreter
        # ends rather than leave its daemon thread inside torch (the old forced exit ended in SIGABRT).
        state.engine.close()
    if server.exit_code:
        sys.exit(server.exit_code)
