"""What routes reach through `Annotated` dependencies: the settings, and the engine once it is ready."""

from dataclasses import dataclass, field
from typing import Annotated, Literal

from fastapi import Depends, Request

from tokserve.config import Settings
from tokserve.engine import Engine
from tokserve.errors import ModelNotFound, NotReady
from tokserve.server.drain import Drain
from tokserve.server.metrics import Metrics
from tokserve.server.response_store import ResponseStore

Phase = Literal["loading", "ready", "draining", "unhealthy"]


@dataclass
class ServerState:
    """Kept on `app.state.tokserve`; the lifespan moves `phase` along."""

    settings: Settings
    engine: Engine | None
    phase: Phase
    drain: Drain = field(default_factory=Drain)
    metrics: Metrics = field(init=False)
    responses: ResponseStore | None = None  # stored Responses API objects; None with --no-store

    def __post_init__(self) -> None:
        self.metrics = Metrics(lambda: self.engine.counters if self.engine is not None else None)

    @property
    def health(self) -> Phase:
        if self.phase == "ready" and (self.engine is None or not self.engine.is_alive):
            return "unhealthy"
        return self.phase


def state_of(request: Request) -> ServerState:
    """The app's state, for code that has the request at hand (handlers, middleware)."""
    state: ServerState = request.app.state.tokserve
    return state


# The dependencies are coroutines although they never await: FastAPI runs plain functions in its thread pool,
# a thread hop per request and up to 40 idle threads left behind by a burst.
async def server_state(request: Request) -> ServerState:
    return state_of(request)


async def settings(request: Request) -> Settings:
    return (await server_state(request)).settings


async def ready_engine(request: Request) -> Engine:
    """The engine, or NotReady (503 + Retry-After) while loading, draining or unhealthy."""
    state = await server_state(request)
    if state.health != "ready" or state.engine is None:
        raise NotReady(state.health)
    return state.engine


def check_model(name: str | None, settings: Settings) -> str:
    """The served name a response shows: the one the request names, or the default when it names none; any other
    name is a 404."""
    if name is None:
        return settings.model_name
    if name not in settings.model_names:
        served = ", ".join(f"'{served}'" for served in settings.model_names)
        raise ModelNotFound(f"The model '{name}' does not exist; this server serves {served}.", "model")
    return name


StateDep = Annotated[ServerState, Depends(server_state)]
SettingsDep = Annotated[Settings, Depends(settings)]
EngineDep = Annotated[Engine, Depends(ready_engine)]
