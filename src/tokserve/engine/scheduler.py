"""Admission and the plan of each step, over the one running set. No torch here.

The waiting line is FIFO. Each step, every running sequence that has one token to read (decoding) gets it first;
then new sequences join while there is room (`max_running`, and a free block per running sequence: admission is
optimistic), each first taking the cached blocks its prompt starts with; then the prompts still being read share
the step's prefill budget in equal parts (a part one does not need goes to the others), so a short prompt is never
starved behind a long one. A prompt token costs more the longer the context it attends to (`token_cost`).

When a sequence needs a block and none is free, the most recently admitted sequence is preempted: its blocks are
released (its full ones stay in the prefix cache), and it goes back to the head of the line, keeping the tokens it
generated; once admitted again it recomputes what it lost and goes on. Nothing fails for lack of blocks, except a
sequence that alone cannot fit the whole cache.

Every method is thread-safe: `admit` runs on the event loop, the rest on the worker thread; anyone reads counters.
"""

import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from tokserve.engine.blocks import BlockAllocator, BlockKey, block_keys
from tokserve.engine.crossing import GenerationRequest
from tokserve.engine.token_stream import TokenStream
from tokserve.errors import NotReady, Overloaded

Outcome = Literal["finished", "cancelled", "failed"]


@dataclass(frozen=True, slots=True)
class Job:
    """A request and the stream its tokens go to."""

    request: GenerationRequest
    stream: TokenStream


@dataclass(slots=True, eq=False)
class Sequence:
    """A job's tokens (prompt, then generated) and where their keys and values are: `computed` tokens so far, in
    `blocks`; `keys` are those of its full blocks registered in the prefix cache."""

    job: Job
    tokens: list[int]
    blocks: list[int] = field(default_factory=list)
    keys: list[BlockKey] = field(default_factory=list)
    computed: int = 0
    cached_tokens: int | None = None  # prompt tokens found in the prefix cache at first admission
    state: object | None = None  # the worker's own (sampling), kept across preemption

    @property
    def prompt_length(self) -> int:
        return len(self.job.request.prompt_ids)

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.prompt_length

    @property
    def remaining(self) -> int:
        """Tokens whose keys and values are still to be computed."""
        return len(self.tokens) - self.computed

    @property
    def wants_prompt_logits(self) -> bool:
        """Whether its prompt's every position must come with logits (`prompt_logprobs`, before the first token)."""
        return self.job.request.prompt_logprobs is not None and self.generated == 0


@dataclass(frozen=True, slots=True)
class Chunk:
    """Tokens `start..end` of a sequence to read this step; after the last of them, the next token is sampled."""

    sequence: Sequence
    start: int
    end: int

    @property
    def samples(self) -> bool:
        return self.end == len(self.sequence.tokens)


@dataclass(frozen=True, slots=True)
class Counters:
    """A snapshot: requests generating now, waiting, how the others ended, and the KV cache's state."""

    running: int = 0
    waiting: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    preempted: int = 0
    prefix_cache_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits: int = 0  # of those, tokens found
    kv_cache_usage: float = 0.0


@dataclass(frozen=True, slots=True)
class StepLimits:
    """How much one step may hold: sequences running together, prompt tokens read, prompt positions with logits."""

    max_running: int = 8
    prefill_tokens: int = 512
    prompt_logprobs_tokens: int = 256


def token_cost(start: int, count: int, scale: float) -> float:
    """The cost of reading `count` prompt tokens from position `start`, in units of one token at no context: each
    token costs 1 plus the context it attends to over `scale` (the context at which attention costs as much as the
    rest of the model)."""
    return count * (1 + (start + count / 2) / scale)


def _tokens_for(units: float, start: int, scale: float) -> int:
    """The most tokens from `start` that `units` pay for (the inverse of `token_cost`)."""
    base = 1 + start / scale
    return int(scale * (math.sqrt(base * base + 2 * units / scale) - base))


class Scheduler:
    """The waiting line, the running set and their blocks."""

    def __init__(self, max_queue: int, limits: StepLimits, allocator: BlockAllocator) -> None:
        self._max_queue = max_queue
        self._limits = limits
        self._allocator = allocator
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []  # in admission order
        self._ended: dict[Outcome, int] = {"finished": 0, "cancelled": 0, "failed": 0}
        self._preempted = 0
        self._queries = 0
        self._hits = 0
        self._closed: str | None = None  # why no more jobs are taken: "draining" or "unhealthy"
        self._changed = threading.Condition()

    @property
    def counters(self) -> Counters:
        with self._changed:
            return Counters(
                len(self._running),
                len(self._waiting),
                **self._ended,
                preempted=self._preempted,
                prefix_cache_queries=self._queries,
                prefix_cache_hits=self._hits,
                kv_cache_usage=self._allocator.usage,
            )

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
            self._waiting.extend(Sequence(job, list(job.request.prompt_ids)) for job in jobs)
            self._changed.notify()

    def plan(self, prefill_units: Callable[[int], float], scale: float) -> tuple[list[Chunk], list[Sequence]] | None:
        """This step's chunks, and the sequences that cannot fit the cache even alone (to be failed).

        Blocks while nothing runs or waits; None once closed. `prefill_units(decoding rows)` is the prompt reading
        this step may do, in `token_cost` units at `scale`.
        """
        with self._changed:
            while True:
                self._retire_cancelled()
                if self._closed is not None:
                    return None
                if self._running or self._waiting:
                    break
                self._changed.wait()
        chunks: list[Chunk] = []
        unfit: list[Sequence] = []
        for sequence in list(self._running):
            if sequence.remaining == 1 and sequence in self._running:  # decoding (not preempted meanwhile)
                self._plan(sequence, sequence.computed + 1, chunks, unfit)
        while self._admit_next(reserve=len(self._running)) is not None:
            pass
        self._share(prefill_units(len(chunks)), scale, chunks, unfit)
        return chunks, unfit

    def advance(self, chunk: Chunk) -> None:
        """The chunk's keys and values are computed: count them, and offer its newly full blocks to the prefix cache."""
        sequence = chunk.sequence
        sequence.computed = chunk.end
        size = self._allocator.block_size
        full = chunk.end // size
        if full > len(sequence.keys):
            parent = sequence.keys[-1] if sequence.keys else b""
            start = len(sequence.keys)
            new = block_keys(sequence.tokens[start * size :], size, full - start, parent)
            for block, key in zip(sequence.blocks[start:full], new, strict=True):
                self._allocator.register(block, key)
            sequence.keys += new

    def done(self, sequence: Sequence, outcome: Outcome) -> None:
        """A running sequence ended: its blocks go back."""
        with self._changed:
            self._running.remove(sequence)
            self._release(sequence)
            self._ended[outcome] += 1

    def running(self) -> list[Sequence]:
        """The running sequences (worker thread)."""
        return list(self._running)

    def close(self) -> list[Job]:
        """Stop taking and handing out jobs (draining); return those still waiting so the caller can fail them."""
        with self._changed:
            self._closed = self._closed or "draining"
            left, self._waiting = [sequence.job for sequence in self._waiting], deque()
            self._changed.notify_all()
            return left

    def abandon(self) -> list[Job]:
        """The worker thread is ending: take no more jobs, and return every job still waiting or running, counted
        as failed, so the caller can fail them. Nothing is left to wait for a thread that is gone."""
        with self._changed:
            self._closed = self._closed or "unhealthy"
            left = [sequence.job for sequence in (*self._running, *self._waiting)]
            self._ended["failed"] += len(left)
            self._running, self._waiting = [], deque()
            self._changed.notify_all()
            return left

    def _retire_cancelled(self) -> None:
        """Forget sequences whose reader left: waiting ones never cost a forward pass, running ones free their
        blocks now."""
        live = deque(sequence for sequence in self._waiting if not sequence.job.stream.cancelled.is_set())
        self._ended["cancelled"] += len(self._waiting) - len(live)
        self._waiting = live
        for sequence in [s for s in self._running if s.job.stream.cancelled.is_set()]:
            self._running.remove(sequence)
            self._release(sequence)
            self._ended["finished" if sequence.job.stream.completed else "cancelled"] += 1

    def _release(self, sequence: Sequence) -> None:
        self._allocator.release(sequence.blocks)
        sequence.blocks, sequence.keys, sequence.computed = [], [], 0

    def _preempt(self) -> Sequence:
        with self._changed:
            victim = self._running.pop()
            self._release(victim)
            self._waiting.appendleft(victim)
            self._preempted += 1
            return victim

    def _drop(self, sequence: Sequence) -> None:
        """A sequence that cannot fit even alone leaves the running set (the worker fails it)."""
        with self._changed:
            self._running.remove(sequence)
            self._release(sequence)
            self._ended["failed"] += 1

    def _admit_next(self, reserve: int) -> Sequence | None:
        """The head of the line joins the running set, with the cached blocks its tokens start with, if there is
        room and `reserve` more blocks stay free for the running sequences' growth."""
        with self._changed:
            if not self._waiting or len(self._running) >= self._limits.max_running:
                return None
            sequence = self._waiting[0]
            if self._allocator.available <= reserve or self._shares_an_unread_prompt(sequence):
                return None
            self._waiting.popleft()
            if not sequence.wants_prompt_logits:
                size = self._allocator.block_size
                # The last token is always read, so that its logits exist: at most the blocks before it are reused.
                keys = block_keys(sequence.tokens, size, (len(sequence.tokens) - 1) // size)
                sequence.blocks = self._allocator.match(keys)
                sequence.keys = keys[: len(sequence.blocks)]
                sequence.computed = len(sequence.blocks) * size
            if sequence.cached_tokens is None:
                sequence.cached_tokens = sequence.computed
                self._queries += sequence.prompt_length
                self._hits += sequence.computed
            self._running.append(sequence)
            return sequence

    def _shares_an_unread_prompt(self, sequence: Sequence) -> bool:
        """Whether a running sequence is still reading the same prompt (another choice of the same request): this
        one waits for it, then reuses its blocks."""
        if not self._allocator.prefix_caching or sequence.generated or sequence.wants_prompt_logits:
            return False
        return any(
            other.generated == 0 and other.remaining > 1 and other.tokens == sequence.tokens for other in self._running
        )

    def _share(self, units: float, scale: float, chunks: list[Chunk], unfit: list[Sequence]) -> None:
        """Give the prompts being read (and sequences admitted with one token left) equal parts of `units`, passing
        on what a part does not need; prompt positions with logits are bounded per step too."""
        planned = {id(chunk.sequence) for chunk in chunks}
        reading = [sequence for sequence in self._running if id(sequence) not in planned and sequence.remaining]
        tokens_left = self._limits.prefill_tokens
        logits_left = self._limits.prompt_logprobs_tokens
        for index, sequence in enumerate(reading):
            if sequence not in self._running:  # preempted to make room for an earlier one
                continue
            part = max(0.0, units) / (len(reading) - index)
            count = min(max(1, _tokens_for(part, sequence.computed, scale)), sequence.remaining, tokens_left)
            if sequence.wants_prompt_logits:
                count = min(count, logits_left)
            if count <= 0:
                continue
            start = sequence.computed
            if self._plan(sequence, start + count, chunks, unfit):
                units -= token_cost(start, count, scale)
                tokens_left -= count
                logits_left -= count if sequence.wants_prompt_logits else 0

    def _plan(self, sequence: Sequence, end: int, chunks: list[Chunk], unfit: list[Sequence]) -> bool:
        """Add `sequence` up to `end` to the plan, with the blocks it needs, preempting for them; whether it is in."""
        size = self._allocator.block_size
        while len(sequence.blocks) * size < end:
            block = self._allocator.allocate()
            if block is not None:
                sequence.blocks.append(block)
                continue
            if self._running == [sequence]:
                self._drop(sequence)
                unfit.append(sequence)
                return False
            victim = self._preempt()
            chunks[:] = [chunk for chunk in chunks if chunk.sequence is not victim]
            if victim is sequence:
                return False
        chunks.append(Chunk(sequence, sequence.computed, end))
        return True
