"""The paged attention's decode path against plain attention over each row's own keys, on a cache whose unwritten
slots hold NaN (as `torch.empty` memory may)."""

import pytest
import torch

from tokserve.engine.kv_cache import KVCache, StepLayout, paged_attention

HEADS, KV_HEADS, DIM, BLOCK = 4, 2, 8, 16


class _Layer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer_idx = 0


# Two rows multiply in float32 whatever the dtype, three in the model's dtype (kv_cache._FLOAT32_ROWS).
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("count", [2, 3])
def test_decode_rows_of_different_lengths_ignore_what_the_cache_never_wrote(dtype: torch.dtype, count: int) -> None:
    """Rows 3, 20 (and 9) tokens long decode together: a shorter row's padded context covers slots nobody wrote."""
    torch.manual_seed(0)
    cache = KVCache(blocks=5, block_size=BLOCK, dtype=dtype)
    rows = dict(list({"short": ([1], 3), "long": ([2, 3], 20), "middle": ([4], 9)}.items())[:count])
    contexts = {
        name: (torch.randn(KV_HEADS, length, DIM, dtype=dtype), torch.randn(KV_HEADS, length, DIM, dtype=dtype))
        for name, (_, length) in rows.items()
    }
    keys, values = cache.layer(0, torch.empty(1, KV_HEADS, 1, DIM))
    keys.fill_(torch.nan)
    values.fill_(torch.nan)
    for name, (blocks, length) in rows.items():  # all but the newest token, as earlier steps wrote them
        slots = torch.tensor([blocks[position // BLOCK] * BLOCK + position % BLOCK for position in range(length - 1)])
        keys[:, slots] = contexts[name][0][:, :-1]
        values[:, slots] = contexts[name][1][:, :-1]
    layout = StepLayout.build(cache, torch.device("cpu"), [(blocks, length - 1, 1) for blocks, length in rows.values()])
    queries = torch.randn(1, HEADS, len(rows), DIM, dtype=dtype)
    new_keys = torch.stack([contexts[name][0][:, -1] for name in rows], dim=1)[None]
    new_values = torch.stack([contexts[name][1][:, -1] for name in rows], dim=1)[None]

    output, _ = paged_attention(_Layer(), queries, new_keys, new_values, None, scaling=DIM**-0.5, tokserve_step=layout)

    assert output.dtype == dtype
    for row, name in enumerate(rows):
        expected = torch.nn.functional.scaled_dot_product_attention(
            queries[:, :, row : row + 1].float(),
            contexts[name][0][None].float(),
            contexts[name][1][None].float(),
            enable_gqa=True,
        )
        # bfloat16 products round each term to 8 bits: within a few units of its last place.
        tolerance = {"atol": 1e-2, "rtol": 2e-2} if dtype == torch.bfloat16 else {}
        torch.testing.assert_close(output[0, row], expected[0, :, 0].to(dtype), **tolerance)
