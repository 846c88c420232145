"""GET /docs and /redoc (with `--docs`): the API's interactive documentation, its scripts served from here.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, without integrity checks, into a page of this origin;
these load the copies that the `fastapi-offline` package ships, and nothing from elsewhere.
"""

from importlib.resources import files

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

router = APIRouter(include_in_schema=False)

_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
_STATIC = files("fastapi_offline") / "static"
_TITLE = "tokserve API"


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=_TITLE,
        swagger_js_url="/docs/static/swagger-ui-bundle.js",
        swagger_css_url="/docs/static/swagger-ui.css",
        swagger_favicon_url="/docs/static/favicon.png",
    )


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return get_redoc_html(
        openapi_url="/openapi.json",
        title=_TITLE,
        redoc_js_url="/docs/static/redoc.standalone.js",
        redoc_favicon_url="/docs/static/favicon.png",
        with_google_fonts=False,
    )


@router.get("/docs/static/{name}")
async def docs_asset(name: str) -> Response:
    if name not in _ASSETS:  # a fixed list: no path from the URL ever reaches the file system
        raise HTTPException(404)
    return Response((_STATIC / name).read_bytes(), media_type=_ASSETS[name])
