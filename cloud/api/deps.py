"""Dependencies shared by the routers (database session, worker), as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from cloud.access.scope import Perm, Principal
from cloud.access.web import PrincipalDep, require
from cloud.ingest import IngestWorker

__all__ = ["EngineDep", "FleetReader", "PrincipalDep", "SessionDep", "WorkerDep"]


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessionmaker() as session:
        yield session


def get_worker(request: Request) -> IngestWorker | None:
    worker: IngestWorker | None = request.app.state.worker
    return worker


EngineDep = Annotated[Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session)]
WorkerDep = Annotated[IngestWorker | None, Depends(get_worker)]
FleetReader = Annotated[Principal, Depends(require(Perm.FLEET))]
"""Any principal whose role may read regions, stores and nodes; scope via `principal.scope`."""
