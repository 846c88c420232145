"""Graceful shutdown: on SIGTERM (or a first Ctrl-C) the server drains instead of stopping.

uvicorn on its own closes idle connections at once, and sse-starlette ends every stream as soon as uvicorn begins to
exit (its `AppStatus` patches `Server.handle_exit`). So `DrainingServer` takes the signal itself: /health says
`draining` and new requests get 503 with Retry-After (the listening socket and open connections stay up, so a load
balancer sees the state instead of a refused connection), generations in flight finish for up to `drain_timeout`
seconds, those still running then end with an error event and `[DONE]`, and only then is uvicorn told to exit.
A second signal exits at once.
"""

import asyncio
import logging
import signal
from types import FrameType

import uvicorn

from tokserve.config import Settings
from tokserve.server.app import create_app
from tokserve.server.dependencies import ServerState

logger = logging.getLogger(__name__)

# After the deadline, streams get this long to send their error event before uvicorn closes the connections.
_GRACE_AFTER_DEADLINE = 5.0


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain above in front of its own shutdown."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self._state = state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not calling super() on the first signal: it would start uvicorn's shutdown (and sse-starlette's) now.
        # Nor appending to `_captured_signals`: uvicorn would re-raise the signal after serving, and the process
        # would die of it instead of exiting 0.
        if self._draining is not None or self._loop is None:
            self.force_exit = self.should_exit = True
            return
        self._loop.call_soon_threadsafe(self._start_drain, signal.Signals(sig).name)

    def _start_drain(self, signal_name: str) -> None:
        if self._draining is None:
            self._draining = asyncio.get_running_loop().create_task(self._drain(signal_name))

    async def _drain(self, signal_name: str) -> None:
        state, timeout = self._state, self._state.settings.drain_timeout
        state.phase = "draining"
        logger.info("%s: draining %d requests in flight for up to %gs", signal_name, state.drain.in_flight, timeout)
        if not await state.drain.wait_idle(timeout):
            logger.warning("Drain timeout: ending %d requests still in flight", state.drain.in_flight)
            state.drain.expired.set()
            await state.drain.wait_idle(_GRACE_AFTER_DEADLINE)
        self.should_exit = True


def serve(settings: Settings) -> None:
    """Serve `create_app(settings)` until a signal and its drain end it."""
    app = create_app(settings)
    # log_config None: uvicorn's loggers go through the handler `tokserve serve` set up (plain or JSON).
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, log_level=settings.log_level)
    DrainingServer(config, app.state.tokserve).run()
