"""The engine descriptor: everything an engine adds to the cloud core, declared in one place.

An engine is a package under `cloud/` whose `engine` module holds one `EngineSpec`. The list in
`cloud.engines` drives the app factory (routers, console pages, templates, navigation), the cloud
bus (handlers, followers, background tasks), Alembic's metadata (models) and the command line. No
registration by import side effect, no import order to respect: what is not in a spec does not
exist.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from broker.envelope import MessageType
from cloud.access.scope import Perm
from cloud.bus.message import BatchHandlerFn, Context, HandlerFn, Message

if TYPE_CHECKING:
    from fastapi import APIRouter
    from sqlalchemy import Engine

    from cloud.settings import Settings

__all__ = ["CliCommand", "EngineSpec", "Follower", "Handler", "NavItem", "Task", "TaskContext"]


@dataclass(frozen=True, slots=True)
class Handler:
    """Run `fn(ctx, msg)` in the ledger transaction of every newly stored message of `type`.

    An `ack` goes only to the handlers of the engine that sent the command it answers (its `corr`,
    from the same box): the other engines never see it, and the bus's own bookkeeping (the command
    delivered or failed) is done before any handler runs."""

    type: MessageType
    fn: HandlerFn
    batch: BatchHandlerFn | None = None
    """Optional, for speed: `batch(ctx, msgs)` applies all the batch's new messages of `type` at
    once (set-based reads and writes), exactly as `fn` would one after the other in that order. It
    runs once per batch, where the first of them would; if it raises, the batch's calls run again
    one by one through `fn` (each in its own savepoint), so `fn` stays the reference: replays and
    failures go through it."""

    @property
    def name(self) -> str:
        return f"{self.fn.__module__}.{self.fn.__qualname__}"


@dataclass(frozen=True, slots=True)
class Follower:
    """Read the ledger by cursor, out of the hot path: `fn(ctx, msgs)` gets the next messages (in
    commit order, of `types` if given) in a transaction that also moves the follower's checkpoint.
    For reports and aggregates that may lag a little; use a `Handler` when the effect must be there
    as soon as the message is (a verdict, a reservation)."""

    name: str
    fn: Callable[[Context, Sequence[Message]], None]
    types: frozenset[MessageType] | None = None
    batch: int = 500


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a background task gets: the database, the settings, and a way to nudge the relay."""

    engine: Engine
    settings: Settings
    wake_relay: Callable[[], None]


@dataclass(frozen=True, slots=True)
class Task:
    """A coroutine the cloud bus runs for its lifetime (restarted with backoff if it raises)."""

    name: str
    run: Callable[[TaskContext], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class NavItem:
    key: str
    label: str
    path: str
    perm: Perm
    order: int
    """Place in the console's menu (lower first)."""


@dataclass(frozen=True, slots=True)
class CliCommand:
    """`omnishelf <name>`: `module` holds `add_parser(subparsers)` (or name it: "module:function"),
    imported only when this command runs.

    Write it with string literals in the engine's `EngineSpec(...)`: the `omnishelf` command reads
    it from the engine module's source, without importing the engine (`cloud.engines.cli_commands`),
    so `omnishelf --help` stays fast and works on a box that has none of the cloud's libraries."""

    name: str
    module: str
    help: str


@dataclass(frozen=True)
class EngineSpec:
    name: str
    """Short and stable: recorded with failed messages and the commands the engine sends."""
    models: tuple[ModuleType, ...] = ()
    """Modules declaring the engine's tables on `cloud.models.Base.metadata`."""
    routers: tuple[APIRouter, ...] = ()
    """REST routers (thin: they call the engine's service module)."""
    pages: tuple[APIRouter, ...] = ()
    """Console routers (under /console/…, rendered with `cloud.console.pages.render`)."""
    templates: Path | None = None
    """The folder of the engine's console templates (they may extend `base.html`)."""
    nav: tuple[NavItem, ...] = ()
    handlers: tuple[Handler, ...] = ()
    followers: tuple[Follower, ...] = ()
    tasks: tuple[Task, ...] = ()
    cli: tuple[CliCommand, ...] = ()
    """The engine's `omnishelf` commands (see `CliCommand`: literals only)."""
