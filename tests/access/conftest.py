"""Access fixtures: a seeded database with a user and an API key per role, and a signed-in client."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from cloud.access import service
from cloud.access.bootstrap import create_api_key
from cloud.api import create_app
from cloud.models import Node
from cloud.seed import seed
from cloud.settings import Settings
from tests.cloud.conftest import db_url, engine  # noqa: F401  (fixtures shared with tests/cloud)

PASSWORD = "correct horse battery"

# role → (regions, stores) granted, and what that role must see.
GRANTS: dict[str, tuple[list[str], list[str]]] = {
    "admin": ([], []),
    "hq": ([], []),
    "regional": (["east"], []),
    "store": ([], ["st0003"]),
    "technician": ([], []),
}
ALL_NODES = ["st0001-k1", "st0002-k1", "st0003-k1", "stray-1"]
SEES: dict[str, dict[str, list[str]]] = {
    "admin": {"regions": ["east", "south"], "stores": ["st0001", "st0002", "st0003"], "nodes": ALL_NODES},
    "hq": {"regions": ["east", "south"], "stores": ["st0001", "st0002", "st0003"], "nodes": ALL_NODES},
    "technician": {"regions": ["east", "south"], "stores": ["st0001", "st0002", "st0003"], "nodes": ALL_NODES},
    "regional": {"regions": ["east"], "stores": ["st0001", "st0002"], "nodes": ["st0001-k1", "st0002-k1"]},
    "store": {"regions": ["south"], "stores": ["st0003"], "nodes": ["st0003-k1"]},
}


@dataclass
class World:
    engine: Engine
    settings: Settings
    keys: dict[str, str] = field(default_factory=dict)
    """role → API key secret (no admin keys exist)."""

    def app_client(self, **kw: object) -> TestClient:
        """A client of the app on this world's database and settings (its lifespan runs on `with`).

        One app per test process serves every world in turn: FastAPI builds each route's
        dependencies and validators at the first request an app routes past it, about 0.5 s of
        CPU for this app, and some four hundred tests each make a client. Only the lifespan,
        which puts the engine and settings in `app.state`, is this world's; the routes,
        middleware and pages are the same for every world. A second client while the first is
        open (or never closed) gets an app of its own."""
        fresh = create_app(self.settings, run_worker=False, engine=self.engine)
        if _shared.busy:
            return TestClient(fresh, **kw)  # type: ignore[arg-type]
        if _shared.app is None:
            _shared.app = fresh
        else:
            _shared.app.router.lifespan_context = fresh.router.lifespan_context
        _shared.busy = True
        return _SharedAppClient(_shared.app, **kw)  # type: ignore[arg-type]


@dataclass
class _SharedApp:
    app: FastAPI | None = None
    busy: bool = False


_shared = _SharedApp()


class _SharedAppClient(TestClient):
    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            _shared.busy = False


def behind_proxy(app: Any, trusted: str = "testclient") -> TestClient:
    """A client of `app` behind uvicorn's proxy-headers middleware, as `omnishelf cloud serve` runs it
    (on by default, trusting the addresses of --forwarded-allow-ips): X-Forwarded-For and
    X-Forwarded-Proto from a trusted peer become the request's client address and scheme."""
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    # uvicorn and Starlette type the same ASGI callables differently.
    proxied: Any = ProxyHeadersMiddleware(app, trusted_hosts=trusted)
    return TestClient(proxied)


def make_world(eng: Engine) -> World:
    seed(eng)
    with service.write_session(eng) as s, s.begin():
        # A box that announced itself but is not assigned to a store: only all-region roles see it.
        s.add(Node(id="stray-1"))
        for role, (regions, stores) in GRANTS.items():
            service.create_user(s, "cli:test", role, PASSWORD, role, regions=regions, stores=stores, via="cli")
    world = World(eng, Settings(DATABASE_URL=eng.url.render_as_string(hide_password=False)))
    for role, (regions, stores) in GRANTS.items():
        if role != "admin":
            world.keys[role] = create_api_key(eng, f"{role}-key", role, regions=regions, stores=stores)
    return world


@pytest.fixture
def world(engine: Engine) -> World:  # noqa: F811
    return make_world(engine)


def sign_in(client: TestClient, username: str, password: str = PASSWORD) -> str:
    """Sign in through the console form; return the session's CSRF token (from a page)."""
    page = client.get("/console/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, page.text
    answer = client.post("/console/login", data={"username": username, "password": password, "csrf_token": token[1]},
                         follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return csrf_of(client)


def csrf_of(client: TestClient) -> str:
    page = client.get("/console/fleet")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, page.text
    return token[1]


@pytest.fixture
def admin(world: World) -> Iterator[tuple[TestClient, str]]:
    with world.app_client() as client:
        yield client, sign_in(client, "admin")


def row_count(eng: Engine, model: type) -> int:
    from sqlalchemy import func, select

    with Session(eng) as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)
