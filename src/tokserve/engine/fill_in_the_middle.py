"""Fill-in-the-middle prompts for the completions `suffix`, in the prefix-suffix-middle order code models learn.

Only models whose vocabulary has one of the known sets of FIM tokens get one; the others refuse `suffix`.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from tokenizers import Tokenizer

# (prefix, suffix, middle) token spellings: StarCoder and SantaCoder; Qwen2.5-Coder.
_KNOWN = (
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
)


@dataclass(frozen=True, slots=True)
class FillInTheMiddle:
    """The ids of a model's FIM tokens."""

    prefix: int
    suffix: int
    middle: int

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> "FillInTheMiddle | None":
        """The model's FIM tokens, or None if its vocabulary has no known set."""
        for spellings in _KNOWN:
            ids = [tokenizer.token_to_id(spelling) for spelling in spellings]
            if all(token_id is not None for token_id in ids):
                prefix, suffix, middle = (int(token_id) for token_id in ids if token_id is not None)
                return cls(prefix, suffix, middle)
        return None

    def prompt(self, prefix_ids: Sequence[int], suffix_ids: Sequence[int]) -> list[int]:
        """`<prefix>` prompt `<suffix>` suffix `<middle>`: the model writes what goes between the two."""
        return [self.prefix, *prefix_ids, self.suffix, *suffix_ids, self.middle]
