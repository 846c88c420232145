"""The worker thread: the step loop. Each step the scheduler plans the chunks, the runner reads them in one forward
pass, the batch sampler picks every sampling row's next token at once, and the tokens are pushed to their streams.

A failure in one request's own work fails that request only; a failed forward fails the step's requests. Its one
contact with asyncio is `TokenStream.push` (`loop.call_soon_threadsafe`); it never sees an HTTP object and never
waits on a client.
"""

import logging
import sys
import threading
import time
from collections.abc import Sequence as Sequences
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from tokserve.engine.constraints import Constraint, Grammars
from tokserve.engine.crossing import EndReason, TokenEvent, TokenLogprobs
from tokserve.engine.faults import FaultHook, InjectedFault
from tokserve.engine.loading import LoadedModel
from tokserve.engine.logprobs import prompt_logprobs
from tokserve.engine.pacing import Pacer
from tokserve.engine.runner import Runner, StepLogits
from tokserve.engine.sampling import BatchSampler, SamplingState
from tokserve.engine.scheduler import Chunk, Scheduler, Sequence
from tokserve.errors import GenerationFailed, NotReady, TokservError

logger = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class Generation:
    """The worker's own state of a sequence, kept on it across preemption."""

    sampling: SamplingState
    failing_step: int | None
    constraint: Constraint | None = None
    prompt_logprobs: list[TokenLogprobs] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Masks:
    """The token masks of a step's constrained sampling sequences, being filled while the forward pass runs."""

    sequences: list[Sequence]
    allowed: "Future[torch.Tensor]"


class Worker:
    """Runs the scheduler's plans on its own thread."""

    def __init__(
        self,
        loaded: LoadedModel,
        scheduler: Scheduler,
        runner: Runner,
        pacer: Pacer,
        grammars: Grammars,
        fault: FaultHook | None = None,
    ) -> None:
        self._loaded = loaded
        self._grammars = grammars
        self._scheduler = scheduler
        self._runner = runner
        self._pacer = pacer
        self._fault = fault
        self._sampler = BatchSampler(loaded.device)
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
        """One turn of the loop; False once the scheduler is closed."""
        if self._stopping.is_set():
            self._end(self._scheduler.running(), NotReady("draining"))
            return False
        plan = self._scheduler.plan(self._pacer.prefill_units, self._pacer.scale)
        if plan is None:
            return False
        chunks, unfit = plan
        for sequence in unfit:
            sequence.job.stream.push(
                TokenEvent(error=GenerationFailed("The request needs more KV cache than --kv-cache-memory gives."))
            )
        chunks = self._start(chunks)
        if not chunks:
            return True
        masks = self._masks(chunks)
        started = time.perf_counter()
        try:
            step = self._runner.forward(chunks)
        except Exception:
            self._fail([chunk.sequence for chunk in chunks])
            return True
        self._sample(chunks, step, masks)
        self._pacer.record(time.perf_counter() - started, chunks)
        return True

    def _start(self, chunks: list[Chunk]) -> list[Chunk]:
        """Give sequences planned for the first time their state; the chunks that go on."""
        kept: list[Chunk] = []
        for chunk in chunks:
            sequence = chunk.sequence
            if sequence.state is None:
                request = sequence.job.request
                if self._fault is not None:
                    self._fault.check_worker(request.prompt_ids)  # outside any per-request handling: ends the thread
                try:
                    sampling = SamplingState(
                        request.sampling,
                        self._loaded.device,
                        request.prompt_ids,
                        self._loaded.eos_ids | request.stop_token_ids,
                    )
                    constraint = self._grammars.constraint(request.grammar) if request.grammar else None
                except Exception:
                    self._fail([sequence])
                    continue
                failing_step = self._fault.failing_step(request.prompt_ids) if self._fault else None
                sequence.state = Generation(sampling, failing_step, constraint)
            kept.append(chunk)
        return kept

    def _masks(self, chunks: Sequences[Chunk]) -> _Masks | None:
        """Start filling the masks of the constrained sequences that sample this step (their matchers are up to date:
        the last step's tokens were consumed as they were sampled)."""
        sequences = [chunk.sequence for chunk in chunks if chunk.samples and _generation(chunk.sequence).constraint]
        if not sequences:
            return None
        constraints = [_generation(sequence).constraint for sequence in sequences]
        return _Masks(sequences, self._grammars.masks([c for c in constraints if c is not None]))

    def _sample(self, chunks: Sequences[Chunk], step: StepLogits, masks: _Masks | None) -> None:
        """Advance every chunk; sample the next token of those that finished reading, all together."""
        sampling: list[tuple[Chunk, torch.Tensor]] = []
        for chunk, rows in zip(chunks, step.rows, strict=True):
            sequence, generation = chunk.sequence, _generation(chunk.sequence)
            self._scheduler.advance(chunk)
            try:
                if sequence.wants_prompt_logits:
                    logits = step.logits[rows]
                    top = sequence.job.request.prompt_logprobs or 0
                    # Position i predicts token i + 1: the prompt's last position predicts the first generated one.
                    targets = sequence.tokens[chunk.start + 1 : chunk.end + 1]
                    del generation.prompt_logprobs[chunk.start :]  # read again after a preemption
                    generation.prompt_logprobs += prompt_logprobs(logits, targets, top)
                if not chunk.samples:
                    continue
                if sequence.generated == generation.failing_step:
                    raise InjectedFault(f"fault hook: {sequence.job.request.request_id} fails at {sequence.generated}")
            except Exception:
                self._fail([sequence])
                continue
            sampling.append((chunk, step.logits[rows.stop - 1]))
        allowed = self._allowed(sampling, masks)
        if not sampling:
            return
        sequences = [chunk.sequence for chunk, _ in sampling]
        try:
            sampled = self._sampler.sample(
                torch.stack([logits for _, logits in sampling]),
                [_generation(sequence).sampling for sequence in sequences],
                [sequence.job.request.logprobs for sequence in sequences],
                allowed,
            )
        except Exception:
            self._fail(sequences)
            return
        for sequence, token in zip(sequences, sampled, strict=True):
            constraint = _generation(sequence).constraint
            try:
                complete = constraint is not None and constraint.advance(token.token_id)
            except Exception:
                self._fail([sequence])
                continue
            self._emit(sequence, token.token_id, token.logprobs, complete)

    def _allowed(self, sampling: list[tuple[Chunk, torch.Tensor]], masks: _Masks | None) -> torch.Tensor | None:
        """The sampling rows' masks (every token for an unconstrained row), or None without constraints. A constrained
        row that allows nothing (its matcher failed) fails its request and leaves `sampling`."""
        if masks is None:
            return None
        try:
            filled: torch.Tensor | None = masks.allowed.result()
            alive = filled.any(dim=1).tolist() if filled is not None else []
        except Exception:
            logger.exception("Filling the token masks failed")
            filled, alive = None, [False] * len(masks.sequences)
        failed: set[int] = set()
        for sequence, ok in zip(masks.sequences, alive, strict=True):
            # A matcher in error allows nothing, or, as llguidance fills it, only the end: either way it fails.
            error = constraint.error if (constraint := _generation(sequence).constraint) is not None else ""
            if error or not ok:
                logger.error("The grammar of %s failed: %s", sequence.job.request.request_id, error or "no token")
                failed.add(id(sequence))
        self._fail([sequence for sequence in masks.sequences if id(sequence) in failed])
        sampling[:] = [(chunk, logits) for chunk, logits in sampling if id(chunk.sequence) not in failed]
        if filled is None or not sampling:
            return None
        row_of = {id(sequence): row for row, sequence in enumerate(masks.sequences)}
        rows = torch.ones(len(sampling), filled.shape[1], dtype=torch.bool)
        for row, (chunk, _) in enumerate(sampling):
            if (at := row_of.get(id(chunk.sequence))) is not None:
                rows[row] = filled[at]
        return rows.to(self._loaded.device, non_blocking=True)

    def _emit(self, sequence: Sequence, token_id: int, logprobs: TokenLogprobs | None, complete: bool) -> None:
        """Push one sampled token; end the sequence if it was the last (`complete`: its grammar is)."""
        request, generation = sequence.job.request, _generation(sequence)
        first = sequence.generated == 0
        sequence.tokens.append(token_id)
        end: EndReason | None = None
        if token_id in request.stop_token_ids:
            end = "stop_token"
        elif token_id in self._loaded.eos_ids and not request.ignore_eos:
            end = "eos"
        elif complete:
            end = "grammar"
        elif sequence.generated == request.max_tokens:
            end = "length"
        event = TokenEvent(
            token_id=token_id,
            end=end,
            logprobs=logprobs,
            prompt_logprobs=tuple(generation.prompt_logprobs) if first and request.prompt_logprobs else None,
            cached_tokens=sequence.cached_tokens if first else None,
        )
        if first:
            generation.prompt_logprobs = []
        if end is not None:  # counted before the client can see its last token
            self._scheduler.done(sequence, "finished")
        sequence.job.stream.push(event)

    def _fail(self, sequences: Sequences[Sequence]) -> None:
        for sequence in sequences:
            # With the exception's traceback when there is one (not for a grammar found failed).
            failing = sys.exc_info()[1] is not None
            logger.error("Generation failed for request %s", sequence.job.request.request_id, exc_info=failing)
            sequence.job.stream.push(
                TokenEvent(error=GenerationFailed("Generation failed; the server log has the details."))
            )
            self._scheduler.done(sequence, "failed")

    def _end(self, sequences: Sequences[Sequence], error: TokservError) -> None:
        """End these requests with `error` (the server is stopping)."""
        for sequence in sequences:
            sequence.job.stream.push(TokenEvent(error=error))
            self._scheduler.done(sequence, "cancelled")


def _generation(sequence: Sequence) -> Generation:
    if not isinstance(sequence.state, Generation):
        raise TypeError("the sequence was planned without a state")
    return sequence.state
