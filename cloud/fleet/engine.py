"""The fleet engine's descriptor (see cloud.engine)."""

from __future__ import annotations

from pathlib import Path

from broker.envelope import MessageType
from cloud.access.scope import Perm
from cloud.engine import EngineSpec, Handler, NavItem
from cloud.fleet import api, console, handlers

ENGINE = EngineSpec(
    name="fleet",
    routers=(api.router,),
    pages=(console.router,),
    templates=Path(__file__).parent / "templates",
    nav=(
        NavItem("fleet", "Fleet", "/console/fleet", Perm.FLEET, 10),
        NavItem("devices", "Devices", "/console/devices", Perm.FLEET, 60),
    ),
    handlers=(
        Handler(MessageType.BIRTH, handlers.on_birth),
        Handler(MessageType.TELEMETRY, handlers.on_telemetry),
    ),
)
