"""What a box capability declares, in one place, for the agent to wire it up.

A component (the catalogue today; scanner station, printer queue, signage player, order desk
tomorrow) is built from the config by its factory in `edge.components.COMPONENTS` and declares:

- `commands()`: its command handlers by `MessageType` (each command is run at most once and
  acknowledged by the bus; a handler returns the ack's detail or raises `CommandRefused`);
- `named_commands()`: its handlers of generic `command` messages, by `CommandData.name` (the agent
  owns the `command` type and hands each name to the component that declared it);
- `drivers()`: device drivers by kind that feed this component (a scanner delivers its codes to the
  station); the agent adds them to its driver registry;
- `routes()`: its routes on the box's one local HTTP API;
- `tasks()`: its background work, started by the agent after the bus and the API exist;
- `status()`: a JSON-able dict shown under `components.<name>` on the API's `/status` (called on
  an API worker thread: read only what is safe to read from another thread);
- `birth()`: fields it adds to the box's birth (e.g. the config component's last rollback).

Components offer each other services through `ComponentContext.shared` (the station's print queue
to the order desk), set while they are built and looked up when used: no component imports another.

Stopping: the agent calls `stop()` (ask the tasks to finish), waits for the tasks a few seconds,
cancels what is left, and calls `close()` once nothing of the component runs any more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.envelope import MessageType
from broker.payloads import ClerkRef, Payload
from edge.bus import CommandHandler, CommandRefused
from edge.drivers import DriverFactory
from edge.localapi import Route
from edge.outbox import Row
from firmware_config import BoxPaths, NodeConfig

__all__ = ["BackgroundTask", "ClerkSessions", "CommandHandler", "CommandRefused", "Component", "ComponentContext",
           "ComponentError", "PrintQueue", "Shared", "StockLookup"]


class ComponentError(RuntimeError):
    """A component cannot start on this box; the message names what and why (shown as one line)."""


class PrintQueue(Protocol):
    """The box's durable queue of ESC/POS jobs for its receipt printer (the station offers it)."""

    def queue_document(self, kind: str, render: Callable[[str], bytes], *, request_id: str) -> tuple[int, bool]:
        """Queue what `render(printer profile)` returns; return (job id, new). A `request_id` queued
        before returns that job (a step repeated prints nothing twice). Raises `ValueError` saying
        why when there is nothing to print on."""
        ...


class ClerkSessions(Protocol):
    """Who is signed in with a token (the clerks component offers it)."""

    def clerk_ref(self, token: str) -> ClerkRef | None:
        """The clerk signed in with `token`, or None (unknown, signed out, expired, deactivated)."""
        ...


class StockLookup(Protocol):
    """A SKU's stock here and in nearby stores, from the cloud or the figures last fetched (the
    kiosk component offers it: one availability logic for the shopper's and the clerk's screens)."""

    def station_stock(self, sku: str, *, refresh: bool = True) -> dict[str, Any]:
        """`{"sku", "here": {"on_hand", "available"} | None, "nearby": [{"store", "name",
        "distance_km", "available"}], "as_of", "source": "cloud" | "cache"}` (see docs/clerk.md);
        `refresh=False`: the figures held, without asking the cloud."""
        ...


@dataclass(slots=True)
class Shared:
    """Services one component offers the others (None: no component on this box offers it)."""

    print_queue: PrintQueue | None = None
    clerk_sessions: ClerkSessions | None = None
    stock: StockLookup | None = None


@dataclass(frozen=True, slots=True)
class ComponentContext:
    """What the agent gives a component when it builds it."""

    config: NodeConfig
    paths: BoxPaths
    publish: Callable[[MessageType, Payload], Awaitable[Row]]
    """Send a message through the outbox (usable once the agent runs)."""
    cloud_reachable: Callable[[], bool] = lambda: False
    """True while the box is connected to the broker, born, and a cloud host says it is online."""
    offer_password: Callable[[str, Callable[[str], None]], None] = lambda _pw, _adopted: None
    """Credential rotation: hand the bus a new broker password (see `edge.bus.BusClient.offer_password`)."""
    shared: Shared = field(default_factory=Shared)
    """Services the components offer each other (one object for all the components of a box)."""
    local_api_url: Callable[[], str | None] = lambda: None
    """The box's local API as it listens (None: not started, or turned off), e.g. to announce it."""


@dataclass(frozen=True, slots=True)
class BackgroundTask:
    name: str
    run: Callable[[], Coroutine[Any, Any, None]]


class Component:
    """Base of every component: override what the capability needs."""

    name: str = "component"

    def commands(self) -> Mapping[MessageType, CommandHandler]:
        return {}

    def named_commands(self) -> Mapping[str, CommandHandler]:
        return {}

    def drivers(self) -> Mapping[str, DriverFactory]:
        return {}

    def routes(self) -> Sequence[Route]:
        return ()

    def tasks(self) -> Sequence[BackgroundTask]:
        return ()

    def status(self) -> Mapping[str, Any]:
        return {}

    def birth(self) -> Mapping[str, Any]:
        """Fields this component adds to every birth (`broker.payloads.BirthData` members)."""
        return {}

    async def stop(self) -> None:
        """Ask the tasks to finish."""

    def close(self) -> None:
        """Release resources (files, databases); nothing of the component runs any more."""
