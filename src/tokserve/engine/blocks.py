"""The KV cache's bookkeeping, no tensors: fixed-size blocks handed to sequences as they grow, and the prefix cache.

A block holds the keys and values of `block_size` consecutive tokens of one sequence. A full block whose keys and
values are computed is keyed by a hash chain over the token ids up to its end (each key hashes its parent's key
and its own tokens, as vLLM does), so a later sequence whose tokens start the same way reuses it instead of
computing it again. A block no sequence holds stays cached until its space is needed; the least recently released
goes first. Block 0 is never handed out: it takes the writes of padding rows.
"""

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence

BlockKey = bytes


def block_keys(token_ids: Sequence[int], block_size: int, count: int, parent: BlockKey = b"") -> list[BlockKey]:
    """The keys of the first `count` full blocks of `token_ids`, chained from `parent` (the key before them)."""
    keys: list[BlockKey] = []
    for index in range(count):
        tokens = array("q", token_ids[index * block_size : (index + 1) * block_size]).tobytes()
        parent = hashlib.blake2b(parent + tokens, digest_size=16).digest()
        keys.append(parent)
    return keys


class BlockAllocator:
    """Blocks 1..count-1 with reference counts; with `prefix_caching`, full blocks are kept by key after release."""

    def __init__(self, count: int, block_size: int, prefix_caching: bool) -> None:
        if count < 2:
            raise ValueError("the KV cache needs at least two blocks")
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.usable = count - 1
        self._free = list(range(count - 1, 0, -1))  # never cached, or evicted; popped from the end
        self._refs = [0] * count
        self._by_key: dict[BlockKey, int] = {}
        self._key_of: dict[int, BlockKey] = {}
        self._idle: OrderedDict[int, None] = OrderedDict()  # cached blocks nobody holds, least recently released first

    @property
    def available(self) -> int:
        """Blocks that `allocate` can still hand out (free ones and idle cached ones)."""
        return len(self._free) + len(self._idle)

    @property
    def usage(self) -> float:
        """The share of blocks that sequences hold (0-1)."""
        return 1 - self.available / self.usable

    def match(self, keys: Sequence[BlockKey]) -> list[int]:
        """The cached blocks of the longest prefix of `keys`; taken (held) by the caller."""
        blocks: list[int] = []
        if not self.prefix_caching:
            return blocks
        for key in keys:
            block = self._by_key.get(key)
            if block is None:
                break
            blocks.append(block)
        for block in blocks:
            self._hold(block)
        return blocks

    def allocate(self) -> int | None:
        """A block for new tokens (held by the caller), evicting the least recently released cached one if need be;
        None when every block is held."""
        if self._free:
            block = self._free.pop()
        elif self._idle:
            block, _ = self._idle.popitem(last=False)
            del self._by_key[self._key_of.pop(block)]
        else:
            return None
        self._refs[block] = 1
        return block

    def register(self, block: int, key: BlockKey) -> None:
        """`block` is full and computed: later sequences whose tokens hash to `key` may reuse it."""
        if self.prefix_caching and key not in self._by_key and block not in self._key_of:
            self._by_key[key] = block
            self._key_of[block] = key

    def release(self, blocks: Sequence[int]) -> None:
        """A sequence lets go of its blocks (the last first, so its earlier blocks are evicted after its later)."""
        for block in reversed(blocks):
            self._refs[block] -= 1
            if self._refs[block]:
                continue
            if block in self._key_of:
                self._idle[block] = None
            else:
                self._free.append(block)

    def _hold(self, block: int) -> None:
        if self._refs[block] == 0:
            del self._idle[block]
        self._refs[block] += 1
