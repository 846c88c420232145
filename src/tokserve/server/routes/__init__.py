"""One router per resource."""

from tokserve.server.routes import chat, completions, health, metrics, models, responses

routers = [chat.router, completions.router, responses.router, models.router, health.router, metrics.router]

__all__ = ["routers"]
