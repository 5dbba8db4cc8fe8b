"""The search page and the images it shows, on the HTTP port (runtime/http_api.py mounts them).

    GET /                   the page (runtime/static/search.html): one self-contained file, no
                            external assets, so it works offline on a LAN; it calls the JSON API
                            with the key typed into it, kept in the page's memory only
    GET /v1/media/{path}    an image file under --media-root, for the page's thumbnails

Images are served from one configured folder, never from a path a record names: the path is
resolved (symlinks followed) and must stay inside the resolved root and name an image file, or
the answer is 404 whatever the reason, so that nothing outside the root can be read or probed.
`python -m runtime.client index FOLDER` stores each image's path relative to FOLDER in its
payload (`{"path": ...}`): serve with `--media-root FOLDER` and the page shows them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from runtime.errors import NotFound

PAGE = Path(__file__).with_name("static") / "search.html"
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".gif": "image/gif", ".bmp": "image/bmp"}  # fmt: skip


def media_file(root: Path, path: str) -> Path:
    """The image file `path` names under `root`, or NotFound (for any reason, the same message)."""
    base = root.resolve()
    target = (base / path).resolve()
    if not target.is_relative_to(base) or target.suffix.lower() not in MEDIA_TYPES or not target.is_file():
        raise NotFound("no such image under the media root")
    return target


def add_page(app: FastAPI, media_root: str, counted: Any) -> None:
    """The page at / and, with a media root, the images under it."""
    page = PAGE.read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def search_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/v1/media/{path:path}")
    async def media(path: str) -> Response:
        """An image under --media-root (the search page's thumbnails)."""
        with counted("Media"):
            if not media_root:
                raise NotFound("the server has no --media-root: it shows no images")
            target = media_file(Path(media_root), path)
            data = await asyncio.to_thread(target.read_bytes)
            headers = {"Cache-Control": "private, max-age=3600"}
            return Response(data, media_type=MEDIA_TYPES[target.suffix.lower()], headers=headers)
