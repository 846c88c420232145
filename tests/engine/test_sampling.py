"""The batched sampler: each row samples as it would alone (greedy is argmax, seeded draws reproduce whatever shares
the batch, top-p keeps only the nucleus), the processors act in order, and one call makes one host transfer."""

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import torch

from tokserve.engine.crossing import SamplingParams
from tokserve.engine.sampling import BatchSampler, Sampled, SamplingState

CPU = torch.device("cpu")
LOGITS = torch.tensor([1.0, 3.0, 2.5, 0.5, 2.9])
# A wider row for the batch tests: random logits, the same every run.
WIDE = torch.randn(64, generator=torch.Generator().manual_seed(1)) * 2
# A grammar's mask over WIDE, the same every run: 16 tokens, not WIDE's best.
SPARSE = torch.rand(64, generator=torch.Generator().manual_seed(5)) < 0.25
# An end id that is neither LOGITS' best token nor 0 (where argmax lands on a row of NaN), and the mask of a grammar
# that allows only it, as a complete one does.
END = 3
ONLY_END = torch.arange(5) == END


def alone(
    params: SamplingParams,
    logits: torch.Tensor = LOGITS,
    steps: int = 1,
    prompt_ids: Sequence[int] = (),
    end_ids: Sequence[int] = (),
) -> list[int]:
    """The tokens of a request that is alone in its batch for `steps` steps."""
    row = SamplingState(params, CPU, prompt_ids, end_ids)
    sampler = BatchSampler(CPU)
    for _ in range(steps):
        sampler.sample(logits[None], [row], [None])
    return row.generated


def together(
    rows: Sequence[SamplingState], logits: torch.Tensor, steps: int, allowed: torch.Tensor | None = None
) -> list[list[int]]:
    """Each row's tokens after `steps` steps of sampling the rows as one batch (row i from logits[i])."""
    sampler = BatchSampler(CPU)
    for _ in range(steps):
        sampled = sampler.sample(logits, rows, [None] * len(rows), allowed)
        assert [result.token_id for result in sampled] == [row.generated[-1] for row in rows]
    return [row.generated for row in rows]


def test_greedy_is_argmax() -> None:
    assert alone(SamplingParams(temperature=0.0)) == [1]
    assert alone(SamplingParams(temperature=0.0), LOGITS.to(torch.bfloat16)) == [1]
    rows = [SamplingState(SamplingParams(temperature=0.0), CPU) for _ in range(3)]
    assert together(rows, torch.stack([LOGITS, -LOGITS, LOGITS.flip(0)]), 1) == [[1], [3], [3]]


def test_seed_reproduces_draws() -> None:
    def draws(seed: int | None) -> list[int]:
        return alone(SamplingParams(temperature=1.5, seed=seed), steps=50)

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert set(draws(-3)) > {1}  # negative seeds are valid OpenAI seeds; temperature spreads the draws
    assert draws(None) != draws(None)  # unseeded rows draw from a generator seeded by the OS


def test_seeded_row_is_the_same_alone_and_in_a_batch() -> None:
    """A seeded row draws its own E: neighbours, their number and their parameters do not change its tokens."""
    for params in (
        SamplingParams(temperature=1.0, seed=11),
        SamplingParams(temperature=0.8, top_p=0.9, min_p=0.05, seed=-5),
    ):
        expected = alone(params, WIDE, steps=30)
        assert len(set(expected)) > 3  # a spread of draws, not one token
        others = [
            SamplingParams(temperature=1.0),
            SamplingParams(temperature=1.0, seed=3),
            SamplingParams(temperature=0.0),
            SamplingParams(temperature=1.3, top_p=0.5),  # the batch takes the sorted path
            SamplingParams(temperature=1.0, top_k=3, frequency_penalty=0.5, repetition_penalty=1.2),
        ]
        rows = [SamplingState(other, CPU) for other in others]
        rows.insert(2, SamplingState(params, CPU))
        logits = torch.stack([WIDE if index == 2 else torch.randn(64) for index in range(len(rows))])
        assert together(rows, logits, 30)[2] == expected


def test_draws_follow_the_distribution() -> None:
    """20,000 unseeded rows in one call: each token's share is its probability, within 5 standard deviations."""
    count = 20_000
    probs = torch.softmax(LOGITS / 0.8, dim=-1)
    ordered = probs.sort(descending=True)
    kept = ordered.indices[ordered.values.cumsum(0) - ordered.values < 0.8]
    assert kept.tolist() == [1, 4, 2]  # the mass before 0 (0.95) reaches 0.8
    truncated = torch.zeros_like(probs).index_copy_(0, kept, probs[kept])
    for params, expected in (
        (SamplingParams(temperature=0.8), probs),
        (SamplingParams(temperature=0.8, top_p=0.8), truncated / truncated.sum()),
    ):
        rows = [SamplingState(params, CPU) for _ in range(count)]
        sampled = BatchSampler(CPU).sample(LOGITS.expand(count, -1), rows, [None] * count)
        shares = torch.bincount(torch.tensor([result.token_id for result in sampled]), minlength=5) / count
        tolerance = 5 * (expected * (1 - expected) / count).sqrt()
        assert ((shares - expected).abs() <= tolerance).all(), (shares, expected)


def test_top_p_keeps_the_nucleus() -> None:
    assert set(alone(SamplingParams(temperature=1.0, top_p=0.5, seed=0), steps=200)) == {1, 4}  # 0.36 + 0.33 >= 0.5
    assert set(alone(SamplingParams(temperature=1.0, top_p=0.0, seed=0), steps=50)) == {1}
    # Beside a row with top_p, a row without one keeps its whole distribution.
    rows = [SamplingState(SamplingParams(top_p=0.5, seed=1), CPU), SamplingState(SamplingParams(seed=2), CPU)]
    nucleus, whole = together(rows, torch.stack([LOGITS, LOGITS]), 300)
    assert set(nucleus) == {1, 4}
    assert set(whole) == {0, 1, 2, 3, 4}


def test_global_seed_untouched() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    rows = [
        SamplingState(SamplingParams(temperature=1.0, seed=5), CPU),
        SamplingState(SamplingParams(temperature=1.0), CPU),
        SamplingState(SamplingParams(temperature=1.0, top_p=0.9, top_k=3), CPU),
    ]
    together(rows, torch.stack([LOGITS] * 3), 3)
    assert torch.equal(torch.rand(3), expected)


def test_presence_and_frequency_penalties_subtract_from_counted_tokens() -> None:
    """OpenAI's definition: logit - frequency * count - presence * (count > 0), over generated tokens only."""
    logits = torch.tensor([5.0, 4.0, 3.0, 0.0])
    params = SamplingParams(temperature=0.0, frequency_penalty=0.5, presence_penalty=0.7)
    # 0 | 0: 3.8 < 1: 4 (the prompt's 1s do not count) | 0: 3.8 > 2: 3 > 1: 2.8 | 0: 3.3 | 0: 2.8 < 2: 3
    assert alone(params, logits, steps=5, prompt_ids=[1, 1]) == [0, 1, 0, 0, 2]
    # Presence alone does not grow with the count: 0 | 1 (0: 3.5 < 4) | then 0 for good (3.5 > 1: 2.5, 2: 3)
    assert alone(SamplingParams(temperature=0.0, presence_penalty=1.5), logits, steps=5) == [0, 1, 0, 0, 0]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens() -> None:
    logits = torch.tensor([2.0, 1.5, -1.0, -1.2])
    params = SamplingParams(temperature=0.0, repetition_penalty=2.0)
    # 0 is in the prompt: 2.0 / 2 = 1.0 < 1.5; then 1 is seen too: 0.75 < 1.0
    assert alone(params, logits, steps=2, prompt_ids=[0]) == [1, 0]
    assert alone(params, torch.tensor([-5.0, -5.0, -1.0, -1.2]), prompt_ids=[2]) == [3]  # -1 * 2 = -2 < -1.2


def test_logit_bias_adds_to_the_logits() -> None:
    assert alone(SamplingParams(temperature=0.0, logit_bias=((1, -100.0),))) == [4]
    assert alone(SamplingParams(temperature=0.0, logit_bias=((3, 2.6),))) == [3]
    assert set(alone(SamplingParams(temperature=1.0, seed=0, logit_bias=((0, 100.0),)), steps=50)) == {0}


def test_min_tokens_keeps_end_ids_out_of_reach_until_reached() -> None:
    end = 1  # the greedy token
    assert alone(SamplingParams(temperature=0.0, min_tokens=2), steps=3, end_ids=[end]) == [4, 4, end]
    assert alone(SamplingParams(temperature=0.0, min_tokens=2), steps=1) == [end]  # no end ids: nothing to mask


def test_top_k_and_min_p_cut_the_tail() -> None:
    assert set(alone(SamplingParams(temperature=2.0, top_k=2, seed=0), steps=200)) == {1, 4}
    assert set(alone(SamplingParams(temperature=2.0, top_k=2, top_p=0.99, seed=0), steps=200)) == {1, 4}  # sorted
    # min_p 0.9: only tokens at least 0.9 times as likely as the best: 1 (best) and 4 (e^-0.1 = 0.905)
    assert set(alone(SamplingParams(temperature=1.0, min_p=0.9, seed=0), steps=200)) == {1, 4}
    assert set(alone(SamplingParams(temperature=1.0, min_p=0.9, top_p=0.99, seed=0), steps=200)) == {1, 4}
    # Beside a row with top-k or min-p, a row without keeps its whole distribution.
    for cut in (SamplingParams(temperature=2.0, top_k=2, seed=1), SamplingParams(min_p=0.9, seed=1)):
        rows = [SamplingState(cut, CPU), SamplingState(SamplingParams(temperature=2.0, seed=2), CPU)]
        kept, whole = together(rows, torch.stack([LOGITS, LOGITS]), 300)
        assert set(kept) == {1, 4}
        assert set(whole) == {0, 1, 2, 3, 4}


def test_logprobs_are_of_the_raw_logits_with_the_best_alternatives_first() -> None:
    expected = torch.log_softmax(LOGITS, dim=-1).tolist()
    best = [1, 4, 2, 0, 3]
    # Temperature, bias and penalties change the draw, never the logprobs.
    rows = [
        SamplingState(SamplingParams(temperature=0.0), CPU),
        SamplingState(SamplingParams(temperature=0.5, seed=4, logit_bias=((3, 1.0),), frequency_penalty=1.0), CPU),
        SamplingState(SamplingParams(temperature=0.0), CPU),
        SamplingState(SamplingParams(temperature=1.0, top_p=0.8, seed=9, repetition_penalty=1.5), CPU, [1]),
    ]
    sampler = BatchSampler(CPU)
    for _ in range(5):
        sampled = sampler.sample(torch.stack([LOGITS] * 4), rows, [3, 0, None, 7])
        first, second, third, fourth = sampled
        assert first.token_id == 1 and first.logprobs is not None
        assert first.logprobs.logprob == pytest.approx(expected[1], abs=1e-6)
        assert [token for token, _ in first.logprobs.top] == best[:3]
        assert [value for _, value in first.logprobs.top] == pytest.approx([expected[i] for i in best[:3]], abs=1e-6)
        assert second.logprobs is not None and second.logprobs.top == ()  # 0: only the sampled token's
        assert second.logprobs.logprob == pytest.approx(expected[second.token_id], abs=1e-6)
        assert third.logprobs is None
        assert fourth.logprobs is not None  # more alternatives than the vocabulary: all of it
        assert fourth.logprobs.logprob == pytest.approx(expected[fourth.token_id], abs=1e-6)
        assert [token for token, _ in fourth.logprobs.top] == best
    assert len(set(rows[1].generated)) > 1  # the draws differed, the logprobs stayed raw


def test_allowed_forbids_tokens() -> None:
    allowed = torch.tensor([[True, False, True, True, True], [True, False, False, True, False]])
    rows = [SamplingState(SamplingParams(temperature=0.0), CPU), SamplingState(SamplingParams(seed=3), CPU)]
    greedy, drawn = together(rows, torch.stack([LOGITS, LOGITS]), 100, allowed)
    assert set(greedy) == {4}  # 1 is forbidden: the next best
    assert set(drawn) == {0, 3}
    # The logprobs are those of the allowed tokens (a forbidden token has none left).
    sampled = BatchSampler(CPU).sample(LOGITS[None], [SamplingState(SamplingParams(seed=0), CPU)], [5], allowed[1:])
    logprobs = sampled[0].logprobs
    assert logprobs is not None
    masked = torch.log_softmax(torch.tensor([1.0, -torch.inf, -torch.inf, 0.5, -torch.inf]), dim=-1)
    assert logprobs.logprob == pytest.approx(masked[sampled[0].token_id].item())
    assert [token for token, _ in logprobs.top[:2]] == [0, 3]
    assert logprobs.top[2][1] == -torch.inf


def test_allowed_rows_draw_only_allowed_tokens() -> None:
    permitted = set(SPARSE.nonzero()[:, 0].tolist())
    best = int(torch.where(SPARSE, WIDE, -torch.inf).argmax())
    assert best != int(WIDE.argmax())  # the mask does change the greedy choice
    for seed in range(5):
        rows = [
            SamplingState(SamplingParams(temperature=0.0), CPU),
            SamplingState(SamplingParams(temperature=1.0, seed=seed), CPU),
            SamplingState(SamplingParams(temperature=2.0, top_p=0.95, seed=seed), CPU),  # the sorted path
            SamplingState(SamplingParams(temperature=2.0, top_k=40, min_p=0.01, seed=seed), CPU),  # k > allowed
        ]
        greedy, *drawn = together(rows, WIDE.expand(4, -1), 50, SPARSE.expand(4, -1))
        assert set(greedy) == {best}
        for tokens in drawn:
            assert set(tokens) <= permitted and len(set(tokens)) > 1


def test_a_grammar_allowing_only_the_end_that_min_tokens_hides_still_draws_it() -> None:
    """The processors leave such a row nothing: it falls back to its grammar's tokens, never a draw from NaN."""
    rows = [
        SamplingState(params, CPU, end_ids=[END])
        for params in (
            SamplingParams(temperature=0.0, min_tokens=10),
            SamplingParams(temperature=1.0, seed=1, min_tokens=10),
            SamplingParams(temperature=1.0, top_p=0.9, top_k=2, min_p=0.1, min_tokens=10),
        )
    ]
    sampler = BatchSampler(CPU)
    for _ in range(3):
        for sampled in sampler.sample(LOGITS.expand(3, -1), rows, [2] * 3, ONLY_END.expand(3, -1)):
            assert sampled.token_id == END and sampled.logprobs is not None
            assert sampled.logprobs.logprob == 0.0  # all the allowed probability
            assert sampled.logprobs.top[0] == (END, 0.0)
    assert [row.generated for row in rows] == [[END] * 3] * 3


def test_a_bias_of_minus_100_on_every_allowed_token_still_draws_an_allowed_one() -> None:
    allowed = torch.tensor([True, False, False, True, False])
    # +100 on a forbidden token does not bring it back: -inf + 100 is still -inf.
    bias = ((0, -100.0), (3, -100.0), (1, 100.0))
    assert alone(SamplingParams(temperature=0.0, logit_bias=bias), steps=1) == [1]  # unconstrained, for contrast
    rows = [SamplingState(SamplingParams(temperature=0.0, logit_bias=bias), CPU)]
    rows += [SamplingState(SamplingParams(temperature=1.0, seed=seed, logit_bias=bias), CPU) for seed in range(3)]
    greedy, *drawn = together(rows, LOGITS.expand(4, -1), 100, allowed.expand(4, -1))
    assert set(greedy) == {0}  # 1.0 - 100 > 0.5 - 100
    for tokens in drawn:
        assert set(tokens) == {0, 3}


def test_an_unconstrained_row_beside_constrained_ones_draws_as_it_would_alone() -> None:
    """Its mask allows every token: the same tokens as alone, with the same seed, on either draw path."""
    free = [SamplingParams(temperature=1.0, seed=11), SamplingParams(temperature=0.8, top_p=0.9, seed=-5)]
    expected = [alone(params, WIDE, steps=30) for params in free]
    rows = [
        SamplingState(free[0], CPU),
        SamplingState(SamplingParams(temperature=1.0, seed=11, min_tokens=100), CPU, end_ids=[END]),
        SamplingState(free[1], CPU),
        SamplingState(SamplingParams(temperature=0.0), CPU),
    ]
    every = torch.ones(64, dtype=torch.bool)
    allowed = torch.stack([every, torch.arange(64) == END, every, SPARSE])
    first, ending, second, sparse = together(rows, WIDE.expand(4, -1), 30, allowed)
    assert [first, second] == expected
    assert set(ending) == {END} and set(sparse) == {int(torch.where(SPARSE, WIDE, -torch.inf).argmax())}


def test_a_mixed_batch_gives_each_row_what_it_would_get_alone() -> None:
    logits = torch.tensor([5.0, 4.0, 3.0, 0.0])
    requests: list[tuple[SamplingParams, Sequence[int], Sequence[int]]] = [
        (SamplingParams(temperature=0.0), (), ()),
        (SamplingParams(temperature=1.0, seed=21, top_k=3), (), ()),
        (SamplingParams(temperature=0.0, frequency_penalty=0.5, presence_penalty=0.7), [1, 1], ()),
        (SamplingParams(temperature=0.0, repetition_penalty=2.0, min_tokens=2), [0, 2], [1]),
        (SamplingParams(temperature=0.8, top_p=0.7), (), ()),
    ]
    expected = [alone(params, logits, 6, prompt, ends) for params, prompt, ends in requests]
    assert expected[0] == [0] * 6 and len(set(expected[2])) == 3  # the penalties do change the tokens
    rows = [SamplingState(params, CPU, prompt, ends) for params, prompt, ends in requests]
    got = together(rows, torch.stack([logits] * len(rows)), 6)
    assert got[:4] == expected[:4]
    assert set(got[4]) <= {0, 1}  # unseeded: only its nucleus is known


def test_one_host_transfer_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every processor, a draw of each kind and logprobs: still one `tolist`, and no `item`, int() or bool()."""
    rows = [
        SamplingState(SamplingParams(temperature=0.0, logit_bias=((2, 1.0),), min_tokens=3), CPU, end_ids=[1]),
        SamplingState(SamplingParams(temperature=0.9, top_p=0.8, top_k=3, min_p=0.1, seed=1), CPU),
        SamplingState(SamplingParams(repetition_penalty=1.3, frequency_penalty=0.2, presence_penalty=0.1), CPU, [1]),
    ]
    calls: list[str] = []

    def counted(name: str) -> Callable[..., Any]:
        original = getattr(torch.Tensor, name)

        def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return original(self, *args, **kwargs)

        return wrapper

    for name in ("tolist", "item", "__int__", "__float__", "__bool__", "__index__", "numpy", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, counted(name))
    sampler = BatchSampler(CPU)
    for _ in range(2):
        calls.clear()
        sampler.sample(torch.stack([LOGITS] * 3), rows, [2, None, 0], torch.ones(3, 5, dtype=torch.bool))
        assert calls == ["tolist"]


@pytest.fixture
def forbidden(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Makes a torch function raise when called."""

    def forbid(name: str) -> None:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"{name} ran")

        if name.startswith("Tensor."):
            monkeypatch.setattr(torch.Tensor, name.removeprefix("Tensor."), fail)
        else:
            monkeypatch.setattr(torch, name, fail)

    yield forbid


def test_work_no_row_needs_is_skipped(forbidden: Callable[[str], None]) -> None:
    for name in ("sort", "topk", "log_softmax", "Tensor.scatter_", "Tensor.scatter_add_"):
        forbidden(name)
    # Draws without top-p or top-k: no sort; no logprobs asked: no log_softmax; no penalties: no scatter.
    rows = [SamplingState(SamplingParams(temperature=0.7, seed=1), CPU), SamplingState(SamplingParams(), CPU)]
    together(rows, torch.stack([LOGITS, LOGITS]), 2)
    # All greedy: no draw at all.
    for name in ("softmax", "Tensor.uniform_", "Tensor.exponential_"):
        forbidden(name)
    assert together([SamplingState(SamplingParams(temperature=0.0), CPU)], LOGITS[None], 2) == [[1, 1]]


def test_rows_logits_and_logprobs_must_agree() -> None:
    row = SamplingState(SamplingParams(), CPU)
    with pytest.raises(ValueError, match="rows"):
        BatchSampler(CPU).sample(torch.stack([LOGITS, LOGITS]), [row], [None])
    with pytest.raises(ValueError, match="logprobs"):
        BatchSampler(CPU).sample(LOGITS[None], [row], [])
    assert row.generated == []
    assert BatchSampler(CPU).sample(LOGITS[None], [row], [None]) == [Sampled(row.generated[0], None)]
