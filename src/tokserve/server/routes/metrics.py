"""GET /metrics: the app's Prometheus metrics (open by default: counts and timings, no user data)."""

from fastapi import APIRouter
from fastapi.responses import Response

from tokserve.server.dependencies import StateDep

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)
