"""Token ids as logprobs show them: each token's own UTF-8 bytes and text. No torch here.

A token may hold part of a character (byte-level BPE splits 日 in two), so its bytes come from the vocabulary,
not from decoding it alone; such a token's text is written `bytes:\\xe6\\x97`, as OpenAI writes it.
"""

import json
import re
from functools import cache

from tokenizers import Tokenizer

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_METASPACE = "\u2581"


class Vocabulary:
    """The bytes and text of each token id of one tokenizer."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.size = tokenizer.get_vocab_size(with_added_tokens=True)
        added = tokenizer.get_added_tokens_decoder()
        self._added = {token_id: token.content for token_id, token in added.items()}
        # The special tokens by text: markup such as Mistral's [TOOL_CALLS] is one, which a grammar names by id.
        self.special = {token.content: token_id for token_id, token in added.items() if token.special}
        self._byte_level = _decodes_byte_level(tokenizer)
        self._cache: dict[int, tuple[str, bytes | None]] = {}

    def token(self, token_id: int) -> tuple[str, bytes | None]:
        """(text, bytes) of one token; bytes are None where the tokenizer does not say."""
        if (known := self._cache.get(token_id)) is None:
            raw = self._bytes(token_id)
            known = self._cache[token_id] = (_text(raw) if raw is not None else self._decoded(token_id), raw)
        return known

    def _bytes(self, token_id: int) -> bytes | None:
        if token_id in self._added:
            return self._added[token_id].encode()
        piece = self._tokenizer.id_to_token(token_id)
        if piece is None:
            return None
        if self._byte_level:
            table = _byte_level_table()
            return bytes(table[char] for char in piece) if all(char in table for char in piece) else None
        if match := _BYTE_FALLBACK.fullmatch(piece):
            return bytes([int(match.group(1), 16)])
        text = self._decoded(token_id)
        return None if "\ufffd" in text else text.encode()

    def _decoded(self, token_id: int) -> str:
        text = self._tokenizer.decode([token_id], skip_special_tokens=False)
        piece = self._tokenizer.id_to_token(token_id) or ""
        # SentencePiece decoders drop the leading space of a sequence's first word; a lone token is such a word.
        return " " + text if piece.startswith(_METASPACE) and not text.startswith(" ") else text


def _decodes_byte_level(tokenizer: Tokenizer) -> bool:
    """Whether the decoder maps GPT-2's byte alphabet back to bytes: alone, or as one step of a `Sequence` (as in
    transformers 5.17's tokenizer of the embedded GGUF). Read from the tokenizer's JSON: a `Sequence` decoder does
    not show its steps to Python."""
    decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
    return any(step.get("type") == "ByteLevel" for step in decoder.get("decoders", [decoder]))


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{byte:02x}" for byte in raw)


@cache
def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte: printable bytes stand for themselves, the rest from U+0100."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {chr(byte): byte for byte in printable} | {chr(256 + i): byte for i, byte in enumerate(others)}
