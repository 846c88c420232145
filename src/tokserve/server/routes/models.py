"""GET /v1/models and /v1/models/{id}: the served model, under each of its names."""

import time

from fastapi import APIRouter

from tokserve.schemas import ListModelsResponse, Model
from tokserve.server.dependencies import EngineDep, SettingsDep, check_model
from tokserve.server.openapi import error_responses

router = APIRouter()

_STARTED = int(time.time())


@router.get("/v1/models", responses=error_responses(503))
async def list_models(engine: EngineDep, settings: SettingsDep) -> ListModelsResponse:
    return ListModelsResponse(
        data=[Model(id=name, created=_STARTED, max_model_len=engine.max_model_len) for name in settings.model_names]
    )


@router.get("/v1/models/{model_id:path}", responses=error_responses(404, 503))
async def retrieve_model(model_id: str, engine: EngineDep, settings: SettingsDep) -> Model:
    return Model(id=check_model(model_id, settings), created=_STARTED, max_model_len=engine.max_model_len)
