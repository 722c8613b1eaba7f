"""The fleet engine's descriptor (see cloud.engine)."""

from __future__ import annotations

from pathlib import Path

from broker.envelope import MessageType
from cloud.access.scope import Perm
from cloud.engine import CliCommand, EngineSpec, Handler, NavItem, Task
from cloud.fleet import api, config_push, console, enrol_api, enrol_console, enrol_handlers, enrolment, handlers, models

ENGINE = EngineSpec(
    name="fleet",
    models=(models,),
    routers=(api.router, enrol_api.router),
    pages=(console.router, enrol_console.router),
    templates=Path(__file__).parent / "templates",
    nav=(
        NavItem("fleet", "Fleet", "/console/fleet", Perm.FLEET, 10),
        NavItem("devices", "Devices", "/console/devices", Perm.FLEET, 60),
        NavItem("enrolment", "Enrolment", "/console/enrolment", Perm.FLEET, 62),
    ),
    handlers=(
        Handler(MessageType.BIRTH, handlers.on_birth),
        Handler(MessageType.TELEMETRY, handlers.on_telemetry),
        Handler(MessageType.BIRTH, enrol_handlers.on_birth),
        Handler(MessageType.BIRTH, config_push.on_birth),
        Handler(MessageType.ACK, config_push.on_ack),
    ),
    tasks=(Task("identity-sync", enrolment.identity_sync),),
    cli=(CliCommand("fleet", "cloud.fleet.cli",
                    "operate the bus: failed messages and their replay, commands sent to boxes"),),
)
