"""Constrained decoding with llguidance: grammars checked once, a matcher per constrained request, and the batch's
token masks.

A grammar is llguidance's text (Lark with `%json` schemas inside, or its JSON form); the server builds it, the
engine checks it (`Grammars.error`, on the caller's thread: compiling drops the GIL) before anything is generated.
Each step the worker asks for the masks of the rows that will sample (`Grammars.masks`) while the forward pass runs
on another thread: llguidance fills the int32 bitmask off the GIL, and the bits are unpacked here. Nothing of
`llguidance.torch` is used: importing it runs `torch.compile` (seconds, and deprecation warnings).
"""

from collections.abc import Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from copy import copy

import llguidance
import torch
from tokenizers import Tokenizer

_BITS = torch.arange(32, dtype=torch.int32)


class Constraint:
    """One request's matcher: which tokens may come next, advanced by each sampled token."""

    __slots__ = ("_matcher",)

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self._matcher = matcher

    def advance(self, token_id: int) -> bool:
        """Consume a sampled token; True once the grammar is complete (nothing but the end may follow)."""
        if not self._matcher.consume_token(token_id):
            raise RuntimeError(f"the grammar refused a token it allowed: {self._matcher.get_error()}")
        return self._matcher.is_stopped()

    @property
    def error(self) -> str:
        """Why the matcher allows nothing more ("" when it is well)."""
        return str(self._matcher.get_error())


class Grammars:
    """The tokenizer in llguidance's terms (built once: about a second), a thread for the masks, and the checks."""

    def __init__(self, tokenizer: Tokenizer, vocabulary_size: int, end_ids: Collection[int]) -> None:
        # As llguidance.hf.from_tokenizer does, from the tokenizer's JSON without padding or truncation.
        plain = copy(tokenizer)
        plain.no_padding()
        plain.no_truncation()
        self._tokenizer = llguidance.LLTokenizer(plain.to_str(), n_vocab=vocabulary_size, eos_token=sorted(end_ids))
        self._vocabulary_size = vocabulary_size
        self._executor = llguidance.LLExecutor()
        self._filling = ThreadPoolExecutor(1, thread_name_prefix="tokserve-masks")

    def error(self, grammar: str) -> str | None:
        """Why the grammar cannot be used (a bad schema, regex or rule), or None."""
        message: str = llguidance.LLMatcher.validate_grammar(grammar, self._tokenizer)
        return message or None

    def constraint(self, grammar: str) -> Constraint:
        matcher = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return Constraint(matcher)

    def masks(self, constraints: Sequence[Constraint]) -> "Future[torch.Tensor]":
        """The tokens each constraint allows next, bool (rows x vocabulary) on the CPU, filled on another thread.

        A matcher in error allows nothing or only the end: the worker fails that request (`Constraint.error`).
        At least one constraint.
        """
        return self._filling.submit(self._masks, constraints)

    def _masks(self, constraints: Sequence[Constraint]) -> torch.Tensor:
        words = (self._vocabulary_size + 31) // 32
        bitmask = torch.full((len(constraints), words), -1, dtype=torch.int32)
        rows = [(constraint._matcher, row) for row, constraint in enumerate(constraints)]
        # What llguidance.torch.fill_next_token_bitmask_par does: each row's words, written in place off the GIL.
        self._executor.unsafe_compute_mask_ptr(rows, bitmask.data_ptr(), words * 4, len(constraints))
        return ((bitmask[:, :, None] >> _BITS) & 1).bool().flatten(1)[:, : self._vocabulary_size]

    def close(self) -> None:
        self._filling.shutdown(wait=False, cancel_futures=True)
