"""The HQ web console: server-rendered pages (Jinja2) and a little vanilla JS, all served locally."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC", "mount"]

STATIC = Path(__file__).parent / "static"


def mount(app: FastAPI) -> None:
    from cloud.console import pages

    app.include_router(pages.router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")

    # The address people are given is the host's root (the demo prints it): lead it to the console.
    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/console/")
