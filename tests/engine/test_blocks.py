"""The KV cache's bookkeeping: reference-counted blocks, block 0 kept back, the prefix cache and its eviction order."""

import pytest

from tokserve.engine.blocks import BlockAllocator, BlockKey, block_keys


def allocate(allocator: BlockAllocator) -> int:
    """A block that must be there."""
    block = allocator.allocate()
    assert block is not None
    return block


def cached(allocator: BlockAllocator, name: str) -> tuple[int, BlockKey]:
    """A new block, registered under a key of its own and still held."""
    block = allocate(allocator)
    key = block_keys([ord(letter) for letter in name], block_size=len(name), count=1)[0]
    allocator.register(block, key)
    return block, key


def test_every_block_but_zero_is_handed_out_once() -> None:
    allocator = BlockAllocator(5, block_size=4, prefix_caching=True)
    blocks = [allocator.allocate() for _ in range(4)]
    assert sorted(block for block in blocks if block is not None) == [1, 2, 3, 4]
    assert allocator.allocate() is None  # block 0 is for padding rows, never for a sequence
    assert allocator.available == 0


def test_a_cache_needs_two_blocks() -> None:
    with pytest.raises(ValueError, match="at least two blocks"):
        BlockAllocator(1, block_size=4, prefix_caching=True)


def test_a_released_block_is_handed_out_again() -> None:
    allocator = BlockAllocator(2, block_size=4, prefix_caching=True)
    block = allocate(allocator)
    assert allocator.allocate() is None
    allocator.release([block])
    assert allocator.allocate() == block


def test_a_shared_block_stays_held_until_its_last_holder_releases_it() -> None:
    allocator = BlockAllocator(3, block_size=4, prefix_caching=True)
    block, key = cached(allocator, "abcd")
    assert allocator.match([key]) == [block]  # a second holder
    allocator.release([block])
    assert allocator.available == 1  # still held by the other
    allocate(allocator)
    assert allocator.allocate() is None  # the shared block was not evicted
    allocator.release([block])
    assert allocator.available == 1  # now idle: free to evict


def test_usage_counts_held_blocks_not_idle_cached_ones() -> None:
    allocator = BlockAllocator(5, block_size=4, prefix_caching=True)
    assert allocator.usage == 0.0
    block, _ = cached(allocator, "abcd")
    allocate(allocator)
    assert allocator.usage == 0.5
    allocator.release([block])  # cached, but nobody holds it
    assert allocator.usage == 0.25


def test_match_holds_the_cached_blocks_of_the_longest_prefix_of_keys() -> None:
    allocator = BlockAllocator(8, block_size=2, prefix_caching=True)
    keys = block_keys([1, 2, 3, 4, 5, 6], block_size=2, count=3)
    first, second, third = (allocate(allocator) for _ in range(3))
    allocator.register(first, keys[0])
    allocator.register(second, keys[1])  # the third block is never registered (not full, say)
    allocator.release([first, second, third])
    assert allocator.usage == 0.0

    assert allocator.match(keys) == [first, second]
    assert allocator.usage == 2 / 7  # the matched blocks are held by the caller now
    assert allocator.match(keys[1:]) == [second]  # a key is found by itself, not only after its parent
    other_start = block_keys([9, 9, 3, 4], block_size=2, count=2)
    assert allocator.match(other_start) == []  # the first key misses: nothing is matched, however long the rest


def test_a_key_already_cached_keeps_its_first_block() -> None:
    allocator = BlockAllocator(4, block_size=4, prefix_caching=True)
    first, key = cached(allocator, "abcd")
    second = allocate(allocator)
    allocator.register(second, key)  # the same tokens computed twice (two prompts read side by side)
    allocator.release([first, second])
    assert allocator.match([key]) == [first]
    assert allocator.available == 2  # the duplicate went back to the free blocks, not to the cache


def test_idle_cached_blocks_are_evicted_only_when_no_free_block_remains() -> None:
    allocator = BlockAllocator(3, block_size=4, prefix_caching=True)
    block, key = cached(allocator, "abcd")
    allocator.release([block])
    other = allocate(allocator)
    assert other != block
    assert allocator.match([key]) == [block]  # still cached
    allocator.release([block, other])
    assert {allocate(allocator), allocate(allocator)} == {block, other}
    assert allocator.match([key]) == []  # its block had to be reused: evicted


def test_the_least_recently_released_cached_block_is_evicted_first() -> None:
    allocator = BlockAllocator(4, block_size=4, prefix_caching=True)
    (a, key_a), (b, key_b), (c, key_c) = cached(allocator, "aaaa"), cached(allocator, "bbbb"), cached(allocator, "cccc")
    allocator.release([a])
    allocator.release([c])
    allocator.release([b])
    assert allocate(allocator) == a
    assert allocator.match([key_a]) == []
    assert allocator.match([key_c]) == [c]  # a match takes it out of the idle line...
    allocator.release([c])  # ...and releasing puts it back as the most recent
    assert allocate(allocator) == b
    assert allocate(allocator) == c
    assert allocator.match([key_b]) == [] and allocator.match([key_c]) == []


def test_a_sequence_s_later_blocks_are_evicted_before_its_earlier_ones() -> None:
    """Released together, the blocks further down a chain go first: the prefix others share lives longest."""
    allocator = BlockAllocator(4, block_size=2, prefix_caching=True)
    keys = block_keys([1, 2, 3, 4, 5, 6], block_size=2, count=3)
    blocks = [allocate(allocator) for _ in keys]
    for block, key in zip(blocks, keys, strict=True):
        allocator.register(block, key)
    allocator.release(blocks)
    assert allocate(allocator) == blocks[2]
    assert allocator.match(keys) == blocks[:2]


def test_an_evicted_block_can_be_cached_under_a_new_key() -> None:
    allocator = BlockAllocator(2, block_size=4, prefix_caching=True)
    block, old_key = cached(allocator, "abcd")
    allocator.release([block])
    assert allocate(allocator) == block  # evicted
    new_key = block_keys([5, 6, 7, 8], block_size=4, count=1)[0]
    allocator.register(block, new_key)
    allocator.release([block])
    assert allocator.match([old_key]) == []
    assert allocator.match([new_key]) == [block]


def test_without_prefix_caching_nothing_is_ever_matched() -> None:
    allocator = BlockAllocator(3, block_size=4, prefix_caching=False)
    block, key = cached(allocator, "abcd")
    assert allocator.match([key]) == []
    allocator.release([block])
    assert allocator.match([key]) == []
    assert allocator.available == 2


def test_block_keys_cover_full_blocks_and_chain_from_the_parent() -> None:
    tokens = [1, 2, 3, 4, 5, 6, 7]
    keys = block_keys(tokens, block_size=2, count=3)
    assert len(keys) == 3 and len(set(keys)) == 3
    assert block_keys(tokens, block_size=2, count=2) == keys[:2]  # the partial last block is the caller's to leave
    assert block_keys(tokens[2:], block_size=2, count=2, parent=keys[0]) == keys[1:]
    assert block_keys([1, 2, 3, 4, 8, 9], block_size=2, count=3)[:2] == keys[:2]  # same start, same keys


def test_the_same_tokens_after_a_different_prefix_get_a_different_key() -> None:
    """A block's keys and values depend on everything before it, so its key must too."""
    one = block_keys([1, 2, 5, 6], block_size=2, count=2)
    other = block_keys([3, 4, 5, 6], block_size=2, count=2)
    assert one[0] != other[0]
    assert one[1] != other[1]
    assert block_keys([5, 6], block_size=2, count=1) not in ([one[1]], [other[1]])
