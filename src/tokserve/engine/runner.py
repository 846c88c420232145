"""The model and its KV cache: a step's chunks in, one forward pass, the logits that are needed out.

The chunks are packed into one row (batch 1) with per-token positions, so the rows of a step never pad each other;
logits are computed only at the positions asked for: the last of each chunk that samples, and every position of a
chunk whose prompt logprobs are wanted.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tokserve.engine.kv_cache import STEP_KEYWORD, KVCache, StepLayout
from tokserve.engine.loading import LoadedModel
from tokserve.engine.scheduler import Chunk


@dataclass(frozen=True, slots=True)
class StepLogits:
    """The step's logits (positions kept x vocabulary) and, per chunk, the rows that are its own (possibly none)."""

    logits: torch.Tensor
    rows: list[slice]


class Runner:
    """Runs the steps of one model over one KV cache."""

    def __init__(self, loaded: LoadedModel, cache: KVCache) -> None:
        self._loaded = loaded
        self._cache = cache

    def forward(self, chunks: Sequence[Chunk]) -> StepLogits:
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
        logits = self._loaded.model(
            input_ids=torch.tensor([ids], dtype=torch.long, device=device),
            position_ids=torch.tensor([positions], dtype=torch.long, device=device),
            logits_to_keep=torch.tensor(kept, dtype=torch.long, device=device),
            use_cache=False,
            **{STEP_KEYWORD: layout},
        ).logits
        return StepLogits(logits[0], rows)
