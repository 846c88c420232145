"""GET / and /ui/*: the web chat page, static files shipped in the package (no build step, nothing fetched from
elsewhere). The page is a client of /v1/chat/completions like any other; off with `--no-ui`."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

router = APIRouter(include_in_schema=False)

_STATIC = Path(__file__).parent.parent / "static"
_ASSETS = {"chat.js": "text/javascript", "chat.css": "text/css"}
# Only our own files, and no inline script: model output that slipped into the DOM as markup still could not run.
_POLICY = "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


@router.api_route("/", methods=["GET", "HEAD"])
async def chat_page() -> FileResponse:
    return FileResponse(_STATIC / "index.html", media_type="text/html", headers={"Content-Security-Policy": _POLICY})


@router.get("/ui/{name}")
async def chat_asset(name: str) -> FileResponse:
    if name not in _ASSETS:  # a fixed list: no path from the URL ever reaches the file system
        raise HTTPException(404)
    return FileResponse(_STATIC / name, media_type=_ASSETS[name])
