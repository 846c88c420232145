"""The HTTP layer: app factory, routes, SSE and the error envelope. fastapi and sse-starlette live here only."""

from tokserve.server.app import create_app, load_engine
from tokserve.server.shutdown import serve

__all__ = ["create_app", "load_engine", "serve"]
