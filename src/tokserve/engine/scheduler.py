"""The waiting line in front of the worker: bounded admission, cancelled requests dropped, counters. No torch here.

The line is FIFO: the worker takes jobs from its head while they fit into the batch, so a big request is not
overtaken forever by small ones. Every method is thread-safe: `admit` runs on the event loop, the rest on the worker
thread, and tests read `counters` from anywhere.
"""

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tokserve.engine.request import GenerationRequest
from tokserve.engine.token_stream import TokenStream
from tokserve.errors import NotReady, Overloaded

Outcome = Literal["finished", "cancelled", "failed"]


@dataclass(frozen=True, slots=True)
class Job:
    """A request and the stream its tokens go to."""

    request: GenerationRequest
    stream: TokenStream


@dataclass(frozen=True, slots=True)
class Counters:
    """A snapshot: requests generating now, waiting, and how the others ended."""

    running: int = 0
    waiting: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0


class Scheduler:
    """FIFO admission into the worker's batch."""

    def __init__(self, max_queue: int) -> None:
        self._max_queue = max_queue
        self._waiting: deque[Job] = deque()
        self._running: list[Job] = []
        self._ended: dict[Outcome, int] = {"finished": 0, "cancelled": 0, "failed": 0}
        self._closed: str | None = None  # why no more jobs are taken: "draining" or "unhealthy"
        self._changed = threading.Condition()

    @property
    def counters(self) -> Counters:
        with self._changed:
            return Counters(len(self._running), len(self._waiting), **self._ended)

    @property
    def is_open(self) -> bool:
        with self._changed:
            return self._closed is None

    def admit(self, *jobs: Job) -> None:
        """Queue jobs (the choices of one response) together, or raise Overloaded when they do not all fit and
        NotReady once closed."""
        with self._changed:
            if self._closed is not None:
                raise NotReady(self._closed)
            if len(self._waiting) + len(jobs) > self._max_queue:
                raise Overloaded(f"{len(self._waiting)} requests are already waiting; retry shortly.")
            self._waiting.extend(jobs)
            self._changed.notify()

    def take(self, fits: Callable[[Job], bool], wait: bool) -> list[Job] | None:
        """Waiting jobs from the head of the line, marked running, for as long as `fits(job)` says yes.

        With `wait`, block while the line is empty. None once closed.
        """
        with self._changed:
            while True:
                self._drop_cancelled()
                if self._closed is not None:
                    return None
                taken: list[Job] = []
                while self._waiting and fits(self._waiting[0]):
                    taken.append(self._waiting.popleft())
                if taken or not wait or self._waiting:
                    self._running += taken
                    return taken
                self._changed.wait()

    def done(self, job: Job, outcome: Outcome) -> None:
        """A running job ended."""
        with self._changed:
            self._running.remove(job)
            self._ended[outcome] += 1

    def drop_cancelled(self) -> None:
        """Forget waiting jobs whose reader left: they never cost a forward pass."""
        with self._changed:
            self._drop_cancelled()

    def close(self) -> list[Job]:
        """Stop taking and handing out jobs (draining); return those still waiting so the caller can fail them."""
        with self._changed:
            self._closed = self._closed or "draining"
            left, self._waiting = list(self._waiting), deque()
            self._changed.notify_all()
            return left

    def abandon(self) -> list[Job]:
        """The worker thread is ending: take no more jobs, and return every job still waiting or running, counted
        as failed, so the caller can fail them. Nothing is left to wait for a thread that is gone."""
        with self._changed:
            self._closed = self._closed or "unhealthy"
            left = [*self._running, *self._waiting]
            self._ended["failed"] += len(left)
            self._running, self._waiting = [], deque()
            self._changed.notify_all()
            return left

    def _drop_cancelled(self) -> None:
        live = deque(job for job in self._waiting if not job.stream.cancelled.is_set())
        self._ended["cancelled"] += len(self._waiting) - len(live)
        self._waiting = live
