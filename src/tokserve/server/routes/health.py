"""GET /health: 200 `ready`, else 503 with `loading`, `draining` or `unhealthy`."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from tokserve.server.dependencies import StateDep

router = APIRouter()


@router.get("/health")
@router.head("/health", include_in_schema=False)  # what some uptime checkers send
async def health(state: StateDep) -> JSONResponse:
    status = state.health
    if status == "ready":
        return JSONResponse({"status": status})
    return JSONResponse({"status": status}, status_code=503, headers={"Retry-After": "5"})
