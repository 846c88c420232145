"""The OpenAI error envelope: `{"error": {"message", "type", "param", "code"}}`, every field always present."""

from tokserve.schemas.generation import WireModel


class Error(WireModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(WireModel):
    error: Error
