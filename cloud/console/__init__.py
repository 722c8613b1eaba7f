"""The HQ web console's shell: base layout, navigation, sign-in, static files, placeholders.

Engines bring their own pages (`EngineSpec.pages`, `templates`, `nav`); `mount` puts them together
once per app, from the engine list, so nothing depends on import order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, FileSystemLoader

from cloud.access.scope import Perm, Principal
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
    app.state.nav, placeholders = nav.build(engines)
    for spec in engines:
        for router in spec.pages:
            app.include_router(router)
    for ph in placeholders:
        app.add_api_route(ph.item.path, _placeholder(ph.item.key, ph.text, ph.item.perm), response_class=HTMLResponse,
                          methods=["GET"], include_in_schema=False)
    # Last: the shell answers unknown /console/* paths.
    app.include_router(pages.router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")


def _placeholder(key: str, text: str, perm: Perm) -> Callable[..., HTMLResponse]:
    from cloud.console.pages import console_user, render

    def page(request: Request, principal: Principal = Depends(console_user(perm))) -> HTMLResponse:  # noqa: B008
        return render(request, "placeholder.html", principal, key=key, text=text)

    page.__name__ = f"{key}_page"
    return page
