"""Token ids as logprobs show them: each token's own bytes, and text that says when it holds part of a character."""

from tokenizers import Tokenizer

from tokserve.engine import Vocabulary


def test_bytes_of_a_text_s_tokens_join_to_its_utf8(tokenizer: Tokenizer) -> None:
    vocabulary = Vocabulary(tokenizer)
    text = "日本 hello, café 😀<|im_end|>"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    tokens = [vocabulary.token(token_id) for token_id in ids]
    assert b"".join(raw or b"" for _, raw in tokens) == text.encode()
    assert tokens[-1] == ("<|im_end|>", b"<|im_end|>")  # special tokens show as written
    assert (" hello", b" hello") in tokens


def test_a_token_holding_part_of_a_character_is_written_as_bytes(tokenizer: Tokenizer) -> None:
    vocabulary = Vocabulary(tokenizer)
    first = tokenizer.encode("日", add_special_tokens=False).ids[0]
    text, raw = vocabulary.token(first)
    assert raw is not None and raw != "日".encode() and "日".encode().startswith(raw)
    assert text == "bytes:" + "".join(f"\\x{byte:02x}" for byte in raw)
    assert vocabulary.size == tokenizer.get_vocab_size()
