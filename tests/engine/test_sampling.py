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


def test_presence_and_frequency_penalties_subtract_from_counted_tokens() -> None:
    """OpenAI's definition: logit - frequency * count - presence * (count > 0), over generated tokens only."""
    logits = torch.tensor([5.0, 4.0, 3.0, 0.0])
    sampler = Sampler(SamplingParams(temperature=0.0, frequency_penalty=0.5, presence_penalty=0.7), CPU, [1, 1])
    # 0 | 0: 3.8 < 1: 4 (the prompt's 1s do not count) | 0: 3.8 > 2: 3 > 1: 2.8 | 0: 3.3 | 0: 2.8 < 2: 3
    assert [sampler.sample(logits) for _ in range(5)] == [0, 1, 0, 0, 2]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens() -> None:
    logits = torch.tensor([2.0, 1.5, -1.0, -1.2])
    sampler = Sampler(SamplingParams(temperature=0.0, repetition_penalty=2.0), CPU, prompt_ids=[0])
    assert sampler.sample(logits) == 1  # 0 is in the prompt: 2.0 / 2 = 1.0 < 1.5
    assert sampler.sample(logits) == 0  # 1 is now seen too: 0.75 < 1.0
    negative = Sampler(SamplingParams(temperature=0.0, repetition_penalty=2.0), CPU, prompt_ids=[2])
    assert negative.sample(torch.tensor([-5.0, -5.0, -1.0, -1.2])) == 3  # -1 * 2 = -2 < -1.2


def test_logit_bias_adds_to_the_logits() -> None:
    assert Sampler(SamplingParams(temperature=0.0, logit_bias=((1, -100.0),)), CPU).sample(LOGITS) == 4
    assert Sampler(SamplingParams(temperature=0.0, logit_bias=((3, 2.6),)), CPU).sample(LOGITS) == 3
    sampler = Sampler(SamplingParams(temperature=1.0, seed=0, logit_bias=((0, 100.0),)), CPU)
    assert {sampler.sample(LOGITS) for _ in range(50)} == {0}


def test_min_tokens_keeps_end_ids_out_of_reach_until_reached() -> None:
    end = 1  # the greedy token
    sampler = Sampler(SamplingParams(temperature=0.0, min_tokens=2), CPU, end_ids={end})
    assert [sampler.sample(LOGITS) for _ in range(3)] == [4, 4, end]


def test_top_k_and_min_p_cut_the_tail() -> None:
    top_k = Sampler(SamplingParams(temperature=2.0, top_k=2, seed=0), CPU)
    assert {top_k.sample(LOGITS) for _ in range(200)} == {1, 4}
    # min_p 0.9: only tokens at least 0.9 times as likely as the best: 1 (best) and 4 (e^-0.1 = 0.905)
    min_p = Sampler(SamplingParams(temperature=1.0, min_p=0.9, seed=0), CPU)
    assert {min_p.sample(LOGITS) for _ in range(200)} == {1, 4}
