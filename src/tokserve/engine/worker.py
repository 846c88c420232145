"""The worker thread: owns the model and the KV cache and runs the step loop, one request at a time.

Its one contact with asyncio is `TokenStream.push` (`loop.call_soon_threadsafe`); it never sees an HTTP object and
never waits on a client. A failure inside one request's generation fails that request only.
"""

import logging
import threading

import torch
from transformers import DynamicCache

from tokserve.engine.faults import FaultHook, InjectedFault
from tokserve.engine.loading import LoadedModel
from tokserve.engine.logprobs import prompt_logprobs, token_logprobs
from tokserve.engine.request import GenerationRequest
from tokserve.engine.sampling import Sampler
from tokserve.engine.scheduler import Job, Outcome, Scheduler
from tokserve.engine.token_stream import EndReason, TokenEvent, TokenStream
from tokserve.errors import GenerationFailed, NotReady

logger = logging.getLogger(__name__)


class Worker:
    """Takes jobs from the scheduler and generates their tokens on its own thread."""

    def __init__(self, loaded: LoadedModel, scheduler: Scheduler, fault: FaultHook | None = None) -> None:
        self._loaded = loaded
        self._scheduler = scheduler
        self._fault = fault
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tokserve-worker", daemon=True)

    @property
    def is_alive(self) -> bool:
        """Serving: the thread runs and the scheduler still takes jobs (it stops as the thread's death begins)."""
        return self._thread.is_alive() and self._scheduler.is_open

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Fail what is waiting, end the running request at its next step, and wait for the thread."""
        self._stopping.set()
        for job in self._scheduler.close():
            job.stream.push(TokenEvent(error=NotReady("draining")))
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            while (job := self._scheduler.next()) is not None:
                self._scheduler.done(job, self._serve(job))
        except BaseException:  # past the per-request handling (a WorkerFault, MemoryError): this thread ends
            logger.critical("The worker thread died; the server is unhealthy", exc_info=True)
        finally:
            # Whatever is still queued or running would otherwise wait forever on a thread that is gone.
            for job in self._scheduler.abandon():
                job.stream.push(TokenEvent(error=NotReady("unhealthy")))

    def _serve(self, job: Job) -> Outcome:
        try:
            with torch.inference_mode():
                return self._generate(job.request, job.stream)
        except Exception:
            logger.exception("Generation failed for request %s", job.request.request_id)
            job.stream.push(TokenEvent(error=GenerationFailed("Generation failed; the server log has the details.")))
            return "failed"

    def _generate(self, request: GenerationRequest, stream: TokenStream) -> Outcome:
        """Prefill, then one forward pass per new token over the request's own KV cache."""
        model, device, eos_ids = self._loaded.model, self._loaded.device, self._loaded.eos_ids
        sampler = Sampler(request.sampling, device, request.prompt_ids, eos_ids | request.stop_token_ids)
        ends: dict[int, EndReason] = {} if request.ignore_eos else dict.fromkeys(eos_ids, "eos")
        ends |= dict.fromkeys(request.stop_token_ids, "stop_token")
        cache = DynamicCache(config=model.config)
        if self._fault is not None:
            self._fault.check_worker(request.prompt_ids)
        failing_step = self._fault.failing_step(request.prompt_ids) if self._fault else None
        inputs = torch.tensor([request.prompt_ids], device=device)
        for step in range(request.max_tokens):
            if stream.cancelled.is_set():
                return "finished" if stream.completed else "cancelled"
            if self._stopping.is_set():
                stream.push(TokenEvent(error=NotReady("draining")))
                return "cancelled"
            self._scheduler.drop_cancelled()
            if step == failing_step:
                raise InjectedFault(f"fault hook: request {request.request_id} fails at step {step}")
            every_position = step == 0 and request.prompt_logprobs is not None
            # logits_to_keep=1 spares the prefill a (prompt length x vocabulary) tensor; 0 keeps every position.
            logits = model(
                input_ids=inputs, past_key_values=cache, use_cache=True, logits_to_keep=0 if every_position else 1
            ).logits[0]
            token_id = sampler.sample(logits[-1])
            end = ends.get(token_id, "length" if step + 1 == request.max_tokens else None)
            stream.push(_token_event(request, logits, token_id, end, every_position))
            if end is not None:
                return "finished"
            inputs = torch.tensor([[token_id]], device=device)
        return "finished"


def _token_event(
    request: GenerationRequest, logits: torch.Tensor, token_id: int, end: EndReason | None, with_prompt: bool
) -> TokenEvent:
    """The event of a new token, with the logprobs the request asked for."""
    top, prompt_top = request.logprobs, request.prompt_logprobs
    return TokenEvent(
        token_id=token_id,
        end=end,
        logprobs=None if top is None else token_logprobs(logits[-1], token_id, top),
        prompt_logprobs=prompt_logprobs(logits, request.prompt_ids, prompt_top)
        if with_prompt and prompt_top is not None
        else None,
    )
