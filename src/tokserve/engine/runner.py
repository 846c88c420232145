"""The model and its KV cache: a step's chunks in, one forward pass, the logits that are needed out.

The chunks are packed into one row (batch 1) with per-token positions, so the rows of a step never pad each other;
logits are computed only at the positions asked for: the last of each chunk that samples, and every position of a
chunk whose prompt logprobs are wanted.

On CUDA, a step where every row decodes one token is replayed from a CUDA graph: one per bucket of rows (powers of
two) and of context (powers of two from 256 tokens), captured the first time the bucket is needed, with static input
buffers that each step fills. Without context buckets, every row would gather the longest context the graph allows.
Padding rows write to block 0 and attend to its first slot. A capture that fails turns graphs off, with a warning;
the CPU path stays eager.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tokserve.engine.kv_cache import STEP_KEYWORD, KVCache, StepLayout
from tokserve.engine.loading import LoadedModel
from tokserve.engine.scheduler import Chunk

if TYPE_CHECKING:
    from torch.cuda import _POOL_HANDLE

logger = logging.getLogger(__name__)

_SHORTEST_CONTEXT = 256
_FEW_ROWS = 2  # a CPU step of at most this many tokens in bfloat16 runs without oneDNN (see Runner)


@dataclass(frozen=True, slots=True)
class StepLogits:
    """The step's logits (positions kept x vocabulary) and, per chunk, the rows that are its own (possibly none)."""

    logits: torch.Tensor
    rows: list[slice]


class Runner:
    """Runs the steps of one model over one KV cache."""

    def __init__(self, loaded: LoadedModel, cache: KVCache, graphs: "DecodeGraphs | None" = None) -> None:
        self._loaded = loaded
        self._cache = cache
        self._graphs = graphs
        # On a CPU in bfloat16, oneDNN's products of one or two rows (the lm_head, the dense linears of a
        # decoding step) are slower than ATen's own, and those of more rows faster: a prompt chunk's several times.
        # Measured on the embedded model, 2 cores with AVX512-BF16, ms a step with oneDNN and without: native 1 row
        # 22.2 / 16.3, 2 rows 23.6 / 22.1, 4 rows 26.8 / 31.3, 8 rows 35.1 / 51.1; dequantized 1 row 57.4 / 25.4,
        # 8 rows 60.0 / 93.7; 601 prompt tokens 1.0 s with it, 3.8 s without. So only such steps go without it.
        self._few_rows_without_onednn = loaded.device.type == "cpu" and loaded.model.dtype == torch.bfloat16

    def forward(self, chunks: Sequence[Chunk]) -> StepLogits:
        if self._few_rows_without_onednn and sum(chunk.end - chunk.start for chunk in chunks) <= _FEW_ROWS:
            # A process-wide flag (only this thread computes); _fp32_precision=None leaves that setting alone.
            enabled = torch.backends.mkldnn.set_flags(False, _fp32_precision=None)[0]  # type: ignore[no-untyped-call]
            try:
                return self._forward(chunks)
            finally:
                torch.backends.mkldnn.set_flags(enabled, _fp32_precision=None)  # type: ignore[no-untyped-call]
        return self._forward(chunks)

    def _forward(self, chunks: Sequence[Chunk]) -> StepLogits:
        if self._graphs is not None and self._graphs.fits(chunks):
            logits = self._graphs.run(chunks)
            if logits is not None:
                return StepLogits(logits, [slice(row, row + 1) for row in range(len(chunks))])
            self._graphs = None
        device = self._loaded.device
        ids: list[int] = []
        positions: list[int] = []
        kept: list[int] = []
        rows: list[slice] = []
        for chunk in chunks:
            sequence = chunk.sequence
            offset = len(ids)
            ids += sequence.tokens[chunk.start : chunk.end]
            positions += range(chunk.start, chunk.end)
            first = len(kept)
            if sequence.wants_prompt_logits:
                kept += range(offset, len(ids))
            elif chunk.samples:
                kept.append(len(ids) - 1)
            rows.append(slice(first, len(kept)))
        layout = StepLayout.build(
            self._cache, device, [(chunk.sequence.blocks, chunk.start, chunk.end - chunk.start) for chunk in chunks]
        )
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        position_ids = torch.tensor([positions], dtype=torch.long, device=device)
        logits_to_keep = torch.tensor(kept, dtype=torch.long, device=device)
        if self._loaded.step is not None:
            return StepLogits(self._loaded.step(input_ids, position_ids, logits_to_keep, layout), rows)
        logits = self._loaded.model(
            input_ids=input_ids,
            position_ids=position_ids,
            logits_to_keep=logits_to_keep,
            use_cache=False,
            **{STEP_KEYWORD: layout},
        ).logits
        return StepLogits(logits[0], rows)


def _bucket(value: int, smallest: int) -> int:
    """The smallest power-of-two multiple of `smallest` that holds `value`."""
    bucket = smallest
    while bucket < value:
        bucket *= 2
    return bucket


class _Graph:
    """One captured decode step of `rows` rows over `width` context slots, with the buffers it reads and writes."""

    def __init__(self, loaded: LoadedModel, cache: KVCache, rows: int, width: int, pool: "_POOL_HANDLE") -> None:
        device = loaded.device
        self.ids = torch.zeros(1, rows, dtype=torch.long, device=device)
        self.positions = torch.zeros(1, rows, dtype=torch.long, device=device)
        self.slots = torch.zeros(rows, dtype=torch.long, device=device)
        self.tables = torch.zeros(rows, width // cache.block_size, dtype=torch.long, device=device)
        self.lengths = torch.ones(rows, dtype=torch.long, device=device)
        self._tokens = torch.arange(rows, device=device)
        self._loaded, self._cache, self._width = loaded, cache, width
        stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):  # a first run outside the graph, as CUDA graph capture needs
            self._forward()
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.logits = self._forward()

    def _forward(self) -> torch.Tensor:
        # A fresh layout each time: what it derives (context slots, masks) must be computed inside the capture.
        layout = StepLayout(
            self._cache,
            self.slots,
            [],
            decode_tokens=self._tokens,
            decode_tables=self.tables,
            decode_lengths=self.lengths,
            decode_width=self._width,
        )
        logits: torch.Tensor = self._loaded.model(
            input_ids=self.ids, position_ids=self.positions, use_cache=False, **{STEP_KEYWORD: layout}
        ).logits[0]
        return logits


class DecodeGraphs:
    """Decode steps from CUDA graphs, per bucket of rows and of context."""

    def __init__(self, loaded: LoadedModel, cache: KVCache, max_rows: int, max_context: int) -> None:
        self._loaded = loaded
        self._cache = cache
        self._max_rows = _bucket(max_rows, 1)
        self._max_context = _bucket(max_context, _SHORTEST_CONTEXT)
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._pool = torch.cuda.graph_pool_handle()

    def fits(self, chunks: Sequence[Chunk]) -> bool:
        """Whether every row decodes one token (no prompt logits) within the buckets."""
        return len(chunks) <= self._max_rows and all(
            chunk.end - chunk.start == 1 and not chunk.sequence.wants_prompt_logits and chunk.end <= self._max_context
            for chunk in chunks
        )

    def run(self, chunks: Sequence[Chunk]) -> torch.Tensor | None:
        """The rows' logits (rows x vocabulary), or None if the bucket's graph could not be captured."""
        size = self._cache.block_size
        rows = _bucket(len(chunks), 1)
        width = _bucket(max(chunk.end for chunk in chunks), _SHORTEST_CONTEXT)
        graph = self._graphs.get((rows, width))
        if graph is None:
            try:
                graph = _Graph(self._loaded, self._cache, rows, width, self._pool)
            except Exception:
                logger.warning("Capturing a CUDA graph failed; decoding runs eagerly from now on", exc_info=True)
                return None
            self._graphs[rows, width] = graph
        count = len(chunks)
        ids = [chunk.sequence.tokens[chunk.start] for chunk in chunks]
        tables = torch.zeros(rows, width // size, dtype=torch.long)
        slots: list[int] = []
        for row, chunk in enumerate(chunks):
            blocks = chunk.sequence.blocks[: (chunk.end + size - 1) // size]
            tables[row, : len(blocks)] = torch.tensor(blocks, dtype=torch.long)
            slots.append(blocks[chunk.start // size] * size + chunk.start % size)
        padding = rows - count
        graph.ids.copy_(torch.tensor([ids + [0] * padding]))
        graph.positions.copy_(torch.tensor([[chunk.start for chunk in chunks] + [0] * padding]))
        graph.slots.copy_(torch.tensor(slots + [0] * padding))
        graph.tables.copy_(tables)
        graph.lengths.copy_(torch.tensor([chunk.end for chunk in chunks] + [1] * padding))
        graph.graph.replay()
        return graph.logits[:count]
