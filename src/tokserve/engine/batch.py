"""The rows of a batch and their shared KV cache: left-padded so that every row's next token sits in the same column.

Rows join (a prefilled group is merged in, the shorter side padded on the left) and leave (their rows are selected out,
and columns that became padding in every row are trimmed), so the cache never holds a finished request for longer
than a step. The attention mask hides each row's padding; position ids count only its real tokens, so a row's
numbers are those it would have alone. Only full-attention caches (`DynamicLayer`) can be padded and trimmed like
this; `supports` tells whether a model's cache is one.
"""

from collections.abc import Sequence

import torch
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer


def supports(config: PretrainedConfig) -> bool:
    """Whether this model's cache is full attention in every layer, which rows can share with padding."""
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)


class PaddedBatch:
    """Rows sharing one left-padded `DynamicCache`; `lengths[i]` real tokens in row i, the rest padding."""

    def __init__(self, config: PretrainedConfig, device: torch.device) -> None:
        self._config = config
        self.cache = DynamicCache(config=config)
        self.mask = torch.ones(0, 0, dtype=torch.long, device=device)  # rows x columns; 0 marks padding
        self.lengths: list[int] = []
        self._device = device

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        """Columns of the cache, padding included."""
        return int(self.mask.shape[1])

    @property
    def padded(self) -> bool:
        return any(length != self.width for length in self.lengths)

    @classmethod
    def of_prompts(
        cls, config: PretrainedConfig, device: torch.device, prompts: Sequence[Sequence[int]], pad_id: int
    ) -> tuple["PaddedBatch", torch.Tensor]:
        """An empty-cache batch for these prompts, and their token ids left-padded to one width."""
        batch = cls(config, device)
        width = max(len(prompt) for prompt in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
        batch.mask = torch.zeros(len(prompts), width, dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long, device=device)
            batch.mask[row, width - len(prompt) :] = 1
        batch.lengths = [0] * len(prompts)  # nothing cached yet; `forward_inputs` fills the cache
        return batch, ids

    def forward_inputs(self, ids: torch.Tensor, start: int) -> dict[str, object]:
        """Model inputs, but for `cache`, for the columns `start..start+ids.shape[1]` of a prompt batch, or one new
        token per row.

        For a prompt batch (`of_prompts`), the mask already spans the whole prompt width; for decoding it grows by
        one column of ones. Without padding, the mask is left out: attention is then plainly causal, as alone.
        """
        columns = ids.shape[1]
        if start + columns > self.width:
            # Decoding: each row's new token sits at its own count of real tokens; no pass over the mask.
            self.mask = torch.cat([self.mask, self.mask.new_ones(len(self), columns)], dim=1)
            positions = torch.tensor(self.lengths, device=self._device)[:, None]
            self.lengths = [length + columns for length in self.lengths]
            mask = self.mask
        else:
            mask = self.mask[:, : start + columns]
            positions = (mask.cumsum(dim=1) - 1).clamp_min(0)[:, start:]
            self.lengths = [int(length) for length in mask.sum(dim=1).tolist()]
        padded = any(length != start + columns for length in self.lengths)
        return {
            "input_ids": ids,
            "attention_mask": mask if padded else None,
            "position_ids": positions,
        }

    def extend(self, other: "PaddedBatch") -> None:
        """Take in the rows of `other` (whose cache is filled), after the rows already here."""
        if not other.lengths:  # every row of a prefilled group may end at its first token
            return
        if not self.lengths:
            self.cache, self.mask, self.lengths = other.cache, other.mask, list(other.lengths)
            return
        width = max(self.width, other.width)
        for mine, theirs in zip(_layers(self.cache), _layers(other.cache), strict=True):
            (keys, values), (their_keys, their_values) = _tensors(mine), _tensors(theirs)
            mine.keys = torch.cat([_pad_left(keys, width), _pad_left(their_keys, width)])
            mine.values = torch.cat([_pad_left(values, width), _pad_left(their_values, width)])
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(other.mask, width)])
        self.lengths += other.lengths

    def select(self, rows: Sequence[int]) -> None:
        """Keep the rows `rows`, in that order (one may repeat: the choices of one prompt share its prefill), then
        drop the columns that are padding in every row."""
        if list(rows) == list(range(len(self))):
            return
        if not rows:
            self.cache = DynamicCache(config=self._config)
            self.mask, self.lengths = self.mask[:0, :0], []
            return
        index = torch.tensor(rows, dtype=torch.long, device=self._device)
        first = self.width - max(self.lengths[row] for row in rows)  # columns before it are padding everywhere
        for layer in _layers(self.cache):
            keys, values = _tensors(layer)
            layer.keys = keys.index_select(0, index)[:, :, first:]
            layer.values = values.index_select(0, index)[:, :, first:]
        self.mask = self.mask.index_select(0, index)[:, first:]
        self.lengths = [self.lengths[row] for row in rows]


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers, all full attention (`supports` ruled out every other kind)."""
    layers = [layer for layer in cache.layers if isinstance(layer, DynamicLayer)]
    if len(layers) != len(cache.layers):
        raise TypeError("only full-attention caches can be batched with padding")
    return layers


def _tensors(layer: DynamicLayer) -> tuple[torch.Tensor, torch.Tensor]:
    if layer.keys is None or layer.values is None:
        raise ValueError("the cache layer is empty")
    return layer.keys, layer.values


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros prepended along the sequence dimension (the second of a mask, the third of keys and values)."""
    dim = 1 if tensor.dim() == 2 else 2
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
