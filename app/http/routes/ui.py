"""The page at ``/``: upload a clip or stream the microphone and see arousal and valence drawn.

Plain HTML, CSS and JavaScript shipped in ``app/http/ui`` and read into memory once; the page calls
the service's own API (``/v1/models/default``, ``/v1/predict``, ``/v1/stream``) like any client, so it
needs no API key itself and asks for one when the API answers 401. Only the files listed here are
served (no path from the request reaches the file system), under a strict Content-Security-Policy.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, HTTPException, Response

__all__ = ["PAGE_PATHS", "router"]

_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "pcm-worklet.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_FILES = {name: (files("app.http") / "ui" / name).read_bytes() for name in _TYPES}

#: The page's paths, open without an API key (they hold no data; the API calls they make are checked).
PAGE_PATHS = ("/", *(f"/ui/{name}" for name in _TYPES if name != "index.html"))

# Only this origin's scripts, styles and connections (fetch and the WebSocket); no inline code, no
# framing, no forms posting elsewhere.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files read at start-up: revalidate so an upgraded service never runs yesterday's script.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def _file(name: str) -> Response:
    return Response(content=_FILES[name], media_type=_TYPES[name], headers=_HEADERS)


@router.get("/")
async def page() -> Response:
    """The page."""
    return _file("index.html")


@router.get("/ui/{name}")
async def asset(name: str) -> Response:
    """One of the page's scripts or its style sheet."""
    if name not in _TYPES or name == "index.html":
        raise HTTPException(status_code=404, detail=f"no such file: /ui/{name}")
    return _file(name)
