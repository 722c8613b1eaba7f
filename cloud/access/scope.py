"""Roles, permissions and the `Scope` every query over regions, stores and nodes goes through.

Scoping lives here and only here: routers ask `visible_*` / `get_*` for rows and never filter by
hand, so an out-of-scope id is indistinguishable from an unknown one (404, nothing leaks).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, false, or_, select, true
from sqlalchemy.orm import Session, joinedload

from cloud.models import Node, Region, Store

__all__ = [
    "Forbidden",
    "NotFound",
    "Perm",
    "Principal",
    "Role",
    "Scope",
    "get_node",
    "get_store",
    "visible_nodes",
    "visible_regions",
    "visible_stores",
]


# No code or id holds a control character, and PostgreSQL refuses NUL in text (a 500 from the
# driver): such a value matches nothing, and is answered so without a query.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Role(enum.StrEnum):
    ADMIN = "admin"
    """Everything, including users and API keys."""
    HQ = "hq"
    """Every region; reads the audit log."""
    REGIONAL = "regional"
    """Only the regions assigned."""
    STORE = "store"
    """Only the stores assigned."""
    TECHNICIAN = "technician"
    """Fleet pages only (regions, stores, nodes, devices), in the regions/stores assigned or all."""


class Perm(enum.StrEnum):
    FLEET = "fleet"
    """Read regions, stores, nodes, devices, the bus's commands and failed messages."""
    FLEET_EDIT = "fleet_edit"
    """Create and edit stores (regions: all-region principals only), assign and retire boxes,
    replay or discard failed messages, within the principal's scope."""
    BUSINESS = "business"
    """Orders, stock, traceability, signage (the engines' pages)."""
    AUDIT = "audit"
    USERS = "users"
    """Users and API keys."""


ROLE_PERMS: dict[Role, frozenset[Perm]] = {
    Role.ADMIN: frozenset(Perm),
    Role.HQ: frozenset({Perm.FLEET, Perm.FLEET_EDIT, Perm.BUSINESS, Perm.AUDIT}),
    Role.REGIONAL: frozenset({Perm.FLEET, Perm.FLEET_EDIT, Perm.BUSINESS}),
    Role.STORE: frozenset({Perm.FLEET, Perm.BUSINESS}),
    Role.TECHNICIAN: frozenset({Perm.FLEET, Perm.FLEET_EDIT}),
}


class NotFound(LookupError):
    """Unknown or out of scope (deliberately the same answer); the message names the id."""


class Forbidden(PermissionError):
    """The principal's role does not allow this kind of page or endpoint."""


@dataclass(frozen=True, slots=True)
class Scope:
    """Which stores a principal may see: all of them, or those of some regions plus some stores."""

    all: bool
    region_ids: frozenset[int] = frozenset()
    store_ids: frozenset[int] = frozenset()

    @classmethod
    def for_role(cls, role: Role, region_ids: Iterable[int] = (), store_ids: Iterable[int] = ()) -> Scope:
        regions, stores = frozenset(region_ids), frozenset(store_ids)
        if role in (Role.ADMIN, Role.HQ):
            return cls(all=True)
        if role is Role.TECHNICIAN and not regions and not stores:
            return cls(all=True)
        if role is Role.STORE:
            # A store user's scope is its stores, whatever regions might also be recorded.
            return cls(all=False, store_ids=stores)
        return cls(all=False, region_ids=regions, store_ids=stores)

    def store_clause(self) -> ColumnElement[bool]:
        if self.all:
            return true()
        if not self.region_ids and not self.store_ids:
            return false()
        return or_(Store.region_id.in_(self.region_ids), Store.id.in_(self.store_ids))

    def region_clause(self) -> ColumnElement[bool]:
        if self.all:
            return true()
        # A region is visible when the principal sees at least one of its stores or owns all of it.
        return or_(Region.id.in_(self.region_ids), Region.id.in_(select(Store.region_id).where(self.store_clause())))

    def node_clause(self) -> ColumnElement[bool]:
        if self.all:
            return true()
        # Nodes with no store yet are only for all-region principals.
        return Node.store_id.in_(select(Store.id).where(self.store_clause()))


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a signed-in user or an API key, with role, scope and (for sessions) CSRF token."""

    kind: str
    """`user` or `key`."""
    id: int
    name: str
    role: Role
    scope: Scope
    csrf_token: str | None = None
    session_id: int | None = None
    region_codes: tuple[str, ...] = field(default=())
    store_codes: tuple[str, ...] = field(default=())

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.name}"

    def can(self, perm: Perm) -> bool:
        return perm in ROLE_PERMS[self.role]

    def require(self, perm: Perm) -> None:
        if not self.can(perm):
            raise Forbidden(f"role {self.role.value!r} may not use {perm.value} pages or endpoints")


def visible_regions(session: Session, scope: Scope) -> Sequence[Region]:
    return session.scalars(select(Region).where(scope.region_clause()).order_by(Region.code)).all()


def visible_stores(
    session: Session, scope: Scope, *, region_code: str | None = None, q: str | None = None
) -> Sequence[Store]:
    if _CONTROL.search(f"{region_code or ''}{q or ''}"):
        return []
    stmt = select(Store).join(Store.region).options(joinedload(Store.region)).where(scope.store_clause())
    if region_code:
        stmt = stmt.where(Region.code == region_code)
    if q:
        like = f"%{q.lower()}%"
        stmt = stmt.where(or_(Store.code.ilike(like), Store.name.ilike(like)))
    return session.scalars(stmt.order_by(Store.code)).unique().all()


def visible_nodes(
    session: Session, scope: Scope, *, store_ids: Iterable[int] | None = None, retired: bool = False
) -> Sequence[Node]:
    """The nodes in scope; retired boxes only when asked for (`retired=True` lists only those)."""
    stmt = select(Node).options(joinedload(Node.store)).where(scope.node_clause())
    stmt = stmt.where(Node.retired_at.is_not(None) if retired else Node.retired_at.is_(None))
    if store_ids is not None:
        stmt = stmt.where(Node.store_id.in_(list(store_ids)))
    return session.scalars(stmt.order_by(Node.id)).unique().all()


def get_store(session: Session, scope: Scope, code: str) -> Store:
    store = None if _CONTROL.search(code) else session.scalars(
        select(Store).options(joinedload(Store.region)).where(Store.code == code, scope.store_clause())
    ).one_or_none()
    if store is None:
        raise NotFound(f"No store {code!r} (unknown, or outside your regions and stores)")
    return store


def get_node(session: Session, scope: Scope, node_id: str) -> Node:
    node = None if _CONTROL.search(node_id) else session.scalars(
        select(Node).options(joinedload(Node.store)).where(Node.id == node_id, scope.node_clause())
    ).one_or_none()
    if node is None:
        raise NotFound(f"No node {node_id!r}: unknown, never sent a message and not seeded, or outside your scope")
    return node
