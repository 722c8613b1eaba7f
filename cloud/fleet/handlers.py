"""What a box says about itself (birth, death, telemetry) → its row in `nodes`.

Liveness itself (online, session, sequence tracking) is the bus's: it runs first in the same
transaction. These handlers keep the inventory: software version, config hash, devices. They are
order-safe: a birth applies only if the bus accepted it as the current session; telemetry updates
the devices only when it is newer than what they came from.
"""

from __future__ import annotations

from sqlalchemy import Table, update

from broker.payloads import BirthData, TelemetryData
from cloud.bus import Context, Message, newer_clause
from cloud.models import Node

__all__ = ["on_birth", "on_telemetry"]

_NODES: Table = Node.__table__  # type: ignore[assignment]


def on_birth(ctx: Context, msg: Message) -> None:
    data = msg.data
    assert isinstance(data, BirthData)
    # The bus set `session` to this birth's if it accepted it; an older session's birth changes nothing.
    current = (_NODES.c.id == msg.node) & (_NODES.c.session == msg.session)
    ctx.conn.execute(
        update(_NODES).where(current).values(software_version=data.software_version, config_hash=data.config_hash,
                                             commands=None if data.commands is None else list(data.commands))
    )
    # Telemetry of this session handled before this birth (other worker) may already be newer.
    ctx.conn.execute(
        update(_NODES)
        .where(current, newer_clause(_NODES.c.devices_session, _NODES.c.devices_seq, msg))
        .values(devices=[d.model_dump(mode="json") for d in data.devices], devices_session=msg.session,
                devices_seq=msg.seq)
    )


def on_telemetry(ctx: Context, msg: Message) -> None:
    data = msg.data
    assert isinstance(data, TelemetryData)
    if not data.devices:
        return
    ctx.conn.execute(
        update(_NODES)
        .where(_NODES.c.id == msg.node, newer_clause(_NODES.c.devices_session, _NODES.c.devices_seq, msg))
        .values(devices=[d.model_dump(mode="json") for d in data.devices], devices_session=msg.session,
                devices_seq=msg.seq)
    )
