"""FIM prompts: found by the model's own FIM tokens, prefix-suffix-middle order; none without them."""

import pytest
from tokenizers import Tokenizer, models

from tokserve.engine.fill_in_the_middle import FillInTheMiddle


@pytest.mark.parametrize(
    "spellings",
    [("<fim_prefix>", "<fim_suffix>", "<fim_middle>"), ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")],
)
def test_known_fim_tokens_make_a_prefix_suffix_middle_prompt(spellings: tuple[str, str, str]) -> None:
    tokenizer = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tokenizer.add_special_tokens(list(spellings))
    prefix, suffix, middle = (tokenizer.token_to_id(spelling) for spelling in spellings)
    fim = FillInTheMiddle.of(tokenizer)
    assert fim is not None
    assert fim.prompt([0, 0], [1]) == [prefix, 0, 0, suffix, 1, middle]


def test_no_fim_tokens_no_fim(tokenizer: Tokenizer) -> None:
    assert FillInTheMiddle.of(tokenizer) is None  # the embedded SmolLM2 GGUF has none
