"""GET /health: is the database reachable, and is this process's cloud bus making progress?"""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from cloud.api.deps import BusDep, EngineDep
from cloud.api.schemas import Health, WorkerHealth

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=Health,
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {
        "model": Health, "description": "the database is unreachable, or ingest is stalled or failing"}},
)
def health(engine: EngineDep, bus: BusDep, response: Response) -> Health:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        database = "ok"
    except SQLAlchemyError as exc:
        database = f"unreachable: {str(getattr(exc, 'orig', None) or exc).strip().splitlines()[0]}"
    worker = None
    if bus is not None:
        state = bus.health()
        worker = WorkerHealth(**state, counters=bus.stats.as_dict())
    ok = database == "ok" and (worker is None or worker.status in ("ok", "disconnected"))
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="ok" if ok else "unavailable", database=database, worker=worker)
