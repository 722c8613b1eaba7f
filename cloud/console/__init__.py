"""The HQ web console's shell: base layout, navigation, sign-in, static files.

Engines bring their own pages (`EngineSpec.pages`, `templates`, `nav`); `mount` puts them together
once per app, from the engine list, so nothing depends on import order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, FileSystemLoader

from cloud.engine import EngineSpec

__all__ = ["STATIC", "TEMPLATES", "mount"]

STATIC = Path(__file__).parent / "static"
TEMPLATES = Path(__file__).parent / "templates"


def mount(app: FastAPI, engines: Sequence[EngineSpec]) -> None:
    from cloud.console import nav, pages

    loaders = [FileSystemLoader(str(spec.templates)) for spec in engines if spec.templates is not None]
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.loader = ChoiceLoader([*loaders, FileSystemLoader(str(TEMPLATES))])
    app.state.templates = templates
    app.state.nav = nav.build(engines)
    for spec in engines:
        for router in spec.pages:
            app.include_router(router)
    # Last: the shell answers unknown /console/* paths.
    app.include_router(pages.router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")

