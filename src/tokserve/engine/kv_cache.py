"""The KV cache's memory and the attention that reads it, plugged into transformers' models by name.

Each attention layer keeps its keys and values in one tensor of `slots` rows (block b holds slots b*size ..
(b+1)*size - 1), made with `torch.empty` at the layer's first call on the layer's own device: on a CPU, pages the
cache never reached stay untouched memory. A step is one packed sequence (batch 1, every row's new tokens one after
another, each with its own position); `StepLayout` says where each new token's keys and values go and which slots
each row attends to. The model runs with `attn_implementation=ATTENTION` and gets the layout as the forward keyword
`tokserve_step`; without it (a plain `model.generate`), the function is transformers' own SDPA attention.

Attention per layer: the new keys and values are written to their slots; single-token rows (decoding) attend
together, their contexts gathered into one padded batch with a mask; a row of several tokens (a prompt chunk)
attends alone, to its new tokens directly when nothing precedes them, else to its gathered context.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION = "tokserve_paged"
STEP_KEYWORD = "tokserve_step"


class KVCache:
    """Every attention layer's keys and values, `blocks` x `block_size` slots each."""

    def __init__(self, blocks: int, block_size: int, dtype: torch.dtype) -> None:
        self.blocks = blocks
        self.block_size = block_size
        self._dtype = dtype
        self._layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def layer(self, index: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index`'s (keys, values), each (slots, kv heads, head dim), made on first use after `like`
        (1, kv heads, tokens, head dim)."""
        tensors = self._layers.get(index)
        if tensors is None:
            shape = (self.blocks * self.block_size, like.shape[1], like.shape[3])
            tensors = (
                torch.empty(shape, dtype=self._dtype, device=like.device),
                torch.empty(shape, dtype=self._dtype, device=like.device),
            )
            self._layers[index] = tensors
        return tensors


@dataclass(slots=True)
class Segment:
    """A row of several new tokens, `start..end` of the packed step; `context` the slots it attends to (its earlier
    tokens and the new ones) and `positions` the new tokens' positions, both None when nothing precedes them."""

    start: int
    end: int
    context: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    _masks: dict[int | None, torch.Tensor] = field(default_factory=dict)

    def mask(self, window: int | None) -> torch.Tensor:
        """(1, 1, tokens, context): True where a new token may attend (causal; within `window` if one is set)."""
        if window not in self._masks:
            assert self.context is not None and self.positions is not None
            keys = torch.arange(self.context.shape[0], device=self.context.device)
            visible = keys[None, :] <= self.positions[:, None]
            if window is not None:
                visible &= keys[None, :] > self.positions[:, None] - window
            self._masks[window] = visible[None, None]
        return self._masks[window]


@dataclass(slots=True)
class StepLayout:
    """Where one step's tokens are in the cache: built once per step, read by every layer.

    Single-token rows are described by their block tables; the slots they attend to are derived on the device at
    the first layer (inside a CUDA graph, when one replays the step).
    """

    cache: KVCache
    slots: torch.Tensor  # (tokens,): where each new token's keys and values go
    segments: list[Segment]
    decode_tokens: torch.Tensor | None = None  # (rows,): the packed index of each single-token row
    decode_tables: torch.Tensor | None = None  # (rows, blocks): each row's blocks, padded with block 0
    decode_lengths: torch.Tensor | None = None  # (rows,): their context lengths, the new token included
    decode_width: int = 0  # context columns gathered: at least the longest context
    _decode_context: torch.Tensor | None = None
    _decode_masks: dict[int | None, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        cache: KVCache,
        device: torch.device,
        rows: Sequence[tuple[Sequence[int], int, int]],
    ) -> "StepLayout":
        """The layout of rows given as (blocks, first new position, new tokens), in packed order."""
        size = cache.block_size
        slots: list[int] = []
        decode_tokens: list[int] = []
        decode_tables: list[Sequence[int]] = []
        decode_lengths: list[int] = []
        segments: list[Segment] = []
        for blocks, start, count in rows:
            end = start + count
            offset = len(slots)
            slots += (blocks[position // size] * size + position % size for position in range(start, end))
            if count == 1:
                decode_tokens.append(offset)
                decode_tables.append(blocks[: (end + size - 1) // size])
                decode_lengths.append(end)
            elif start == 0:
                segments.append(Segment(offset, offset + count))
            else:
                table = torch.tensor(blocks[: (end + size - 1) // size], dtype=torch.long, device=device)
                context = (table[:, None] * size + torch.arange(size, device=device)).reshape(-1)[:end]
                segments.append(Segment(offset, offset + count, context, torch.arange(start, end, device=device)))
        layout = cls(cache, torch.tensor(slots, dtype=torch.long, device=device), segments)
        if decode_tokens:
            width = max(len(table) for table in decode_tables)
            padded = [list(table) + [0] * (width - len(table)) for table in decode_tables]
            layout.decode_tokens = torch.tensor(decode_tokens, dtype=torch.long, device=device)
            layout.decode_tables = torch.tensor(padded, dtype=torch.long, device=device)
            layout.decode_lengths = torch.tensor(decode_lengths, dtype=torch.long, device=device)
            layout.decode_width = max(decode_lengths)
        return layout

    def decode_context(self) -> torch.Tensor:
        """(rows, decode_width): the slots each single-token row attends to, padded with slots of block 0."""
        if self._decode_context is None:
            assert self.decode_tables is not None
            size = self.cache.block_size
            offsets = torch.arange(size, device=self.decode_tables.device)
            slots = (self.decode_tables[:, :, None] * size + offsets).reshape(self.decode_tables.shape[0], -1)
            self._decode_context = slots[:, : self.decode_width]
        return self._decode_context

    def decode_mask(self, window: int | None) -> torch.Tensor:
        """(rows, 1, 1, decode_width): True on each single-token row's own context (within `window` if set)."""
        if window not in self._decode_masks:
            assert self.decode_lengths is not None
            keys = torch.arange(self.decode_width, device=self.decode_lengths.device)
            visible = keys[None, :] < self.decode_lengths[:, None]
            if window is not None:
                visible &= keys[None, :] >= self.decode_lengths[:, None] - window
            self._decode_masks[window] = visible[:, None, None, :]
        return self._decode_masks[window]


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: query (1, heads, tokens, dim), key and value (1, kv heads, tokens, dim);
    returns (1, tokens, heads, dim)."""
    layout = kwargs.pop(STEP_KEYWORD, None)
    if not isinstance(layout, StepLayout):
        output, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
        return output, None
    keys, values = layout.cache.layer(module.__dict__["layer_idx"], key)  # a plain int attribute of the module
    keys.index_copy_(0, layout.slots, key[0].transpose(0, 1).to(keys.dtype))
    values.index_copy_(0, layout.slots, value[0].transpose(0, 1).to(values.dtype))
    window = getattr(module, "sliding_window", None)
    output = query.new_empty(query.shape[2], query.shape[1], query.shape[3])  # tokens, heads, dim
    if layout.decode_tokens is not None:
        context = layout.decode_context()
        rows, width = context.shape
        flat = context.reshape(-1)
        row_keys = keys.index_select(0, flat).view(rows, width, *keys.shape[1:]).transpose(1, 2)
        row_values = values.index_select(0, flat).view(rows, width, *values.shape[1:]).transpose(1, 2)
        row_queries = query[0].index_select(1, layout.decode_tokens).transpose(0, 1)[:, :, None]
        attended = torch.nn.functional.scaled_dot_product_attention(
            row_queries,
            row_keys.to(query.dtype),
            row_values.to(query.dtype),
            attn_mask=layout.decode_mask(window),
            scale=scaling,
            enable_gqa=True,
        )
        output.index_copy_(0, layout.decode_tokens, attended[:, :, 0])
    for segment in layout.segments:
        segment_queries = query[:, :, segment.start : segment.end]
        if segment.context is None and window is None:
            attended = torch.nn.functional.scaled_dot_product_attention(
                segment_queries,
                key[:, :, segment.start : segment.end],
                value[:, :, segment.start : segment.end],
                is_causal=True,
                scale=scaling,
                enable_gqa=True,
            )
        else:
            if segment.context is None:  # a sliding window over new tokens only: their own slots
                segment.context = layout.slots[segment.start : segment.end]
                segment.positions = torch.arange(segment.end - segment.start, device=segment.context.device)
            context = segment.context
            segment_keys = keys.index_select(0, context).transpose(0, 1)[None]
            segment_values = values.index_select(0, context).transpose(0, 1)[None]
            attended = torch.nn.functional.scaled_dot_product_attention(
                segment_queries,
                segment_keys.to(query.dtype),
                segment_values.to(query.dtype),
                attn_mask=segment.mask(window),
                scale=scaling,
                enable_gqa=True,
            )
        output[segment.start : segment.end] = attended[0].transpose(0, 1)
    return output[None], None


AttentionInterface.register(ATTENTION, paged_attention)
