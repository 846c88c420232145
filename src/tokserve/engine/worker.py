"""The worker thread: owns the model and the batch's KV cache and runs the step loop (continuous batching).

Each step takes new jobs from the scheduler while they fit, runs at most one prefill forward for them (a long prompt
in chunks, one per step, so the running requests are not stalled for long), then one decode forward for every
running request together. A request leaves the batch at the step after it finished, stopped or lost its reader.
Each request samples with its own `Sampler`; a failure in one request's own work fails that request only.

Its one contact with asyncio is `TokenStream.push` (`loop.call_soon_threadsafe`); it never sees an HTTP object and
never waits on a client.
"""

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from tokserve.engine.batch import PaddedBatch, supports
from tokserve.engine.faults import FaultHook, InjectedFault
from tokserve.engine.loading import LoadedModel
from tokserve.engine.logprobs import prompt_logprobs, token_logprobs
from tokserve.engine.sampling import Sampler
from tokserve.engine.scheduler import Job, Scheduler
from tokserve.engine.token_stream import EndReason, TokenEvent
from tokserve.errors import GenerationFailed, NotReady, TokservError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """How much the worker runs at once: requests in the batch, KV-cache bytes, prompt tokens per prefill forward."""

    max_running: int = 8
    kv_cache_bytes: int = 2**31
    prefill_tokens: int = 512


@dataclass(slots=True, eq=False)
class _Running:
    """A request in the batch: its job, its sampler, and the token it feeds to the next step."""

    job: Job
    sampler: Sampler
    ends: dict[int, EndReason]
    failing_step: int | None
    generated: int = 0
    next_input: int = 0


@dataclass(slots=True)
class _Prefill:
    """A group of new requests whose prompts are being read, `done` columns so far; row i reads prompt `source[i]`."""

    rows: list[_Running]
    source: list[int]
    batch: PaddedBatch
    ids: torch.Tensor
    chunk: int
    every_position: bool
    done: int = 0
    logits: list[torch.Tensor] = field(default_factory=list)


class Worker:
    """Takes jobs from the scheduler and generates their tokens, batched, on its own thread."""

    def __init__(
        self,
        loaded: LoadedModel,
        scheduler: Scheduler,
        limits: BatchLimits,
        fault: FaultHook | None = None,
    ) -> None:
        config = loaded.model.config
        if not supports(config) and limits.max_running > 1:
            logger.warning("This model's cache has sliding-window or linear layers: requests run one at a time.")
            limits = replace(limits, max_running=1)
        self._loaded = loaded
        self._scheduler = scheduler
        self._limits = limits
        self._fault = fault
        self._batch = PaddedBatch(config, loaded.device)
        self._rows: list[_Running] = []
        self._prefill: _Prefill | None = None
        self._pad_id = next(iter(loaded.eos_ids), 0)  # any id: padded columns are masked
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tokserve-worker", daemon=True)

    @property
    def is_alive(self) -> bool:
        """Serving: the thread runs and the scheduler still takes jobs (it stops as the thread's death begins)."""
        return self._thread.is_alive() and self._scheduler.is_open

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Fail what is waiting, end the running requests at the next step, and wait for the thread."""
        self._stopping.set()
        for job in self._scheduler.close():
            job.stream.push(TokenEvent(error=NotReady("draining")))
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while self._step():
                    pass
        except BaseException:  # past the per-request handling (a WorkerFault, MemoryError): this thread ends
            logger.critical("The worker thread died; the server is unhealthy", exc_info=True)
        finally:
            # Whatever is still queued or running would otherwise wait forever on a thread that is gone.
            for job in self._scheduler.abandon():
                job.stream.push(TokenEvent(error=NotReady("unhealthy")))

    def _step(self) -> bool:
        """One turn of the loop; False once the scheduler is closed and nothing runs."""
        self._leave([row for row in self._rows if row.job.stream.cancelled.is_set()])
        if self._stopping.is_set():
            self._end(self._rows + (self._prefill.rows if self._prefill else []), NotReady("draining"))
            return False
        if self._prefill is None:
            jobs = self._scheduler.take(self._fits(), wait=not self._rows)
            if jobs is None:
                return False
            if jobs:
                self._start_prefill(jobs)
        if self._prefill is not None:
            self._prefill_chunk(self._prefill)
        if self._rows:
            self._decode()
        return True

    def _fits(self) -> "_Admission":
        return _Admission(self._limits, self._loaded, self._rows)

    def _start_prefill(self, jobs: list[Job]) -> None:
        if self._fault is not None:
            for job in jobs:
                self._fault.check_worker(job.request.prompt_ids)  # outside any per-request handling: ends the thread
        rows = [self._running(job) for job in jobs]
        # Each distinct prompt is read once: the choices of one request share it.
        prompts = list(dict.fromkeys(job.request.prompt_ids for job in jobs))
        source = [prompts.index(job.request.prompt_ids) for job in jobs]
        batch, ids = PaddedBatch.of_prompts(self._loaded.model.config, self._loaded.device, prompts, self._pad_id)
        every_position = any(job.request.prompt_logprobs is not None for job in jobs)
        # Prompt logprobs need every position's logits, kept whole as when alone; other prompts are read in chunks.
        chunk = ids.shape[1] if every_position else max(1, self._limits.prefill_tokens // len(prompts))
        self._prefill = _Prefill(rows, source, batch, ids, chunk, every_position)

    def _running(self, job: Job) -> _Running:
        request, eos_ids = job.request, self._loaded.eos_ids
        sampler = Sampler(request.sampling, self._loaded.device, request.prompt_ids, eos_ids | request.stop_token_ids)
        ends: dict[int, EndReason] = {} if request.ignore_eos else dict.fromkeys(eos_ids, "eos")
        ends |= dict.fromkeys(request.stop_token_ids, "stop_token")
        failing_step = self._fault.failing_step(request.prompt_ids) if self._fault else None
        return _Running(job, sampler, ends, failing_step)

    def _prefill_chunk(self, prefill: _Prefill) -> None:
        """Read the next chunk of the group's prompts; after the last, sample their first tokens and let them in."""
        gone = [row for row in prefill.rows if row.job.stream.cancelled.is_set()]
        if len(gone) == len(prefill.rows):
            self._prefill = None
            self._finish(gone)
            return
        ids = prefill.ids[:, prefill.done : prefill.done + prefill.chunk]
        inputs = prefill.batch.forward_inputs(ids, prefill.done)
        try:
            # logits_to_keep=1 spares the prefill a (prompt length x vocabulary) tensor; 0 keeps every position.
            logits = self._loaded.logits(inputs, prefill.batch.cache, logits_to_keep=0 if prefill.every_position else 1)
        except Exception:
            self._prefill = None
            self._fail(prefill.rows)
            return
        prefill.done += ids.shape[1]
        if prefill.done < prefill.ids.shape[1]:
            return
        self._prefill = None
        # Rows are right-aligned: a prompt's positions are the last columns of its row.
        live = self._advance(
            prefill.rows,
            [
                logits[prompt, -len(row.job.request.prompt_ids) :] if prefill.every_position else logits[prompt]
                for prompt, row in zip(prefill.source, prefill.rows, strict=True)
            ],
        )
        prefill.batch.select([prefill.source[index] for index in live])
        self._batch.extend(prefill.batch)
        self._rows += [prefill.rows[row] for row in live]

    def _decode(self) -> None:
        """One forward step for every running request together."""
        tokens = torch.tensor([[row.next_input] for row in self._rows], device=self._loaded.device)
        try:
            inputs = self._batch.forward_inputs(tokens, self._batch.width)
            logits = self._loaded.logits(inputs, self._batch.cache, logits_to_keep=1)
        except Exception:
            self._fail(self._rows)
            self._rows = []
            self._batch.select([])
            return
        live = self._advance(self._rows, [logits[row] for row in range(len(self._rows))])
        self._batch.select(live)
        self._rows = [self._rows[row] for row in live]

    def _advance(self, rows: Sequence[_Running], logits: Sequence[torch.Tensor]) -> list[int]:
        """Sample each row's next token from its logits (positions x vocabulary) and push it; the rows that go on."""
        live: list[int] = []
        for index, (row, row_logits) in enumerate(zip(rows, logits, strict=True)):
            try:
                if row.job.stream.cancelled.is_set():
                    self._finish([row])
                elif self._emit(row, row_logits):
                    live.append(index)
            except Exception:
                self._fail([row])
        return live

    def _emit(self, row: _Running, logits: torch.Tensor) -> bool:
        """Sample and push one token; whether the request goes on."""
        request = row.job.request
        if row.generated == row.failing_step:
            raise InjectedFault(f"fault hook: request {request.request_id} fails at step {row.generated}")
        token_id = row.sampler.sample(logits[-1])
        row.generated += 1
        end = row.ends.get(token_id, "length" if row.generated == request.max_tokens else None)
        top, prompt_top = request.logprobs, request.prompt_logprobs
        with_prompt = row.generated == 1 and prompt_top is not None
        row.job.stream.push(
            TokenEvent(
                token_id=token_id,
                end=end,
                logprobs=None if top is None else token_logprobs(logits[-1], token_id, top),
                prompt_logprobs=prompt_logprobs(logits, request.prompt_ids, prompt_top)
                if with_prompt and prompt_top is not None
                else None,
            )
        )
        if end is not None:
            self._scheduler.done(row.job, "finished")
            return False
        row.next_input = token_id
        return True

    def _leave(self, rows: Sequence[_Running]) -> None:
        """Take rows whose reader left (or stopped reading) out of the batch."""
        if not rows:
            return
        self._finish(rows)
        kept = [index for index, row in enumerate(self._rows) if row not in rows]
        self._batch.select(kept)
        self._rows = [self._rows[index] for index in kept]

    def _finish(self, rows: Sequence[_Running]) -> None:
        for row in rows:
            self._scheduler.done(row.job, "finished" if row.job.stream.completed else "cancelled")

    def _fail(self, rows: Sequence[_Running]) -> None:
        for row in rows:
            logger.exception("Generation failed for request %s", row.job.request.request_id)
            row.job.stream.push(
                TokenEvent(error=GenerationFailed("Generation failed; the server log has the details."))
            )
            self._scheduler.done(row.job, "failed")

    def _end(self, rows: Sequence[_Running], error: TokservError) -> None:
        """End these requests with `error` (the server is stopping)."""
        for row in rows:
            row.job.stream.push(TokenEvent(error=error))
            self._scheduler.done(row.job, "cancelled")
        self._rows, self._prefill = [], None


class _Admission:
    """Whether the next waiting job may join: room in the batch, and the padded KV cache's worst case in budget.

    A job's worst case is its prompt plus `max_tokens`; rows are right-aligned, so the cache can grow to (rows) x
    (the longest worst case). A job always fits into an empty worker, whatever the budget, so nothing waits forever.
    """

    def __init__(self, limits: BatchLimits, loaded: LoadedModel, rows: Sequence[_Running]) -> None:
        self._limits = limits
        self._bytes_per_token = loaded.kv_bytes_per_token
        self._count = len(rows)
        self._longest = max((_worst_case(row.job) for row in rows), default=0)
        self._prompt_width = 0
        self._taken = 0
        self._alone = False  # a job with prompt logprobs was taken: its prefill keeps every position, so no company

    def __call__(self, job: Job) -> bool:
        count, longest = self._count + 1, max(self._longest, _worst_case(job))
        width = max(self._prompt_width, len(job.request.prompt_ids))
        every_position = job.request.prompt_logprobs is not None
        if self._count:
            if (
                count > self._limits.max_running
                or count * longest * self._bytes_per_token > self._limits.kv_cache_bytes
            ):
                return False
            if self._taken and (
                self._alone or every_position or (self._taken + 1) * width > self._limits.prefill_tokens
            ):
                return False
        self._count, self._longest, self._prompt_width = count, longest, width
        self._taken += 1
        self._alone = every_position
        return True


def _worst_case(job: Job) -> int:
    return len(job.request.prompt_ids) + job.request.max_tokens
