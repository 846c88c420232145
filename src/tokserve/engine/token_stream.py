"""The bridge, the one place where the worker thread meets the event loop: one request's token events."""

import asyncio
import threading
from collections.abc import AsyncIterator

from tokserve.engine.crossing import TokenEvent


class TokenStream:
    """One request's TokenEvents: pushed by the worker, read by one coroutine on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: asyncio.Queue[TokenEvent] = asyncio.Queue()  # unbounded: the worker never waits on a client
        self.cancelled = threading.Event()  # set on the loop; the worker checks it before each step
        self.completed = False  # set before `cancelled` when the reader stopped because it has all it needs

    def push(self, event: TokenEvent) -> None:
        """Worker thread: never blocks, never awaits."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is closed (the server stopped mid-generation): nobody reads this any more
            self.cancelled.set()

    def stop(self) -> None:
        """The reader found a stop string: generation ends at the next step and counts as finished."""
        self.completed = True
        self.cancelled.set()

    def cancel(self) -> None:
        """The reader is gone (disconnect, error): generation ends at the next step, or never starts."""
        self.cancelled.set()

    async def events(self) -> AsyncIterator[TokenEvent]:
        """The events in order, up to and including the last one."""
        while True:
            event = await self._events.get()
            yield event
            if event.is_last:
                return
