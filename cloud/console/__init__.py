"""The HQ web console: server-rendered pages (Jinja2) and a little vanilla JS, all served locally."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC", "mount"]

STATIC = Path(__file__).parent / "static"


def mount(app: FastAPI) -> None:
    from cloud.console import pages

    app.include_router(pages.router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
