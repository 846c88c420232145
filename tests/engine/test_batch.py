"""The padded batch: rows of different lengths, joined, repeated and dropped, compute what each would alone."""

from collections.abc import Sequence

import pytest
import torch

from tokserve.engine import Engine, LoadedModel
from tokserve.engine.batch import PaddedBatch, supports

PROMPTS = ["Hello there, how are you doing today my friend?", "Hi", "The capital of France is", "1 2 3 4 5 6 7 8"]


@pytest.fixture(scope="module")
def loaded(engine: Engine) -> LoadedModel:
    return engine.loaded


@pytest.fixture(scope="module")
def prompts(loaded: LoadedModel) -> list[list[int]]:
    return [loaded.tokenizer.encode(text) for text in PROMPTS]


def prefill(
    loaded: LoadedModel, prompts: Sequence[Sequence[int]], chunk: int = 10_000
) -> tuple[PaddedBatch, torch.Tensor]:
    """A batch that has read these prompts in chunks of `chunk` columns, and the logits after the last column."""
    batch, ids = PaddedBatch.of_prompts(loaded.model.config, loaded.device, prompts, pad_id=0)
    with torch.inference_mode():
        for start in range(0, ids.shape[1], chunk):
            inputs = batch.forward_inputs(ids[:, start : start + chunk], start)
            logits = loaded.logits(inputs, batch.cache, logits_to_keep=1)[:, -1]
    return batch, logits


def greedy(loaded: LoadedModel, batch: PaddedBatch, logits: torch.Tensor, steps: int = 8) -> list[list[int]]:
    tokens: list[list[int]] = [[] for _ in range(len(batch))]
    with torch.inference_mode():
        for _ in range(steps):
            chosen = logits.argmax(dim=-1)
            for row, token in enumerate(chosen.tolist()):
                tokens[row].append(token)
            inputs = batch.forward_inputs(chosen[:, None], batch.width)
            logits = loaded.logits(inputs, batch.cache, logits_to_keep=1)[:, -1]
    return tokens


@pytest.fixture(scope="module")
def alone(loaded: LoadedModel, prompts: list[list[int]]) -> list[list[int]]:
    return [greedy(loaded, *prefill(loaded, [prompt]))[0] for prompt in prompts]


def test_the_embedded_model_can_be_batched(loaded: LoadedModel) -> None:
    assert supports(loaded.model.config)


@pytest.mark.parametrize("chunk", [10_000, 3])
def test_left_padded_rows_read_in_chunks_match_each_alone(
    loaded: LoadedModel, prompts: list[list[int]], alone: list[list[int]], chunk: int
) -> None:
    batch, logits = prefill(loaded, prompts, chunk)
    assert batch.padded and batch.lengths == [len(prompt) for prompt in prompts]
    assert greedy(loaded, batch, logits) == alone


def test_rows_joined_repeated_and_dropped_match_each_alone(
    loaded: LoadedModel, prompts: list[list[int]], alone: list[list[int]]
) -> None:
    batch, logits = prefill(loaded, prompts[:2])
    later, later_logits = prefill(loaded, prompts[2:])
    batch.extend(later)
    batch.select([2, 1, 1])  # "Hi" twice, after the third prompt; the two longest prompts leave
    assert batch.lengths == [len(prompts[2]), len(prompts[1]), len(prompts[1])]
    assert batch.width == len(prompts[2])  # the padding only the dropped rows needed is gone
    logits = torch.cat([logits, later_logits])[[2, 1, 1]]
    assert greedy(loaded, batch, logits) == [alone[2], alone[1], alone[1]]
    batch.select([])
    assert len(batch) == 0 and batch.width == 0


def test_a_group_whose_rows_all_ended_joins_as_nothing(
    loaded: LoadedModel, prompts: list[list[int]], alone: list[list[int]]
) -> None:
    """Every request of a prefilled group may end at its first token: the running rows go on untouched."""
    batch, logits = prefill(loaded, prompts[:1])
    ended, _ = prefill(loaded, prompts[1:3])
    ended.select([])
    batch.extend(ended)
    assert batch.lengths == [len(prompts[0])]
    assert greedy(loaded, batch, logits) == [alone[0]]
