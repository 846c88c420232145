"""The waiting line: FIFO, bounded, taken from the head while jobs fit, cancelled requests dropped, counters."""

import asyncio
from collections.abc import Iterator

import pytest

from tokserve.engine import GenerationRequest, SamplingParams, TokenStream
from tokserve.engine.scheduler import Job, Scheduler
from tokserve.errors import NotReady, Overloaded


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def job(loop: asyncio.AbstractEventLoop, name: str) -> Job:
    return Job(GenerationRequest(name, (1, 2), 4, SamplingParams()), TokenStream(loop))


def test_fifo_and_counters(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = Scheduler(max_queue=4)
    first, second = job(loop, "a"), job(loop, "b")
    scheduler.admit(first)
    scheduler.admit(second)
    assert scheduler.counters.waiting == 2
    assert scheduler.take(lambda _: True, wait=True) == [first, second]
    assert (scheduler.counters.running, scheduler.counters.waiting) == (2, 0)
    scheduler.done(first, "finished")
    scheduler.done(second, "failed")
    counters = scheduler.counters
    assert (counters.running, counters.waiting, counters.finished, counters.failed) == (0, 0, 1, 1)


def test_full_line_is_overloaded(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = Scheduler(max_queue=1)
    scheduler.admit(job(loop, "a"))
    with pytest.raises(Overloaded):
        scheduler.admit(job(loop, "b"))


def test_cancelled_waiting_jobs_are_dropped(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = Scheduler(max_queue=4)
    gone, kept, also_gone = job(loop, "a"), job(loop, "b"), job(loop, "c")
    for each in (gone, kept, also_gone):
        scheduler.admit(each)
    gone.stream.cancel()
    scheduler.drop_cancelled()
    assert (scheduler.counters.waiting, scheduler.counters.cancelled) == (2, 1)
    also_gone.stream.cancel()
    assert scheduler.take(lambda _: True, wait=False) == [kept]
    scheduler.done(kept, "finished")
    assert scheduler.counters.cancelled == 2 and scheduler.counters.waiting == 0


def test_close_hands_back_waiting_jobs(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = Scheduler(max_queue=4)
    waiting = job(loop, "a")
    scheduler.admit(waiting)
    assert scheduler.close() == [waiting]
    assert scheduler.take(lambda _: True, wait=True) is None
    with pytest.raises(NotReady, match="draining"):
        scheduler.admit(job(loop, "b"))


def test_abandon_hands_back_running_and_waiting_jobs_as_failed(loop: asyncio.AbstractEventLoop) -> None:
    """The worker thread's last act when it dies: nothing may go on waiting for it."""
    scheduler = Scheduler(max_queue=4)
    running, waiting = job(loop, "a"), job(loop, "b")
    scheduler.admit(running, waiting)
    assert scheduler.take(lambda each: each is running, wait=True) == [running]
    assert scheduler.abandon() == [running, waiting]
    counters = scheduler.counters
    assert (counters.running, counters.waiting, counters.failed) == (0, 0, 2)
    assert not scheduler.is_open and scheduler.take(lambda _: True, wait=True) is None
    with pytest.raises(NotReady, match="unhealthy"):
        scheduler.admit(job(loop, "c"))


def test_take_stops_at_the_first_job_that_does_not_fit(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = Scheduler(max_queue=4)
    small, big, small_again = job(loop, "a"), job(loop, "big"), job(loop, "c")
    for each in (small, big, small_again):
        scheduler.admit(each)
    assert scheduler.take(lambda each: each is not big, wait=True) == [small]
    assert scheduler.counters.waiting == 2  # the big one keeps its place at the head: no overtaking
    assert scheduler.take(lambda _: True, wait=False) == [big, small_again]
