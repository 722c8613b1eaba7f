"""The signage engine's descriptor (see cloud.engine)."""

from __future__ import annotations

from pathlib import Path

from broker.envelope import MessageType
from cloud.access.scope import Perm
from cloud.engine import CliCommand, EngineSpec, Handler, NavItem, Task
from cloud.signage import api, console, handlers, models

ENGINE = EngineSpec(
    name="signage",
    models=(models,),
    routers=(api.router,),
    pages=(console.router,),
    templates=Path(__file__).parent / "templates",
    nav=(NavItem("signage", "Signage", "/console/signage", Perm.BUSINESS, 50),),
    handlers=(Handler(MessageType.POP, handlers.on_pop), Handler(MessageType.ACK, handlers.on_ack)),
    tasks=(Task("signage-refresher", handlers.refresher),),
    cli=(CliCommand("signage", "cloud.signage.cli",
                    "signage: media upload, publish and roll back, what a store's screens play, proof of play"),),
)
