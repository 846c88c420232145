"""Chat messages to prompt token ids through a chat template: the model's own, or one the server was given."""

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, cast

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from tokserve.errors import InvalidRequest

# Arguments of apply_chat_template (and `messages`, which it sets): a request's template variables may not be these.
_RESERVED = (set(inspect.signature(PreTrainedTokenizerBase.apply_chat_template).parameters) - {"self", "kwargs"}) | {
    "messages"
}
_REQUEST_FIELDS = {"add_generation_prompt", "continue_final_message"}


def encode_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Mapping[str, Any]],
    *,
    template: str | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    variables: Mapping[str, Any] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> list[int]:
    """Render `template` (default: the tokenizer's) and tokenize it.

    `continue_final_message` leaves the last message open for the model to continue; `variables` are the
    request's extra template variables; `tools` the JSON schemas of the functions it may call, for templates that
    list them. InvalidRequest when the template rejects the messages.
    """
    template = template or tokenizer.chat_template
    if not template:
        raise InvalidRequest(
            "This model has no chat template; use /v1/completions, or start the server with --chat-template.",
            param="messages",
        )
    variables = variables or {}
    for name in variables:
        if name in _RESERVED:
            hint = f" (use the request field {name})" if name in _REQUEST_FIELDS else ""
            raise InvalidRequest(
                f"'{name}' is an argument of the template call, not a template variable{hint}.",
                param=f"chat_template_kwargs.{name}",
            )
    try:
        ids = tokenizer.apply_chat_template(
            [dict(message) for message in messages],
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tools=[dict(tool) for tool in tools] if tools else None,
            return_dict=False,
            **variables,
        )
    # Templates raise TemplateError (raise_exception), transformers ValueError (nothing to continue), and template
    # code TypeError on values it cannot handle: each is about this request's messages.
    except (TemplateError, ValueError, TypeError) as error:
        raise InvalidRequest(f"The chat template rejected the messages: {error}", param="messages") from error
    # With return_dict=False the template's rendering comes back as a plain list of ids.
    return [int(token_id) for token_id in cast(list[int], ids)]
