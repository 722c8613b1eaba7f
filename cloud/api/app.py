"""The FastAPI application factory, built from the engine list; its lifespan owns the database
engine and, with `run_worker`, the cloud bus (the same one `omnishelf cloud worker` runs)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi_offline import FastAPIOffline
from sqlalchemy import Engine

from cloud import console
from cloud.access.service import access_policy
from cloud.access.web import install_error_handlers
from cloud.api import health, params, security
from cloud.bus.worker import CloudBus
from cloud.db import make_engine, make_sessionmaker
from cloud.engine import EngineSpec
from cloud.engines import load_engines
from cloud.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(
    settings: Settings, *, run_worker: bool, engine: Engine | None = None, engines: Sequence[EngineSpec] | None = None
) -> FastAPI:
    """The API and console of every engine; with `run_worker` a cloud bus runs in the same process.

    Pass `engine` to share one (tests), `engines` to run another set of engines (tests)."""
    specs = tuple(engines) if engines is not None else load_engines()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_engine = engine is None
        eng = make_engine(settings.DATABASE_URL) if engine is None else engine
        app.state.engine = eng
        app.state.sessionmaker = make_sessionmaker(eng)
        app.state.access_policy = access_policy(settings)
        app.state.settings = settings
        app.state.catalogue_dir = settings.CATALOGUE_DIR
        app.state.bus = None
        task: asyncio.Task[None] | None = None
        if run_worker:
            bus = CloudBus(settings, eng, specs)
            app.state.bus = bus
            task = asyncio.create_task(bus.run(), name="cloud-bus")
        try:
            yield
        finally:
            if task is not None:
                await app.state.bus.stop()
                await task
            if own_engine:
                eng.dispose()

    # The docs pages' scripts and styles are served by the app itself: stores and test rigs have
    # no internet, and the stock FastAPI pages load Swagger UI from a CDN.
    app = FastAPIOffline(
        title="omnishelf cloud",
        version="0.1.0",
        description="The omnishelf cloud core: fleet, bus operations, access control, catalogue.",
        lifespan=lifespan,
    )
    app.include_router(health.router)
    for spec in specs:
        for router in spec.routers:
            app.include_router(router)
    install_error_handlers(app)
    console.mount(app, specs)
    security.install(app)
    params.install(app)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/console/", status_code=303)

    return app
