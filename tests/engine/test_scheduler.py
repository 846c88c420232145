"""The scheduler: a FIFO waiting line, bounded; each step's plan (decode chunks, admission, prompts read in fair
shares); the prefix cache at admission; preemption on block shortage; cancellation, close, abandon, counters.

The worker's part is played by hand: `compute` advances a step's chunks and appends a sampled token to each
sequence that finished reading, as the worker does after the forward pass.
"""

import asyncio
import threading
from collections.abc import Iterator

import pytest

from tokserve.engine import GenerationRequest, SamplingParams, TokenStream
from tokserve.engine.blocks import BlockAllocator
from tokserve.engine.scheduler import Chunk, Job, Scheduler, Sequence, StepLimits, token_cost
from tokserve.errors import NotReady, Overloaded

SCALE = 1e6  # attention is cheap at these lengths: a prompt token costs about one unit
PLENTY = 1e9  # prefill units that never limit a step


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def job(
    loop: asyncio.AbstractEventLoop,
    name: str,
    prompt: tuple[int, ...] | None = None,
    prompt_logprobs: int | None = None,
) -> Job:
    """A job; its prompt is two tokens of its own unless given (identical prompts wait for each other)."""
    prompt = (ord(name), 0) if prompt is None else prompt
    request = GenerationRequest(name, prompt, 16, SamplingParams(), prompt_logprobs=prompt_logprobs)
    return Job(request, TokenStream(loop))


def new_scheduler(
    *,
    blocks: int = 64,
    block_size: int = 4,
    prefix_caching: bool = True,
    max_queue: int = 8,
    max_running: int = 8,
    prefill_tokens: int = 512,
    prompt_logprobs_tokens: int = 256,
) -> Scheduler:
    return Scheduler(
        max_queue,
        StepLimits(max_running, prefill_tokens, prompt_logprobs_tokens),
        BlockAllocator(blocks, block_size, prefix_caching),
    )


def plan(scheduler: Scheduler, units: float = PLENTY) -> tuple[list[Chunk], list[Sequence]]:
    """One step's plan; the scheduler must have something running or waiting (else `plan` blocks)."""
    planned = scheduler.plan(lambda rows: units, SCALE)
    assert planned is not None
    return planned


def spans(chunks: list[Chunk]) -> list[tuple[str, int, int]]:
    """The chunks as (request id, start, end), in plan order."""
    return [(chunk.sequence.job.request.request_id, chunk.start, chunk.end) for chunk in chunks]


def chunk_of(chunks: list[Chunk], of: Job) -> Chunk:
    [chunk] = [chunk for chunk in chunks if chunk.sequence.job is of]
    return chunk


def compute(scheduler: Scheduler, chunks: list[Chunk]) -> None:
    """The worker's part of a step: the chunks are computed, and those that finished reading sample a token."""
    for chunk in chunks:
        scheduler.advance(chunk)
        if chunk.samples:
            chunk.sequence.tokens.append(1000 + chunk.sequence.generated)


def step(scheduler: Scheduler, units: float = PLENTY) -> list[Chunk]:
    """Plan a step that fails nothing, and compute it."""
    chunks, unfit = plan(scheduler, units)
    assert unfit == []
    compute(scheduler, chunks)
    return chunks


# The waiting line and the counters


def test_fifo_and_counters(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler(max_running=2)
    first, second, third = job(loop, "a"), job(loop, "b"), job(loop, "c")
    scheduler.admit(first)
    scheduler.admit(second)
    scheduler.admit(third)
    assert (scheduler.counters.running, scheduler.counters.waiting) == (0, 3)
    chunks = step(scheduler)
    assert spans(chunks) == [("a", 0, 2), ("b", 0, 2)]  # in arrival order; the third waits for room
    assert (scheduler.counters.running, scheduler.counters.waiting) == (2, 1)
    scheduler.done(chunks[0].sequence, "finished")
    scheduler.done(chunks[1].sequence, "failed")
    assert scheduler.running() == []
    assert spans(step(scheduler)) == [("c", 0, 2)]
    counters = scheduler.counters
    assert (counters.running, counters.waiting, counters.finished, counters.failed) == (1, 0, 1, 1)


def test_full_line_is_overloaded(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler(max_queue=2)
    scheduler.admit(job(loop, "a"))
    with pytest.raises(Overloaded):
        scheduler.admit(job(loop, "b"), job(loop, "c"))  # the choices of one response go in together or not at all
    assert scheduler.counters.waiting == 1
    scheduler.admit(job(loop, "b"))
    with pytest.raises(Overloaded):
        scheduler.admit(job(loop, "c"))


def test_plan_waits_for_a_job(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler()
    planned: list[tuple[list[Chunk], list[Sequence]] | None] = []
    thread = threading.Thread(target=lambda: planned.append(scheduler.plan(lambda rows: PLENTY, SCALE)), daemon=True)
    thread.start()
    thread.join(timeout=0.1)
    assert thread.is_alive()  # nothing to plan yet
    scheduler.admit(job(loop, "a"))
    thread.join(timeout=10)
    assert not thread.is_alive()
    [result] = planned
    assert result is not None and spans(result[0]) == [("a", 0, 2)]


def test_cancelled_waiting_jobs_are_dropped(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler(max_running=1)
    gone, kept, also_gone = job(loop, "a"), job(loop, "b"), job(loop, "c")
    for each in (gone, kept, also_gone):
        scheduler.admit(each)
    gone.stream.cancel()
    assert spans(step(scheduler)) == [("b", 0, 2)]  # never admitted, so never computed
    assert (scheduler.counters.waiting, scheduler.counters.cancelled) == (1, 1)
    also_gone.stream.cancel()
    assert spans(step(scheduler)) == [("b", 2, 3)]
    assert (scheduler.counters.waiting, scheduler.counters.cancelled) == (0, 2)


def test_cancelled_running_sequences_are_retired_and_free_their_blocks(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler(blocks=9)  # 8 usable blocks of 4 tokens
    gone, stopped, kept = (
        job(loop, name, tuple(range(start, start + 8))) for name, start in (("a", 0), ("b", 10), ("c", 20))
    )
    scheduler.admit(gone, stopped, kept)
    chunks = step(scheduler)
    assert scheduler.counters.kv_cache_usage == 6 / 8
    gone.stream.cancel()  # the client left
    stopped.stream.stop()  # the reader found a stop string: it has what it needs
    assert spans(step(scheduler)) == [("c", 8, 9)]
    counters = scheduler.counters
    assert (counters.running, counters.cancelled, counters.finished) == (1, 1, 1)
    assert counters.kv_cache_usage == 3 / 8  # only the kept one's blocks are held
    assert chunk_of(chunks, gone).sequence.blocks == []


def test_close_hands_back_waiting_jobs(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler(max_running=1)
    running, waiting = job(loop, "a"), job(loop, "b")
    scheduler.admit(running, waiting)
    step(scheduler)
    assert scheduler.close() == [waiting]
    assert not scheduler.is_open
    assert scheduler.plan(lambda rows: PLENTY, SCALE) is None  # the running one is the worker's to end
    assert scheduler.counters.running == 1
    with pytest.raises(NotReady, match="draining"):
        scheduler.admit(job(loop, "c"))


def test_close_wakes_a_waiting_plan() -> None:
    scheduler = new_scheduler()
    planned: list[tuple[list[Chunk], list[Sequence]] | None] = []
    thread = threading.Thread(target=lambda: planned.append(scheduler.plan(lambda rows: PLENTY, SCALE)), daemon=True)
    thread.start()
    thread.join(timeout=0.1)
    assert thread.is_alive()
    scheduler.close()
    thread.join(timeout=10)
    assert not thread.is_alive() and planned == [None]


def test_abandon_hands_back_running_and_waiting_jobs_as_failed(loop: asyncio.AbstractEventLoop) -> None:
    """The worker thread's last act when it dies: nothing may go on waiting for it."""
    scheduler = new_scheduler(max_running=1)
    running, waiting = job(loop, "a"), job(loop, "b")
    scheduler.admit(running, waiting)
    assert spans(step(scheduler)) == [("a", 0, 2)]
    assert scheduler.abandon() == [running, waiting]
    counters = scheduler.counters
    assert (counters.running, counters.waiting, counters.failed) == (0, 0, 2)
    assert not scheduler.is_open and scheduler.plan(lambda rows: PLENTY, SCALE) is None
    with pytest.raises(NotReady, match="unhealthy"):
        scheduler.admit(job(loop, "c"))


# A step's plan


def test_decode_chunks_come_first_and_set_the_prefill_units(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler()
    decoding, reading = job(loop, "a"), job(loop, "b", (5, 6, 7))
    scheduler.admit(decoding)
    step(scheduler)
    scheduler.admit(reading)
    asked: list[int] = []

    def units(rows: int) -> float:
        asked.append(rows)
        return PLENTY

    planned = scheduler.plan(units, SCALE)
    assert planned is not None
    assert spans(planned[0]) == [("a", 2, 3), ("b", 0, 3)]
    assert asked == [1]  # the prompt reading was sized knowing one row decodes beside it
    assert planned[0][0].samples and planned[0][1].samples


def test_a_prompt_is_read_in_chunks_of_at_most_prefill_tokens(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler(prefill_tokens=4)
    long = job(loop, "a", tuple(range(1, 11)))
    scheduler.admit(long)
    assert [(chunk.start, chunk.end, chunk.samples) for chunk in step(scheduler)] == [(0, 4, False)]
    assert [(chunk.start, chunk.end, chunk.samples) for chunk in step(scheduler)] == [(4, 8, False)]
    [last], _ = plan(scheduler)
    assert (last.start, last.end, last.samples) == (8, 10, True)
    compute(scheduler, [last])
    assert len(last.sequence.blocks) == 3  # 10 tokens in blocks of 4
    assert last.sequence.tokens[10:] == [1000]


def test_a_prompt_is_read_as_far_as_the_units_pay_for(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler()
    scheduler.admit(job(loop, "a", tuple(range(1, 41))))
    ends = []
    for units in (10.5, 10.5, 3.0):
        [chunk] = step(scheduler, units)
        count = chunk.end - chunk.start
        assert token_cost(chunk.start, count, SCALE) <= units < token_cost(chunk.start, count + 1, SCALE)
        ends.append(chunk.end)
    assert ends == [10, 20, 22]


def test_a_step_reads_at_least_one_prompt_token(loop: asyncio.AbstractEventLoop) -> None:
    """However few units a step has, a prompt is never stalled."""
    scheduler = new_scheduler()
    scheduler.admit(job(loop, "a", (1, 2, 3)))
    assert spans(step(scheduler, units=0.0)) == [("a", 0, 1)]


def test_a_short_prompt_is_read_beside_a_long_one(loop: asyncio.AbstractEventLoop) -> None:
    """Prompts being read share the step's units equally: a short one arriving is not stuck behind a long one."""
    scheduler = new_scheduler()
    long, short = job(loop, "long", tuple(range(1, 101))), job(loop, "short", (7, 8, 9, 10, 11))
    scheduler.admit(long)
    assert spans(step(scheduler, units=16.5)) == [("long", 0, 16)]
    scheduler.admit(short)
    chunks, _ = plan(scheduler, units=16.5)
    assert spans(chunks) == [("long", 16, 24), ("short", 0, 5)]  # half the units each; the short one needs less
    assert chunk_of(chunks, short).samples


def test_a_share_a_prompt_does_not_need_goes_to_the_next(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler()
    short, long = job(loop, "short", (7, 8, 9, 10, 11)), job(loop, "long", tuple(range(1, 101)))
    scheduler.admit(short, long)
    assert spans(step(scheduler, units=16.5)) == [("short", 0, 5), ("long", 0, 11)]


def test_max_running_bounds_admission(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler(max_running=2)
    jobs = [job(loop, name) for name in "abc"]
    scheduler.admit(*jobs)
    chunks = step(scheduler)
    assert [chunk.sequence.job for chunk in chunks] == jobs[:2]
    assert spans(step(scheduler)) == [("a", 2, 3), ("b", 2, 3)]
    assert scheduler.counters.waiting == 1
    scheduler.done(chunks[0].sequence, "finished")
    assert spans(step(scheduler)) == [("b", 3, 4), ("c", 0, 2)]


def test_admission_keeps_a_free_block_for_each_running_sequence(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler(blocks=5, block_size=2)  # 4 usable blocks of 2 tokens
    first, second = job(loop, "a", (1, 2, 3, 4, 5)), job(loop, "b", (6, 7))
    scheduler.admit(first)
    [reading] = step(scheduler)  # 3 blocks held: one left
    scheduler.admit(second)
    assert spans(step(scheduler)) == [("a", 5, 6)]
    assert scheduler.counters.waiting == 1  # the last block is the running one's to grow into
    scheduler.done(reading.sequence, "finished")
    assert spans(step(scheduler)) == [("b", 0, 2)]


# The prefix cache


def test_a_prompt_reuses_the_full_blocks_an_earlier_one_computed(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler()
    first_prompt = tuple(range(1, 11))  # two full blocks of 4, then 2 tokens
    first, second = job(loop, "a", first_prompt), job(loop, "b", (*first_prompt, 77, 78))
    scheduler.admit(first)
    [read] = step(scheduler)
    scheduler.admit(second)
    chunks = step(scheduler)
    assert spans(chunks) == [("a", 10, 11), ("b", 8, 12)]  # the partial third block was never cached
    sequence = chunk_of(chunks, second).sequence
    assert sequence.cached_tokens == 8
    assert sequence.blocks[:2] == read.sequence.blocks[:2]  # the same blocks, held by both
    counters = scheduler.counters
    assert (counters.prefix_cache_queries, counters.prefix_cache_hits) == (10 + 12, 8)


def test_cached_blocks_outlive_their_sequence(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler()
    first, second = job(loop, "a", (1, 2, 3, 4, 5, 6)), job(loop, "b", (1, 2, 3, 4, 9, 10))
    scheduler.admit(first)
    [read] = step(scheduler)
    scheduler.done(read.sequence, "finished")
    assert scheduler.counters.kv_cache_usage == 0.0
    scheduler.admit(second)
    [chunk] = step(scheduler)
    assert (chunk.start, chunk.end, chunk.sequence.cached_tokens) == (4, 6, 4)


def test_a_different_start_finds_nothing(loop: asyncio.AbstractEventLoop) -> None:
    """The same block of tokens after a different first block is not the same keys and values."""
    scheduler = new_scheduler()
    first, second = job(loop, "a", (1, 2, 3, 4, 5, 6, 7, 8, 9)), job(loop, "b", (0, 2, 3, 4, 5, 6, 7, 8, 9))
    scheduler.admit(first)
    step(scheduler)
    scheduler.admit(second)
    assert spans(step(scheduler))[1] == ("b", 0, 9)
    assert scheduler.counters.prefix_cache_hits == 0


def test_the_last_prompt_token_is_read_even_when_every_block_is_cached(loop: asyncio.AbstractEventLoop) -> None:
    """Its logits give the first token: a prompt that is all cached blocks still reads its last block."""
    scheduler = new_scheduler()
    prompt = tuple(range(1, 9))  # two full blocks
    first, second = job(loop, "a", prompt), job(loop, "b", prompt)
    scheduler.admit(first)
    [read] = step(scheduler)
    assert len(read.sequence.keys) == 2  # both blocks are in the cache
    scheduler.admit(second)
    chunks, _ = plan(scheduler)
    chunk = chunk_of(chunks, second)
    assert (chunk.start, chunk.end, chunk.samples) == (4, 8, True)
    assert chunk.sequence.cached_tokens == 4


def test_a_prompt_one_token_past_its_cached_blocks_is_read_when_admitted(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler()
    first, second = job(loop, "a", tuple(range(1, 9))), job(loop, "b", tuple(range(1, 10)))
    scheduler.admit(first)
    [read] = step(scheduler)
    scheduler.done(read.sequence, "finished")
    scheduler.admit(second)
    assert spans(step(scheduler)) == [("b", 8, 9)]


def test_choices_of_one_prompt_wait_for_the_first_to_read_it(loop: asyncio.AbstractEventLoop) -> None:
    """`n` choices: the others reuse the first's blocks rather than compute the same prompt beside it."""
    scheduler = new_scheduler(prefill_tokens=4)
    prompt = tuple(range(1, 11))
    first, sibling, behind = job(loop, "a", prompt), job(loop, "a", prompt), job(loop, "c", (5, 6))
    scheduler.admit(first, sibling)
    scheduler.admit(behind)
    assert spans(step(scheduler)) == [("a", 0, 4)]
    assert spans(step(scheduler)) == [("a", 4, 8)]
    assert scheduler.counters.waiting == 2  # the job behind the sibling does not overtake it
    chunks = step(scheduler)
    assert [(chunk.sequence.job, chunk.start, chunk.end) for chunk in chunks] == [(first, 8, 10)]
    chunks = step(scheduler)
    assert [(chunk.sequence.job, chunk.start, chunk.end) for chunk in chunks] == [
        (first, 10, 11),
        (sibling, 8, 10),
        (behind, 0, 2),
    ]
    assert chunk_of(chunks, sibling).sequence.cached_tokens == 8


def test_without_prefix_caching_choices_are_read_side_by_side(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler(prefix_caching=False)
    prompt = tuple(range(1, 10))
    first, sibling = job(loop, "a", prompt), job(loop, "a", prompt)
    scheduler.admit(first, sibling)
    chunks = step(scheduler)
    assert [(chunk.sequence.job, chunk.start, chunk.end) for chunk in chunks] == [(first, 0, 9), (sibling, 0, 9)]
    scheduler.done(chunks[0].sequence, "finished")
    scheduler.done(chunks[1].sequence, "finished")
    again = job(loop, "b", prompt)
    scheduler.admit(again)
    [chunk] = step(scheduler)
    assert (chunk.start, chunk.sequence.cached_tokens) == (0, 0)
    assert scheduler.counters.prefix_cache_hits == 0


def test_a_prompt_that_wants_its_logprobs_is_read_whole(loop: asyncio.AbstractEventLoop) -> None:
    """Every prompt position needs its logits, so no block comes from the cache."""
    scheduler = new_scheduler()
    prompt = tuple(range(1, 10))
    first, echoed = job(loop, "a", prompt), job(loop, "b", prompt, prompt_logprobs=1)
    plain = job(loop, "c", (*prompt, 99))  # not the same prompt: it would wait for the echoed one to read it
    scheduler.admit(first)
    step(scheduler)
    scheduler.admit(echoed, plain)
    chunks = step(scheduler)
    assert (chunk_of(chunks, echoed).start, chunk_of(chunks, echoed).sequence.cached_tokens) == (0, 0)
    assert (chunk_of(chunks, plain).start, chunk_of(chunks, plain).sequence.cached_tokens) == (8, 8)
    assert scheduler.counters.prefix_cache_hits == 8


def test_a_prompt_that_wants_its_logprobs_is_read_within_prompt_logprobs_tokens(
    loop: asyncio.AbstractEventLoop,
) -> None:
    scheduler = new_scheduler(prompt_logprobs_tokens=4)
    echoed, plain = job(loop, "a", tuple(range(1, 11)), prompt_logprobs=0), job(loop, "b", tuple(range(20, 30)))
    scheduler.admit(echoed, plain)
    assert spans(step(scheduler)) == [("a", 0, 4), ("b", 0, 10)]
    assert spans(step(scheduler)) == [("b", 10, 11), ("a", 4, 8)]


def test_prompt_positions_with_logits_are_capped_per_step(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler(prompt_logprobs_tokens=4)
    one, other = job(loop, "a", tuple(range(1, 11)), 0), job(loop, "b", tuple(range(11, 21)), 0)
    scheduler.admit(one, other)
    chunks = step(scheduler)
    assert sum(chunk.end - chunk.start for chunk in chunks if chunk.sequence.wants_prompt_logits) <= 4


def test_a_step_that_overspends_its_units_still_plans(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler()
    long, short = job(loop, "long", tuple(range(1, 41))), job(loop, "short", (50, 51, 52))
    scheduler.admit(long)
    compute(scheduler, plan(scheduler, units=20.0)[0])
    scheduler.admit(short)
    planned = scheduler.plan(lambda rows: 1.0, 1.0)  # at scale 1, a token at context 19 costs 20 units
    assert planned is not None and len(planned[0]) == 2


# Too few blocks


def test_a_decode_short_of_a_block_preempts_the_latest_admitted(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler(blocks=5, block_size=2)  # 4 usable blocks of 2 tokens
    first, latest = job(loop, "a", (1, 2, 3)), job(loop, "b", (4, 5, 6))
    scheduler.admit(first, latest)
    assert spans(step(scheduler)) == [("a", 0, 3), ("b", 0, 3)]
    chunks = step(scheduler)
    assert spans(chunks) == [("a", 3, 4), ("b", 3, 4)]  # every block is held now
    preempted = chunk_of(chunks, latest).sequence
    its_first_block = preempted.blocks[0]

    chunks = step(scheduler)  # the first needs a third block: the latest gives its blocks up
    assert spans(chunks) == [("a", 4, 5)]
    counters = scheduler.counters
    assert (counters.preempted, counters.running, counters.waiting) == (1, 1, 1)
    assert preempted.tokens == [4, 5, 6, 1000, 1001]  # what it generated is kept
    assert (preempted.blocks, preempted.computed) == ([], 0)

    scheduler.done(chunks[0].sequence, "finished")
    [again], _ = plan(scheduler)
    assert again.sequence is preempted
    assert (again.start, again.end, again.samples) == (2, 5, True)  # its first block was still cached
    assert preempted.blocks[0] == its_first_block
    assert preempted.cached_tokens == 0  # reported as at its first admission
    assert (scheduler.counters.prefix_cache_queries, scheduler.counters.prefix_cache_hits) == (6, 0)


def test_a_preempted_sequence_goes_back_to_the_head_of_the_line(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler(blocks=5, block_size=2)
    first, latest, later = job(loop, "a", (1, 2, 3)), job(loop, "b", (4, 5, 6)), job(loop, "c", (7, 8))
    scheduler.admit(first, latest)
    step(scheduler)
    step(scheduler)
    scheduler.admit(later)
    [chunk] = step(scheduler)
    scheduler.done(chunk.sequence, "finished")
    assert [chunk.sequence.job for chunk in step(scheduler)] == [latest, later]


def test_a_sequence_that_cannot_fit_alone_is_unfit(loop: asyncio.AbstractEventLoop) -> None:
    scheduler = new_scheduler(blocks=3, block_size=2)  # 2 usable blocks: 4 tokens
    big = job(loop, "a", (1, 2, 3, 4, 5, 6))
    scheduler.admit(big)
    chunks, unfit = plan(scheduler)
    assert chunks == []
    assert [sequence.job for sequence in unfit] == [big]
    counters = scheduler.counters
    assert (counters.running, counters.failed, counters.kv_cache_usage) == (0, 1, 0.0)


def test_an_unfit_sequence_does_not_take_the_others_down(loop: asyncio.AbstractEventLoop) -> None:
    """It is found out only once alone: one preempted to make room for it runs afterwards."""
    scheduler = new_scheduler(blocks=4, block_size=2)  # 3 usable blocks: 6 tokens
    big, small = job(loop, "a", tuple(range(1, 9))), job(loop, "b", (9, 10))
    scheduler.admit(big, small)
    chunks, unfit = plan(scheduler)
    assert chunks == []
    assert [sequence.job for sequence in unfit] == [big]
    counters = scheduler.counters
    assert (counters.preempted, counters.failed, counters.running, counters.waiting) == (1, 1, 0, 1)
    assert spans(step(scheduler)) == [("b", 0, 2)]


def test_a_preempted_echoed_prompt_is_read_again_from_its_start(loop: asyncio.AbstractEventLoop) -> None:
    """Its prompt positions all need logits: nothing comes from the cache, even its own blocks."""
    scheduler = new_scheduler(blocks=5, block_size=2, prompt_logprobs_tokens=2)  # 4 usable blocks of 2 tokens
    first, echoed = job(loop, "a", (1, 2, 3)), job(loop, "b", tuple(range(10, 18)), prompt_logprobs=0)
    scheduler.admit(first, echoed)
    assert spans(step(scheduler)) == [("a", 0, 3), ("b", 0, 2)]
    assert spans(step(scheduler)) == [("a", 3, 4), ("b", 2, 4)]
    [decode] = step(scheduler)
    assert scheduler.counters.preempted == 1
    scheduler.done(decode.sequence, "finished")
    [again] = step(scheduler)
    assert (again.sequence.job, again.start, again.end) == (echoed, 0, 2)
