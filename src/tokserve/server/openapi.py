"""The OpenAPI document at /openapi.json: FastAPI's, plus what it cannot infer from routes that answer either one
JSON object or an SSE stream: the stream's media type and the schema of its events, and the error envelope of
every error status (FastAPI would document a 422 `{"detail"}` that tokserve never sends)."""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from tokserve.schemas import CreateChatCompletionStreamResponse, ErrorResponse

_REFS = "#/components/schemas/{model}"

_ERRORS: dict[int | str, str] = {
    400: "Malformed JSON, a field missing, mistyped or out of range, a server limit exceeded (`code` "
    "`limit_exceeded`), or prompt plus max_tokens beyond the context (`context_length_exceeded`)",
    404: "Another model than the one served",
    408: "A body that did not arrive whole within --body-timeout (`request_timeout`)",
    413: "A body larger than --max-body-bytes (`request_too_large`)",
    429: "Too many requests waiting (--max-queue); retry after the `Retry-After` seconds",
    500: "Generation failed",
    503: "Loading, draining or unhealthy; retry after the `Retry-After` seconds",
    "default": "Any other error (405, ...), in the same envelope",
}

# Models that appear in the document only inside SSE events, so FastAPI does not list them.
_STREAMED: list[type[BaseModel]] = [CreateChatCompletionStreamResponse]


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error envelope for these statuses, and for any other."""
    keys: list[int | str] = [*statuses, "default"]
    return {status: {"model": ErrorResponse, "description": _ERRORS[status]} for status in keys}


def generation_responses(response: type[BaseModel], chunk: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """A route that answers `response`, or with `"stream": true` SSE events whose data is a `chunk`, the error
    envelope of a failure after the stream started, or the final `[DONE]`."""
    json_data = {"$ref": _REFS.format(model=chunk.__name__)}, {"$ref": _REFS.format(model=ErrorResponse.__name__)}
    event = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "anyOf": [
                    {"const": "[DONE]"},
                    {"contentMediaType": "application/json", "contentSchema": {"anyOf": list(json_data)}},
                ]
            }
        },
    }
    ok = {
        "model": response,
        "description": f"`{response.__name__}`, or with `stream` an SSE stream of `{chunk.__name__}` events",
        "content": {"text/event-stream": {"itemSchema": event}},
    }
    return {200: ok, **error_responses(400, 404, 408, 413, 429, 500, 503)}


def install_openapi(app: FastAPI) -> None:
    """Have `app` serve the document above, built once on first use."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            _, definitions = models_json_schema([(model, "serialization") for model in _STREAMED], ref_template=_REFS)
            document.setdefault("components", {}).setdefault("schemas", {}).update(definitions.get("$defs", {}))
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the document
