"""Chat messages to prompt token ids through the model's own chat template."""

from collections.abc import Mapping, Sequence
from typing import cast

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from tokserve.errors import InvalidRequest


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Render the template with the assistant's generation prompt and tokenize it."""
    if not tokenizer.chat_template:
        raise InvalidRequest("This model has no chat template; use /v1/completions.", param="messages")
    try:
        ids = tokenizer.apply_chat_template(
            [dict(message) for message in messages], add_generation_prompt=True, return_dict=False
        )
    except TemplateError as error:
        raise InvalidRequest(f"The chat template rejected the messages: {error}", param="messages") from error
    # With return_dict=False the template's rendering comes back as a plain list of ids.
    return [int(token_id) for token_id in cast(list[int], ids)]
