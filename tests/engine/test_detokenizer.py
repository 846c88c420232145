"""DecodeStream-based detokenization with the embedded model's tokenizer: whole characters only, spaces right,
and a prompt that ends mid-character."""

import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from tokserve.engine import Decoder, embedded_model_file

TEXT = "Hello, 世界! 日本語のテキストと絵文字 😀🎉👍🏽 and café."


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    path = embedded_model_file()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).backend_tokenizer


def test_pieces_are_whole_characters_and_join_to_the_full_decode(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(TEXT, add_special_tokens=False).ids
    assert len(ids) > len(TEXT.split())  # several characters span several tokens
    for cut in range(len(ids)):
        decoder = Decoder(tokenizer, ids[:cut])
        pieces = [decoder.step(token_id) for token_id in ids[cut:]]
        assert not any("\ufffd" in piece for piece in pieces), cut
        # A prompt that ends mid-character: the character comes out whole with the first generated piece.
        assert tokenizer.decode(ids[:cut]).rstrip("\ufffd") + "".join(pieces) == TEXT, cut


def test_special_tokens_are_skipped(tokenizer: Tokenizer) -> None:
    end = tokenizer.token_to_id("<|im_end|>")
    prompt = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False).ids
    decoder = Decoder(tokenizer, prompt)
    pieces = [decoder.step(token_id) for token_id in tokenizer.encode(" Hi there", add_special_tokens=False).ids]
    assert "".join(pieces) + decoder.step(end) == " Hi there"
