"""The app factory: `create_app(settings, engine=None)`. Without an engine the lifespan loads one in a thread,
so /health answers `loading` meanwhile; a given engine belongs to the caller and is not closed here."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tokserve.config import Settings
from tokserve.engine import Engine
from tokserve.server.dependencies import ServerState
from tokserve.server.errors import install_error_handlers
from tokserve.server.limits import BodySizeLimit
from tokserve.server.openapi import install_openapi
from tokserve.server.routes import routers, ui

logger = logging.getLogger(__name__)


def load_engine(settings: Settings) -> Engine:
    """Load the configured model and warm it up (blocking: tens of seconds on CPU)."""
    return Engine.load(
        settings.model,
        device=settings.device,
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        max_queue=settings.max_queue,
        fault_marker=settings.fault_marker,
    )


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    state = ServerState(settings, engine, "ready" if engine is not None else "loading")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load(state)) if engine is None else None
        yield
        state.phase = "draining"
        if loading is not None:
            await loading
            if state.engine is not None:
                await asyncio.to_thread(state.engine.close)

    app = FastAPI(title="tokserve", lifespan=lifespan)
    app.state.tokserve = state
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_openapi(app)
    for router in routers:
        app.include_router(router)
    if not settings.no_ui:
        app.include_router(ui.router)
    return app


async def _load(state: ServerState) -> None:
    try:
        state.engine = await asyncio.to_thread(load_engine, state.settings)
    except Exception:
        logger.exception("Loading the model failed")
        state.phase = "unhealthy"
        return
    if state.phase == "loading":
        state.phase = "ready"
        logger.info("Ready: serving %s", state.settings.model_name)
