"""Small entry points for the demo and scripts: make sure an admin exists, mint an API key."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Engine, select

from cloud.access import service
from cloud.access.models import User

__all__ = ["create_api_key", "ensure_admin"]


def ensure_admin(engine: Engine, username: str, password: str, *, actor: str = "cli:bootstrap") -> bool:
    """Create admin `username` unless a user of that name exists; return whether it was created."""
    with service.write_session(engine) as session, session.begin():
        if session.scalars(select(User.id).where(User.username == username)).first() is not None:
            return False
        service.create_user(session, actor, username, password, "admin", via="cli")
        return True


def create_api_key(
    engine: Engine,
    name: str,
    role: str,
    *,
    regions: Sequence[str] = (),
    stores: Sequence[str] = (),
    expires_at: datetime | None = None,
    actor: str = "cli:bootstrap",
) -> str:
    """Create an API key and return its secret (shown once; only a hash is stored)."""
    with service.write_session(engine) as session, session.begin():
        _key, secret = service.create_api_key(
            session, actor, name, role, regions=regions, stores=stores, expires_at=expires_at, via="cli"
        )
        return secret
