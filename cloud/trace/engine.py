"""The traceability engine's descriptor (see cloud.engine)."""

from __future__ import annotations

from pathlib import Path

from broker.envelope import MessageType
from cloud.access.scope import Perm
from cloud.engine import CliCommand, EngineSpec, Handler, NavItem
from cloud.trace import api, console, handlers, models

ENGINE = EngineSpec(
    name="trace",
    models=(models,),
    routers=(api.router,),
    pages=(console.router,),
    templates=Path(__file__).parent / "templates",
    nav=(NavItem("trace", "Traceability", "/console/trace", Perm.BUSINESS, 30),),
    handlers=(Handler(MessageType.SCAN, handlers.on_scan, batch=handlers.on_scans), Handler(MessageType.BIRTH, handlers.on_birth)),
    cli=(CliCommand("trace", "cloud.trace.cli",
                    "traceability: capture EPCIS documents, commission units from CSV, verify a code"),),
)
