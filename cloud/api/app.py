"""The FastAPI application factory; its lifespan owns the engine and the optional worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from sqlalchemy import Engine

from cloud import console
from cloud.access import api as access_api
from cloud.access.service import access_policy
from cloud.access.web import install_error_handlers
from cloud.api import health, nodes, regions, security, stores
from cloud.catalogue import api as catalogue_api
from cloud.catalogue import console as catalogue_console
from cloud.catalogue.sync import start_publisher
from cloud.db import make_engine, make_sessionmaker
from cloud.ingest import IngestWorker
from cloud.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, run_worker: bool, engine: Engine | None = None) -> FastAPI:
    """The API; with `run_worker` an ingest worker runs in the same process for the app's lifetime.

    Pass `engine` to share one (tests); otherwise the app makes its own from the settings.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_engine = engine is None
        eng = make_engine(settings.DATABASE_URL) if engine is None else engine
        app.state.engine = eng
        app.state.sessionmaker = make_sessionmaker(eng)
        app.state.access_policy = access_policy(settings)
        app.state.settings = settings
        app.state.worker = None
        task: asyncio.Task[None] | None = None
        app.state.catalogue_dir = settings.CATALOGUE_DIR
        app.state.catalogue_publisher = None
        catalogue_task: asyncio.Task[None] | None = None
        if run_worker:
            worker = IngestWorker(settings, eng)
            app.state.worker = worker
            task = asyncio.create_task(worker.run(), name="ingest-worker")
            catalogue_task = start_publisher(app, settings, eng, worker)
        try:
            yield
        finally:
            if catalogue_task is not None:
                catalogue_task.cancel()
                await asyncio.gather(catalogue_task, return_exceptions=True)
            if task is not None:
                await app.state.worker.stop()
                await task
            if own_engine:
                eng.dispose()

    # The docs pages' scripts and styles are served by the app itself: stores and test rigs have
    # no internet, and the stock FastAPI pages load Swagger UI from a CDN.
    app = FastAPIOffline(
        title="omnishelf cloud",
        version="0.1.0",
        description="Fleet, stores and ingest state of the omnishelf cloud core.",
        lifespan=lifespan,
    )
    for module in (health, nodes, stores, regions):
        app.include_router(module.router)
    app.include_router(catalogue_api.router)
    app.include_router(access_api.router)
    install_error_handlers(app)
    # Before the console's own pages, which answer unknown /console/* paths.
    app.include_router(catalogue_console.router)
    console.mount(app)
    security.install(app)
    return app
