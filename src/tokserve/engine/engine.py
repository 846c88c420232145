"""The engine's public face: load a model, encode prompts, submit requests, read counters.

Route code calls only this; nothing here runs torch on the caller's thread except `load`.
"""

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from tokserve.engine.chat_template import encode_chat
from tokserve.engine.detokenizer import Decoder
from tokserve.engine.faults import FaultHook
from tokserve.engine.fill_in_the_middle import FillInTheMiddle
from tokserve.engine.loading import LoadedModel, default_kv_cache_bytes, load_model
from tokserve.engine.request import GenerationRequest, SamplingParams
from tokserve.engine.scheduler import Counters, Job, Scheduler
from tokserve.engine.token_stream import TokenStream
from tokserve.engine.vocabulary import Vocabulary
from tokserve.engine.worker import BatchLimits, Worker
from tokserve.errors import GenerationFailed, InvalidRequest, NotReady

logger = logging.getLogger(__name__)

_WARM_UP_PROMPT = "Hello"
_WARM_UP_TOKENS = 4


class Engine:
    """One model on one device, served by one worker thread."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_model_len: int | None = None,
        max_queue: int = 64,
        limits: BatchLimits | None = None,
        fault_marker: str | None = None,
    ) -> None:
        self._loaded = loaded
        self.max_model_len = max_model_len or loaded.max_model_len
        self._fill_in_the_middle = FillInTheMiddle.of(loaded.tokenizer.backend_tokenizer)
        self.vocabulary = Vocabulary(loaded.tokenizer.backend_tokenizer)
        self.system_fingerprint = loaded.system_fingerprint
        self.max_queue = max_queue
        self._scheduler = Scheduler(max_queue)
        fault = FaultHook(fault_marker, loaded.tokenizer.backend_tokenizer) if fault_marker else None
        self._worker = Worker(loaded, self._scheduler, limits or BatchLimits(), fault)
        self._worker.start()

    @classmethod
    def load(
        cls,
        model: str | None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_model_len: int | None = None,
        max_queue: int = 64,
        max_running: int = 8,
        kv_cache_memory: float | None = None,
        prefill_tokens: int = 512,
        threads: int | None = None,
        fault_marker: str | None = None,
        quantization: str | None = None,
        device_map: str | None = None,
    ) -> "Engine":
        """Load the model, start the worker and run a short warm-up generation through it.

        `kv_cache_memory` is in GiB; None picks a share of the device's memory (`default_kv_cache_bytes`).
        """
        if threads is not None:
            torch.set_num_threads(threads)
        loaded = load_model(model, device, dtype, quantization, device_map)
        kv_cache_bytes = int(kv_cache_memory * 2**30) if kv_cache_memory else default_kv_cache_bytes(loaded.device)
        logger.info(
            "Batching up to %d requests; KV cache bound %.1f GiB (%d tokens of one sequence)",
            max_running,
            kv_cache_bytes / 2**30,
            kv_cache_bytes // loaded.kv_bytes_per_token,
        )
        engine = cls(
            loaded,
            max_model_len=max_model_len,
            max_queue=max_queue,
            limits=BatchLimits(max_running, kv_cache_bytes, prefill_tokens),
            fault_marker=fault_marker,
        )
        logger.info("Warming up")
        asyncio.run(engine._warm_up())
        return engine

    @property
    def is_alive(self) -> bool:
        return self._worker.is_alive

    @property
    def counters(self) -> Counters:
        return self._scheduler.counters

    @property
    def loaded(self) -> LoadedModel:
        """Model and tokenizer, for tests and tools: the model belongs to the worker thread while it serves."""
        return self._loaded

    def encode_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        variables: Mapping[str, Any] | None = None,
    ) -> list[int]:
        """Messages through `template` or the model's own; raises InvalidRequest when the template rejects them."""
        return encode_chat(
            self._loaded.tokenizer,
            messages,
            template=template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            variables=variables,
        )

    def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [
            int(token_id) for token_id in self._loaded.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        ]

    def encode_fill_in_the_middle(self, prefix: Sequence[int], suffix: str) -> list[int]:
        """A prompt for the text between `prefix` and `suffix`; InvalidRequest if the model has no FIM tokens."""
        if self._fill_in_the_middle is None:
            raise InvalidRequest(
                "suffix needs a model with fill-in-the-middle tokens, and this one has none.", param="suffix"
            )
        suffix_ids = self._loaded.tokenizer.encode(suffix, add_special_tokens=False)
        return self._fill_in_the_middle.prompt(prefix, [int(token_id) for token_id in suffix_ids])

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of whole token ids; a character left incomplete at the end is left out."""
        text: str = self._loaded.tokenizer.backend_tokenizer.decode(
            list(token_ids), skip_special_tokens=skip_special_tokens
        )
        return text.rstrip("\ufffd")

    def decoder(self, request: GenerationRequest) -> Decoder:
        """A fresh incremental detokenizer for the tokens that follow this request's prompt."""
        return Decoder(self._loaded.tokenizer.backend_tokenizer, request.prompt_ids, request.skip_special_tokens)

    def submit(self, request: GenerationRequest) -> TokenStream:
        """Queue a request on the running loop; raises NotReady or Overloaded before anything is generated."""
        return self.submit_all([request])[0]

    def submit_all(self, requests: Sequence[GenerationRequest]) -> list[TokenStream]:
        """Queue several requests at once, all or none; raises NotReady or Overloaded before any is generated."""
        if not self.is_alive:
            raise NotReady("unhealthy")
        loop = asyncio.get_running_loop()
        jobs = [Job(request, TokenStream(loop)) for request in requests]
        self._scheduler.admit(*jobs)
        return [job.stream for job in jobs]

    def close(self) -> None:
        """Fail waiting requests, end the running one at its next step, stop the worker."""
        self._worker.stop()

    async def _warm_up(self) -> None:
        prompt = tuple(self.encode_text(_WARM_UP_PROMPT))
        request = GenerationRequest("warm-up", prompt, _WARM_UP_TOKENS, SamplingParams(temperature=0.0))
        async for event in self.submit(request).events():
            if event.error is not None:
                raise GenerationFailed(f"Warm-up generation failed: {event.error.message}")
