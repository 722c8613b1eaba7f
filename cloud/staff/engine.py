"""The staff engine's descriptor (see cloud.engine): clerks of each store and their PIN sign-in
roster on the store's boxes."""

from __future__ import annotations

from pathlib import Path

from broker.envelope import MessageType
from cloud.access.scope import Perm
from cloud.engine import EngineSpec, Handler, NavItem
from cloud.staff import api, console, handlers, models

ENGINE = EngineSpec(
    name="staff",
    models=(models,),
    routers=(api.router,),
    pages=(console.router,),
    templates=Path(__file__).parent / "templates",
    nav=(NavItem("staff", "Clerks", "/console/staff", Perm.BUSINESS, 45),),
    handlers=(Handler(MessageType.BIRTH, handlers.on_birth),),
)
