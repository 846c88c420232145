"""The generations one app has in flight, counted so that a shutdown can wait for them (`server/shutdown.py`)."""

import asyncio


class Drain:
    """Generations in flight, and the event that ends those still running when the drain timeout is up.

    Event-loop only: `enter` when a generation is submitted, `leave` once its answer is complete or abandoned.
    """

    def __init__(self) -> None:
        self.in_flight = 0
        self.expired = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True once nothing is in flight, False if `timeout` seconds passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
