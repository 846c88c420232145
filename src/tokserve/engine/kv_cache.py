"""The KV cache's memory and the attention that reads it, plugged into transformers' models by name.

Each attention layer keeps its keys, and its values, in one tensor of (kv heads, slots, head dim) (block b holds
slots b*size .. (b+1)*size - 1), made with `torch.empty` at the layer's first call on the layer's own device: on a
CPU, pages the cache never reached stay untouched memory. A step is one packed sequence (batch 1, every row's new
tokens one after another, each with its own position); `StepLayout` says where each new token's keys and values go
and which slots each row attends to. The model runs with `attn_implementation=ATTENTION` and gets the layout as the
forward keyword `tokserve_step`; without it (a plain `model.generate`), the function is transformers' own SDPA
attention.

Attention per layer: the new keys and values are written to their slots; single-token rows (decoding) attend
together, their contexts gathered into one padded batch with a mask (on a CPU as plain matrix products, see
`_attend_one_token`); a row of several tokens (a prompt chunk) attends alone with SDPA, to its new tokens directly
when nothing precedes them, else to its gathered context.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION = "tokserve_paged"
STEP_KEYWORD = "tokserve_step"
# Decoding rows up to this many attend in float32 products on a CPU. µs a layer (9 query and 3 kv heads of 64, 2
# cores with AVX512-BF16), bfloat16 without oneDNN / with it / float32: 1 row over 128 tokens 128 / 125 / 67, over
# 2048 1148 / 212 / 335; 2 rows over 512 557 / 161 / 148; but 8 rows over 512 - / 244 / 404.
_FLOAT32_ROWS = 2


class KVCache:
    """Every attention layer's keys and values, `blocks` x `block_size` slots each."""

    def __init__(self, blocks: int, block_size: int, dtype: torch.dtype) -> None:
        self.blocks = blocks
        self.block_size = block_size
        self._dtype = dtype
        self._layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def layer(self, index: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index`'s (keys, values), each (kv heads, slots, head dim), made on first use after `like`
        (1, kv heads, tokens, head dim). Slots in the middle: a gather of slots gives each head's keys in one
        contiguous piece, as the matrix products of attention want them."""
        tensors = self._layers.get(index)
        if tensors is None:
            shape = (like.shape[1], self.blocks * self.block_size, like.shape[3])
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
    _by_head: dict[tuple[str, int, int], torch.Tensor] = field(default_factory=dict)

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
        """(rows, decode_width): the slots each single-token row attends to, padded with its own first slot.

        Padding must name a written slot: the cache is `torch.empty`, and a masked slot's weight of 0 times a NaN
        left in memory is still NaN."""
        if self._decode_context is None:
            assert self.decode_tables is not None and self.decode_lengths is not None
            size = self.cache.block_size
            offsets = torch.arange(size, device=self.decode_tables.device)
            slots = (self.decode_tables[:, :, None] * size + offsets).reshape(self.decode_tables.shape[0], -1)
            slots = slots[:, : self.decode_width]
            columns = torch.arange(self.decode_width, device=slots.device)
            written = columns[None, :] < self.decode_lengths[:, None]
            self._decode_context = torch.where(written, slots, slots[:, :1])
        return self._decode_context

    def by_head(self, name: str, slots: torch.Tensor, heads: int, per_head: int) -> torch.Tensor:
        """`slots` as rows of a (heads x per_head, dim) view of one layer's keys: head-major, every head's slots in
        turn. Gathering and scattering along the first dimension is several times faster than along the second."""
        key = (name, heads, per_head)
        if key not in self._by_head:
            offsets = torch.arange(heads, device=slots.device)[:, None] * per_head
            self._by_head[key] = (offsets + slots.reshape(1, -1)).reshape(-1)
        return self._by_head[key]

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
    heads, per_head, dim = keys.shape
    flat_keys, flat_values = keys.view(heads * per_head, dim), values.view(heads * per_head, dim)
    written = layout.by_head("new", layout.slots, heads, per_head)
    flat_keys.index_copy_(0, written, key[0].reshape(-1, dim).to(keys.dtype))
    flat_values.index_copy_(0, written, value[0].reshape(-1, dim).to(values.dtype))
    window = getattr(module, "sliding_window", None)
    decode_tokens, decoded = layout.decode_tokens, None
    if decode_tokens is not None:
        context = layout.decode_context()
        rows, width = context.shape
        read = layout.by_head("decode", context, heads, per_head)
        # Without prompt chunks, every token is a decoding row, in order: no picking out and placing back.
        queries = query[0] if not layout.segments else query[0].index_select(1, decode_tokens)
        decoded = _attend_one_token(
            queries.transpose(0, 1),
            flat_keys.index_select(0, read).view(heads, rows, width, dim),
            flat_values.index_select(0, read).view(heads, rows, width, dim),
            layout.decode_mask(window),
            scaling,
        )
        if not layout.segments:
            return decoded[None], None
    output = query.new_empty(query.shape[2], query.shape[1], query.shape[3])  # tokens, heads, dim
    if decode_tokens is not None and decoded is not None:
        output.index_copy_(0, decode_tokens, decoded)
    for number, segment in enumerate(layout.segments):
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
            read = layout.by_head(f"segment {number}", segment.context, heads, per_head)
            attended = torch.nn.functional.scaled_dot_product_attention(
                segment_queries,
                flat_keys.index_select(0, read).view(1, heads, -1, dim).to(query.dtype),
                flat_values.index_select(0, read).view(1, heads, -1, dim).to(query.dtype),
                attn_mask=segment.mask(window),
                scale=scaling,
                enable_gqa=True,
            )
        output[segment.start : segment.end] = attended[0].transpose(0, 1)
    return output[None], None


def _attend_one_token(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scaling: float | None
) -> torch.Tensor:
    """Attention of rows of one query each: queries (rows, heads, dim), keys and values (kv heads, rows, context,
    dim) as gathered, mask (rows, 1, 1, context); returns (rows, heads, dim).

    On a CPU as matrix products over (kv head, row) with the softmax in float32, as transformers' eager attention
    does: for a single query, torch's fused CPU kernel is several times slower, in bfloat16 most of all. Up to
    `_FLOAT32_ROWS` rows, the products are in float32 whatever the model's dtype: torch's bfloat16 products of so
    few rows are slower than converting and multiplying in float32, with oneDNN or (as the runner leaves such steps)
    without it. Elsewhere the fused kernel."""
    rows, heads, dim = queries.shape
    kv_heads = keys.shape[0]
    if queries.device.type != "cpu":
        attended = torch.nn.functional.scaled_dot_product_attention(
            queries[:, :, None],
            keys.transpose(0, 1).to(queries.dtype),
            values.transpose(0, 1).to(queries.dtype),
            attn_mask=mask,
            scale=scaling,
            enable_gqa=True,
        )
        return attended[:, :, 0]
    # Query head h reads kv head h // group: (kv heads, rows, group, dim), matched to the keys' leading dimensions.
    products = torch.float32 if rows <= _FLOAT32_ROWS else queries.dtype
    grouped = queries.view(rows, kv_heads, heads // kv_heads, dim).transpose(0, 1).to(products)
    scores = torch.matmul(grouped, keys.to(products).transpose(-1, -2)) * (scaling or dim**-0.5)
    weights = scores.masked_fill(~mask.view(1, rows, 1, -1), -torch.inf).softmax(-1, dtype=torch.float32)
    attended = torch.matmul(weights.to(products), values.to(products))
    return attended.to(queries.dtype).transpose(0, 1).reshape(rows, heads, dim)


AttentionInterface.register(ATTENTION, paged_attention)
