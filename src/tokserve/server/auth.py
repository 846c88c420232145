"""API keys: with `--api-key`, /v1/* (and /metrics with `--protect-metrics`) need `Authorization: Bearer KEY`.

Checked in front of the routes, before the body is even read, so a client without a key learns nothing about its
request. Keys are compared in constant time, and never logged: only their absence or mismatch is.
"""

import hmac

from fastapi.responses import JSONResponse
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from tokserve.errors import AuthenticationFailed, InvalidRequest, TokservError
from tokserve.server.errors import error_response
from tokserve.server.metrics import Metrics


class ApiKeyMiddleware:
    """Pure ASGI: a 401 in the OpenAI envelope unless the request carries one of the keys."""

    def __init__(self, app: ASGIApp, keys: list[SecretStr], protect_metrics: bool, metrics: Metrics) -> None:
        self.app = app
        self._keys = [key.get_secret_value().encode() for key in keys]
        self._protect_metrics = protect_metrics
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._needs_key(scope["path"]) or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        error = self._check([value for name, value in scope["headers"] if name == b"authorization"])
        if error is None:
            await self.app(scope, receive, send)
            return
        status, body = error_response(error)
        self._metrics.error(body.error.type, body.error.code)
        response = JSONResponse(body.model_dump(), status_code=status, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

    def _needs_key(self, path: str) -> bool:
        if path == "/metrics":
            return self._protect_metrics
        # Only the API: /health has no user data, and the chat page at / asks for the key itself.
        return bool(self._keys) and path.startswith("/v1/")

    def _check(self, authorizations: list[bytes]) -> TokservError | None:
        if len(authorizations) > 1:  # proxies and servers disagree on which one counts: none does
            return InvalidRequest(f"The request has {len(authorizations)} Authorization headers; send one.")
        scheme, _, sent = (authorizations[0] if authorizations else b"").partition(b" ")
        if scheme.lower() != b"bearer" or not sent.strip():
            return AuthenticationFailed("Missing API key: send it as `Authorization: Bearer KEY`.")
        # Every key is compared, so the time taken says nothing about which one, if any, came close.
        matches = [hmac.compare_digest(sent.strip(), key) for key in self._keys]
        return None if any(matches) else AuthenticationFailed("Invalid API key.")
