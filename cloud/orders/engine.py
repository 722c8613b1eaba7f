"""The orders engine's descriptor (see cloud.engine)."""

from __future__ import annotations

from pathlib import Path

from broker.envelope import MessageType
from cloud.access.scope import Perm
from cloud.engine import CliCommand, EngineSpec, Handler, NavItem, Task
from cloud.orders import api, console, handlers, models, tasks

ENGINE = EngineSpec(
    name="orders",
    models=(models,),
    routers=(api.router,),
    pages=(console.router,),
    templates=Path(__file__).parent / "templates",
    nav=(
        NavItem("orders", "Orders", "/console/orders", Perm.BUSINESS, 20),
        NavItem("stock", "Stock", "/console/stock", Perm.BUSINESS, 21),
        NavItem("routing", "Routing", "/console/routing", Perm.BUSINESS, 22),
    ),
    handlers=(
        Handler(MessageType.ORDER, handlers.on_order, batch=handlers.on_orders),
        Handler(MessageType.STOCK, handlers.on_stock),
        Handler(MessageType.FULFIL, handlers.on_fulfil),
    ),
    tasks=(Task("orders-housekeeper", tasks.housekeeper),),
    cli=(CliCommand("orders", "cloud.orders.cli",
                    "orders and stock: warehouse stock import (CSV), the inbox, routing rules"),),
)
