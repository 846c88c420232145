"""One router per resource."""

from tokserve.server.routes import chat, completions, health, metrics, models

routers = [chat.router, completions.router, models.router, health.router, metrics.router]

__all__ = ["routers"]
