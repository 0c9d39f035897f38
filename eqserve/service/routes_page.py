"""The live convergence page: `GET /` and its static files (plain HTML/JS, no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
"""index.html, app.js and style.css, shipped as package data."""


def mount_page(app: FastAPI) -> None:
    """Serve the page at `/` and its assets under `/static/` (both open when an API key is set)."""

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        """The live page."""
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
