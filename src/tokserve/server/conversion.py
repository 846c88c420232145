"""Wire requests to engine requests, one function per endpoint: model check, prompt ids, token budget, sampling."""

import uuid

from tokserve.config import Settings
from tokserve.engine import Engine, GenerationRequest, SamplingParams
from tokserve.errors import ContextLengthExceeded
from tokserve.schemas import CreateChatCompletionRequest, CreateCompletionRequest, GenerationParams, MessageContent
from tokserve.server.dependencies import check_model

# OpenAI's default for /v1/completions; chat defaults to the rest of the context.
_COMPLETIONS_MAX_TOKENS = 16


def chat_generation_request(body: CreateChatCompletionRequest, engine: Engine, settings: Settings) -> GenerationRequest:
    check_model(body.model, settings)
    messages = [
        {"role": "system" if message.role == "developer" else message.role, "content": _text(message.content)}
        for message in body.messages
    ]
    prompt_ids = engine.encode_chat(messages)
    max_tokens = body.max_completion_tokens or body.max_tokens
    return _generation_request("chatcmpl", prompt_ids, max_tokens, body, engine.max_model_len, "messages")


def completion_generation_request(
    body: CreateCompletionRequest, engine: Engine, settings: Settings
) -> GenerationRequest:
    check_model(body.model, settings)
    prompt_ids = engine.encode_text(body.prompt)
    max_tokens = body.max_tokens or _COMPLETIONS_MAX_TOKENS
    return _generation_request("cmpl", prompt_ids, max_tokens, body, engine.max_model_len, "prompt")


def _text(content: MessageContent | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content)


def _generation_request(
    prefix: str,
    prompt_ids: list[int],
    max_tokens: int | None,
    body: GenerationParams,
    max_model_len: int,
    prompt_param: str,
) -> GenerationRequest:
    room = max_model_len - len(prompt_ids)
    if max_tokens is None and room >= 1:
        max_tokens = room
    if max_tokens is None or max_tokens > room:
        asked = f"{len(prompt_ids)} in the {prompt_param}" + (f" plus {max_tokens} to generate" if max_tokens else "")
        raise ContextLengthExceeded(
            f"This model's maximum context length is {max_model_len} tokens; the request needs more ({asked}). "
            f"Shorten the {prompt_param} or lower max_tokens.",
            param=prompt_param if max_tokens is None or len(prompt_ids) >= max_model_len else "max_tokens",
        )
    sampling = SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
    )
    return GenerationRequest(f"{prefix}-{uuid.uuid4().hex}", tuple(prompt_ids), max_tokens, sampling)
