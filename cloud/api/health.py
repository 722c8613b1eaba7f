"""GET /health: database reachability and the in-process worker's state and counters."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from cloud.api.deps import EngineDep, WorkerDep
from cloud.api.schemas import Health, WorkerHealth

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=Health,
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": Health, "description": "database unreachable"}},
)
def health(engine: EngineDep, worker: WorkerDep, response: Response) -> Health:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        database = "ok"
    except SQLAlchemyError as exc:
        database = f"unreachable: {str(getattr(exc, 'orig', None) or exc).strip().splitlines()[0]}"
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    worker_state = (
        None
        if worker is None
        else WorkerHealth(host=worker.host, connected=worker.connected, counters=worker.stats.as_dict())
    )
    return Health(status="ok" if database == "ok" else "unavailable", database=database, worker=worker_state)
