"""The app factory: `create_app(settings, engine=None)`. Without an engine the lifespan loads one in a thread,
so /health answers `loading` meanwhile; a given engine belongs to the caller and is not closed here."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from tokserve.config import Settings
from tokserve.engine import Engine, EngineSettings
from tokserve.server.auth import ApiKeyMiddleware
from tokserve.server.dependencies import ServerState
from tokserve.server.errors import UnexpectedErrors, install_error_handlers
from tokserve.server.limits import BodyLimits
from tokserve.server.openapi import install_openapi
from tokserve.server.request_id import HEADER, RequestIdMiddleware
from tokserve.server.response_store import ResponseStore
from tokserve.server.routes import docs, routers, ui
from tokserve.server.security import SecurityMiddleware

logger = logging.getLogger(__name__)


def load_engine(settings: Settings) -> Engine:
    """Load the configured model and warm it up (blocking: tens of seconds on CPU)."""
    return Engine.load(EngineSettings.of(settings))


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    state = ServerState(settings, engine, "ready" if engine is not None else "loading")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not settings.no_store:  # opening checks the file: a bad one stops the start
            limits = (settings.max_stored_responses, settings.max_stored_bytes)
            state.responses = await asyncio.to_thread(ResponseStore, settings.responses_db, *limits)
        loading = asyncio.create_task(_load(state)) if engine is None else None
        yield
        state.phase = "draining"
        if loading is not None:
            await loading
            if state.engine is not None:
                await asyncio.to_thread(state.engine.close)
        if state.responses is not None:
            await state.responses.close()

    # FastAPI's /docs and /redoc load their scripts from a CDN; routes/docs.py serves its own copies, if asked.
    app = FastAPI(title="tokserve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.tokserve = state
    install_error_handlers(app)
    app.add_middleware(BodyLimits, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout)
    install_openapi(app)
    for router in routers:
        app.include_router(router)
    if not settings.no_ui:
        app.include_router(ui.router)
    if settings.docs:
        app.include_router(docs.router)
    _add_middleware(app, state)
    return app


def _add_middleware(app: FastAPI, state: ServerState) -> None:
    """Outermost last: CORS answers preflights before the key check, the Host check comes before both, and the
    request id is on every response, a 500 from an unexpected error included."""
    settings = state.settings
    app.add_middleware(
        ApiKeyMiddleware, keys=settings.api_keys, protect_metrics=settings.protect_metrics, metrics=state.metrics
    )
    app.add_middleware(UnexpectedErrors)
    app.add_middleware(SecurityMiddleware, settings=settings)
    app.add_middleware(RequestIdMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            # X-Session-Id: read by nginx's `scale` profile and an inference gateway's picker, not by tokserve
            allow_headers=["Authorization", "Content-Type", HEADER, "X-Session-Id"],
            expose_headers=[HEADER],
        )


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
