"""GET /v1/models and /v1/models/{id}: the one served model."""

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
        data=[Model(id=settings.model_name, created=_STARTED, max_model_len=engine.max_model_len)]
    )


@router.get("/v1/models/{model_id:path}", responses=error_responses(404, 503))
async def retrieve_model(model_id: str, engine: EngineDep, settings: SettingsDep) -> Model:
    check_model(model_id, settings)
    return Model(id=settings.model_name, created=_STARTED, max_model_len=engine.max_model_len)
