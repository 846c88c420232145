"""The one exception tree of tokserve; `server/errors.py` alone turns it into HTTP statuses and OpenAI envelopes.

```
TokservError(message, param=None)   status, then OpenAI type or code
├── InvalidRequest                  400 invalid_request_error
│   ├── ContextLengthExceeded       400 code context_length_exceeded
│   ├── LimitExceeded               400 code limit_exceeded (a server limit, named in the message)
│   │   ├── RequestTooLarge         413 code request_too_large
│   │   └── BodyTimeout             408 code request_timeout (the body took longer than --body-timeout)
│   ├── ModelNotFound               404 code model_not_found
│   ├── ResponseNotFound            404 code response_not_found (a stored response, by id)
│   └── HostNotAllowed              400 code host_not_allowed (the Host header, against DNS rebinding)
├── AuthenticationFailed            401 code invalid_api_key
├── Overloaded(retry_after)         429 + Retry-After
├── NotReady(state)                 503 + Retry-After (loading, draining, unhealthy)
└── GenerationFailed                500 server_error
```

Nothing of tokserve is imported here, so every layer can raise these.
"""


class TokservError(Exception):
    """A failure a client is told about; `param` names the request field at fault, if any."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(TokservError):
    """The request cannot be served as written."""


class ContextLengthExceeded(InvalidRequest):
    """Prompt plus requested tokens do not fit the model's context."""


class LimitExceeded(InvalidRequest):
    """The request is beyond one of the server's configured limits; the message names the flag."""


class RequestTooLarge(LimitExceeded):
    """The request body is larger than --max-body-bytes."""


class BodyTimeout(LimitExceeded):
    """The request body did not arrive whole within --body-timeout seconds."""


class ModelNotFound(InvalidRequest):
    """The request names a model this server does not serve."""


class ResponseNotFound(InvalidRequest):
    """No stored response has this id (never stored, deleted, evicted, or the server stores none)."""


class HostNotAllowed(InvalidRequest):
    """The request's Host header names a host this server does not answer for."""


class AuthenticationFailed(TokservError):
    """The request carries no API key, or a wrong one."""


class Overloaded(TokservError):
    """Too many requests are waiting; the client may retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotReady(TokservError):
    """The server is loading, draining or unhealthy."""

    def __init__(self, state: str, retry_after: int = 5) -> None:
        super().__init__(f"The server is not ready: {state}.")
        self.state = state
        self.retry_after = retry_after


class GenerationFailed(TokservError):
    """Generation raised inside the engine; the details are in the server log, not in the message."""


class StartupError(Exception):
    """The server cannot start (for instance, the model is missing); `cli.py` prints it and exits."""
