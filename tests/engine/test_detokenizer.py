"""DecodeStream-based detokenization with the embedded model's tokenizer: whole characters only, spaces right,
and a prompt that ends mid-character."""

from tokenizers import Tokenizer

from tokserve.engine import Decoder

TEXT = "Hello, 世界! 日本語のテキストと絵文字 😀🎉👍🏽 and café."


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
    shown = Decoder(tokenizer, prompt, skip_special_tokens=False)
    assert (
        "".join(shown.step(token_id) for token_id in [*pieces_ids(tokenizer, " Hi there"), end])
        == " Hi there<|im_end|>"
    )


def pieces_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False).ids)
