"""One router per resource."""

from tokserve.server.routes import chat, completions, health, models

routers = [chat.router, completions.router, models.router, health.router]

__all__ = ["routers"]
