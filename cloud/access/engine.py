"""The access engine's descriptor (see cloud.engine): users, roles, API keys, audit."""

from __future__ import annotations

from pathlib import Path

from cloud.access import api, console, models
from cloud.access.scope import Perm
from cloud.engine import CliCommand, EngineSpec, NavItem

ENGINE = EngineSpec(
    name="access",
    models=(models,),
    routers=(api.router,),
    pages=(console.router,),
    templates=Path(__file__).parent / "templates",
    nav=(
        NavItem("users", "Users", "/console/users", Perm.USERS, 70),
        NavItem("api-keys", "API keys", "/console/api-keys", Perm.USERS, 80),
        NavItem("audit", "Audit", "/console/audit", Perm.AUDIT, 90),
    ),
    cli=(CliCommand("users", "cloud.access.cli", "console users and API keys (create the first admin here)"),),
)
