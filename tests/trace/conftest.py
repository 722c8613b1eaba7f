"""Trace fixtures: the seeded world (regions east/south, stores st0001-3, users and API keys per
role) plus store st0004 in the south, and the supply chain's locations."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from cloud.models import Region, Store
from tests.access.conftest import World, make_world
from tests.cloud.conftest import db_url, engine  # noqa: F401 - fixtures
from tests.trace import chain


@pytest.fixture
def tworld(engine: Engine) -> World:  # noqa: F811
    w = make_world(engine)
    with Session(engine) as s, s.begin():
        south = s.scalar(select(Region).where(Region.code == "south"))
        assert south is not None
        code, name, _r, lat, lon = chain.ST0004
        s.add(Store(code=code, name=name, region_id=south.id, lat=lat, lon=lon, timezone="Asia/Shanghai"))
    return w


@pytest.fixture
def hq(tworld: World) -> Iterator[TestClient]:
    with tworld.app_client(headers={"Authorization": f"Bearer {tworld.keys['hq']}"}) as client:
        answer = client.post("/trace/locations/import", content=chain.locations_csv())
        assert answer.status_code == 200, answer.text
        yield client
