"""The engine's public face: load a model, encode prompts, submit requests, read counters.

Route code calls only this; nothing here runs torch on the caller's thread (`load` builds the model on a thread of its
own).
"""

import asyncio
import ctypes
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from tokserve.engine.blocks import BlockAllocator
from tokserve.engine.chat_template import encode_chat
from tokserve.engine.constraints import Grammars
from tokserve.engine.crossing import EngineSettings, GenerationRequest, SamplingParams
from tokserve.engine.detokenizer import Decoder
from tokserve.engine.faults import FaultHook
from tokserve.engine.fill_in_the_middle import FillInTheMiddle
from tokserve.engine.kv_cache import KVCache
from tokserve.engine.loading import LoadedModel, default_kv_cache_bytes, load_model
from tokserve.engine.pacing import Pacer, attention_scale
from tokserve.engine.runner import DecodeGraphs, Runner
from tokserve.engine.scheduler import Counters, Job, Scheduler, StepLimits
from tokserve.engine.token_stream import TokenStream
from tokserve.engine.vocabulary import Vocabulary
from tokserve.engine.worker import Worker
from tokserve.errors import GenerationFailed, InvalidRequest, NotReady

logger = logging.getLogger(__name__)

_WARM_UP_PROMPT = "Hello"
_WARM_UP_TOKENS = 4
# Tokens per KV-cache block: the unit of allocation and of prefix reuse (vLLM's default too).
BLOCK_SIZE = 16


class Engine:
    """One model on one device, served by one worker thread."""

    def __init__(self, loaded: LoadedModel, settings: EngineSettings) -> None:
        self._loaded = loaded
        self.settings = settings
        self.max_model_len = settings.max_model_len or loaded.max_model_len
        self._fill_in_the_middle = FillInTheMiddle.of(loaded.tokenizer.backend_tokenizer)
        self.vocabulary = Vocabulary(loaded.tokenizer.backend_tokenizer)
        self.system_fingerprint = loaded.system_fingerprint(prefix_caching=not settings.no_prefix_caching)
        self.max_queue = settings.max_queue
        kv_cache_bytes = (
            int(settings.kv_cache_memory * 2**30) if settings.kv_cache_memory else default_kv_cache_bytes(loaded.device)
        )
        blocks = max(2, kv_cache_bytes // (loaded.kv_bytes_per_token * BLOCK_SIZE))
        allocator = BlockAllocator(blocks, BLOCK_SIZE, prefix_caching=not settings.no_prefix_caching)
        self.prefill_tokens = settings.prefill_tokens or loaded.prefill_tokens
        limits = StepLimits(settings.max_running, self.prefill_tokens, settings.prompt_logprobs_tokens)
        self._scheduler = Scheduler(settings.max_queue, limits, allocator)
        cache = KVCache(blocks, BLOCK_SIZE, loaded.model.dtype)
        graphs = None
        if loaded.device.type == "cuda" and not settings.no_cuda_graphs:
            graphs = DecodeGraphs(loaded, cache, settings.max_running, self.max_model_len)
        runner = Runner(loaded, cache, graphs)
        config = loaded.model.config.get_text_config()
        heads = config.num_attention_heads
        query_width = heads * (getattr(config, "head_dim", None) or config.hidden_size // heads)
        pacer = Pacer(
            self.prefill_tokens,
            attention_scale(loaded.parameters, config.num_hidden_layers, query_width),
        )
        fault = FaultHook(settings.fault_marker, loaded.tokenizer.backend_tokenizer) if settings.fault_marker else None
        # The logits' width: a model may have more rows than its tokenizer has tokens.
        self._grammars = Grammars(loaded.tokenizer.backend_tokenizer, config.vocab_size, loaded.eos_ids)
        self._worker = Worker(loaded, self._scheduler, runner, pacer, self._grammars, fault)
        self._worker.start()
        logger.info(
            "Batching up to %d requests, reading up to %d prompt tokens a step; KV cache %.2f GiB: %d blocks of %d "
            "tokens (%d tokens)%s",
            settings.max_running,
            self.prefill_tokens,
            blocks * BLOCK_SIZE * loaded.kv_bytes_per_token / 2**30,
            blocks - 1,
            BLOCK_SIZE,
            (blocks - 1) * BLOCK_SIZE,
            "" if allocator.prefix_caching else "; prefix caching off",
        )

    @classmethod
    def load(cls, settings: EngineSettings) -> "Engine":
        """Load the model, start the worker and run a short warm-up generation through it."""
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        # Built on a thread that then ends, so that the worker's is the only OpenMP thread pool left. libgomp keeps
        # a pool for each thread that ever ran a parallel region, for that thread's life; once it manages more
        # threads than there are CPUs it stops spin-waiting between regions, and each of a decode step's hundreds of
        # small operations waits for woken threads: a step took 1.7x as long (43 against 25 ms, native weights, 2
        # cores) while the caller's thread kept the pool it loaded with.
        with ThreadPoolExecutor(1, thread_name_prefix="tokserve-load") as loader:
            engine = loader.submit(cls._build, settings).result()
        _return_freed_memory()
        logger.info("Warming up")
        asyncio.run(engine._warm_up())
        return engine

    @classmethod
    def _build(cls, settings: EngineSettings) -> "Engine":
        loaded = load_model(
            settings.model,
            settings.device,
            settings.dtype,
            settings.quantization,
            settings.device_map,
            settings.weights,
        )
        return cls(loaded, settings)

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
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        """Messages through `template` or the model's own; raises InvalidRequest when the template rejects them."""
        return encode_chat(
            self._loaded.tokenizer,
            messages,
            template=template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            variables=variables,
            tools=tools,
        )

    @property
    def chat_template(self) -> str | None:
        """The model's own chat template (the server may have been given another)."""
        template = self._loaded.tokenizer.chat_template
        return template if isinstance(template, str) else None

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

    def grammar_error(self, grammar: str) -> str | None:
        """Why llguidance cannot constrain generation with this grammar, or None. Blocking (it compiles the grammar,
        off the GIL): the server calls it in a thread, before submitting."""
        return self._grammars.error(grammar)

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
        self._grammars.close()

    async def _warm_up(self) -> None:
        prompt = tuple(self.encode_text(_WARM_UP_PROMPT))
        request = GenerationRequest("warm-up", prompt, _WARM_UP_TOKENS, SamplingParams(temperature=0.0))
        async for event in self.submit(request).events():
            if event.error is not None:
                raise GenerationFailed(f"Warm-up generation failed: {event.error.message}")


def _return_freed_memory() -> None:
    """Hand the pages loading freed back to the system (glibc's `malloc_trim`; elsewhere nothing).

    Loading frees much of what it allocates (file buffers, float32 or unpacked copies) in between what it keeps, and
    glibc gives back only the free memory at the top of a heap: the embedded model with native weights stayed at
    700-730 MB resident after loading, 590 MB once trimmed."""
    # The symbols the process has loaded already (libc's among them): no library search at start-up.
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None) if os.name == "posix" else None
    if trim is not None:
        trim(0)
