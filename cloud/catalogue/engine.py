"""The catalogue engine's descriptor (see cloud.engine)."""

from __future__ import annotations

from pathlib import Path

from cloud.access.scope import Perm
from cloud.catalogue import api, console, models, sync
from cloud.engine import CliCommand, EngineSpec, NavItem, Task

ENGINE = EngineSpec(
    name="catalogue",
    models=(models,),
    routers=(api.router,),
    pages=(console.router,),
    templates=Path(__file__).parent / "templates",
    nav=(NavItem("catalogue", "Catalogue", "/console/catalogue", Perm.BUSINESS, 15),),
    tasks=(Task("catalogue-announcer", sync.announcer),),
    cli=(CliCommand("catalogue", "cloud.catalogue.cli",
                    "product master data: bulk import (CSV/JSON), import history, catalogue version"),),
)
