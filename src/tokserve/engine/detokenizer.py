"""Incremental detokenization on the event loop with `tokenizers`' DecodeStream. No torch here.

DecodeStream yields text only once a UTF-8 character is complete, and, primed with the prompt's last tokens,
keeps SentencePiece and byte-level leading spaces as the full decode has them.
"""

from collections.abc import Sequence

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

# A UTF-8 character is at most 4 bytes, so at most 4 byte-fallback tokens; a few more give the space context.
_PRIME_TOKENS = 8
_MAX_CHAR_TOKENS = 4


class Decoder:
    """Token ids after a prompt in, the text they add out ("" while a character is incomplete)."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Sequence[int], skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        window = list(prompt_ids[-_PRIME_TOKENS:])
        complete, tail = _split_incomplete_tail(tokenizer, window)
        self._stream = DecodeStream(ids=complete, skip_special_tokens=skip_special_tokens)
        # A prompt that ends mid-character: its bytes wait in the stream for the generated ones that complete it,
        # and what the prompt already showed of those tokens (a leading space, say) is not shown twice.
        for token_id in tail:
            self._stream.step(tokenizer, token_id)
        self._shown = ""
        if tail:
            shown = tokenizer.decode(window, skip_special_tokens=skip_special_tokens).rstrip("\ufffd")
            self._shown = shown[len(tokenizer.decode(complete, skip_special_tokens=skip_special_tokens)) :]

    def step(self, token_id: int) -> str:
        text = self._stream.step(self._tokenizer, token_id) or ""
        if self._shown and text:
            text, self._shown = text.removeprefix(self._shown), ""
        return text


def _split_incomplete_tail(tokenizer: Tokenizer, ids: list[int]) -> tuple[list[int], list[int]]:
    """Split off the trailing tokens that decode to an incomplete character.

    DecodeStream slices new text off at the byte length of the decoded prefix, so its prefix must end on a
    character boundary.
    """
    cut = len(ids)
    while cut > 0 and len(ids) - cut < _MAX_CHAR_TOKENS and tokenizer.decode(ids[:cut]).endswith("\ufffd"):
        cut -= 1
    return ids[:cut], ids[cut:]
