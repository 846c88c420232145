"""The per-request sampler: greedy at temperature 0, seeded draws reproduce, top-p keeps only the nucleus."""

import torch

from tokserve.engine import SamplingParams
from tokserve.engine.sampling import Sampler

CPU = torch.device("cpu")
LOGITS = torch.tensor([1.0, 3.0, 2.5, 0.5, 2.9])


def test_greedy_is_argmax() -> None:
    assert Sampler(SamplingParams(temperature=0.0), CPU).sample(LOGITS) == 1


def test_seed_reproduces_draws() -> None:
    def draws(seed: int) -> list[int]:
        sampler = Sampler(SamplingParams(temperature=1.5, seed=seed), CPU)
        return [sampler.sample(LOGITS) for _ in range(50)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert set(draws(-3)) > {1}  # negative seeds are valid OpenAI seeds; temperature spreads the draws


def test_top_p_keeps_the_nucleus() -> None:
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=0), CPU)
    assert {sampler.sample(LOGITS) for _ in range(200)} <= {1, 4}  # 0.36 + 0.33 of the mass reach 0.5
    zero = Sampler(SamplingParams(temperature=1.0, top_p=0.0, seed=0), CPU)
    assert {zero.sample(LOGITS) for _ in range(50)} == {1}


def test_global_seed_untouched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Sampler(SamplingParams(temperature=1.0, seed=5), CPU).sample(LOGITS)
    assert torch.equal(torch.rand(3), expected)
