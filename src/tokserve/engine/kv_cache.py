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
    tokens and the new ones), None when nothing precedes the new tokens."""

    start: int
    end: int
    context: torch.Tensor | None
    positions: torch.Tensor | None  # the new tokens' positions, (tokens,), with `context`
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
    """Where one step's tokens are in the cache: built once per step, read by every layer."""

    cache: KVCache
    slots: torch.Tensor  # (tokens,): where each new token's keys and values go
    decode_tokens: torch.Tensor | None  # (rows,): the packed index of each single-token row
    decode_context: torch.Tensor | None  # (rows, longest context): slots each attends to, padded with slot 0
    decode_lengths: torch.Tensor | None  # (rows,): their context lengths
    segments: list[Segment]
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
        decode: list[tuple[int, list[int]]] = []
        segments: list[Segment] = []
        for blocks, start, count in rows:
            end = start + count
            row_slots = [blocks[position // size] * size + position % size for position in range(end)]
            offset = len(slots)
            slots += row_slots[start:]
            if count == 1:
                decode.append((offset, row_slots))
            elif start == 0:
                segments.append(Segment(offset, offset + count, None, None))
            else:
                context = torch.tensor(row_slots, dtype=torch.long, device=device)
                positions = torch.arange(start, end, device=device)
                segments.append(Segment(offset, offset + count, context, positions))
        layout = cls(cache, torch.tensor(slots, dtype=torch.long, device=device), None, None, None, segments)
        if decode:
            longest = max(len(row_slots) for _, row_slots in decode)
            padded = [row_slots + [0] * (longest - len(row_slots)) for _, row_slots in decode]
            layout.decode_tokens = torch.tensor([offset for offset, _ in decode], dtype=torch.long, device=device)
            layout.decode_context = torch.tensor(padded, dtype=torch.long, device=device)
            layout.decode_lengths = torch.tensor([len(row) for _, row in decode], dtype=torch.long, device=device)
        return layout

    def decode_mask(self, window: int | None) -> torch.Tensor:
        """(rows, 1, 1, longest context): True on each decoding row's own context (within `window` if set)."""
        if window not in self._decode_masks:
            assert self.decode_context is not None and self.decode_lengths is not None
            keys = torch.arange(self.decode_context.shape[1], device=self.decode_context.device)
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
    if layout.decode_tokens is not None and layout.decode_context is not None:
        rows, longest = layout.decode_context.shape
        flat = layout.decode_context.reshape(-1)
        row_keys = keys.index_select(0, flat).view(rows, longest, *keys.shape[1:]).transpose(1, 2)
        row_values = values.index_select(0, flat).view(rows, longest, *values.shape[1:]).transpose(1, 2)
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
            context = segment.context
            if context is None:  # a sliding window over new tokens only: their own slots
                context = layout.slots[segment.start : segment.end]
                segment.context, segment.positions = context, torch.arange(len(context), device=context.device)
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
