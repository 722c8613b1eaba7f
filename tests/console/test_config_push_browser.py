"""The console's config push form and its progress table in real headless Chromium: HQ pushes a
setting to a region from the enrolment page, the table counts the region's boxes as pending, then
(the boxes' answers written as the bus would) applied, rejected with the box's reason, and rolled
back; no Content-Security-Policy violation, no console error."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from cloud.access import service
from cloud.api import create_app
from cloud.fleet.models import ConfigPush, Identity, NodeConfigState
from tests.access.conftest import PASSWORD, make_world
from tests.cloud.test_config_pushes import ENROLLED, answer
from tests.console.test_browser import CHROMIUM, Server, signed_in_page, sqlite_engine  # noqa: F401 - fixture

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install chromium)")


def test_push_to_a_region_from_the_console(sqlite_engine: Engine) -> None:  # noqa: F811 - the fixture
    from playwright.sync_api import expect, sync_playwright

    world = make_world(sqlite_engine)
    with service.write_session(sqlite_engine) as s, s.begin():
        for i, (node, (role, model)) in enumerate(ENROLLED.items()):
            s.add(Identity(node_id=node, serial=f"SN-{i}", model=model, role=role, public_key="A" * 44, status="active",
                           broker_synced=True, enrolled_at=datetime.now(UTC), enrolled_by="test"))
            s.add(NodeConfigState(node_id=node, desired_version=0, applied_version=0))
    with Server(create_app(world.settings, run_worker=False, engine=sqlite_engine)) as server, sync_playwright() as p:
        page, seen = signed_in_page(p, server.url, "hq", PASSWORD, height=900)
        page.goto(f"{server.url}/console/enrolment")
        expect(page.locator("#batches tbody")).to_have_text("No push yet.")

        form = page.locator("#push-form")
        form.locator("select[name=target]").select_option("region:east")
        form.locator("textarea[name=overrides]").fill('{"telemetry_every_s": 30}')
        expect(form.locator("input[name=rollback_after_s]")).to_have_value("300")
        form.get_by_role("button", name="Push").click()
        expect(page.locator("p.saved")).to_contain_text("Config pushed to 2 box(es) (batch ")

        with Session(sqlite_engine) as s:
            pushes = s.scalars(select(ConfigPush).order_by(ConfigPush.node_id)).all()
        assert [(p.node_id, p.status) for p in pushes] == [("st0001-k1", "pending"), ("st0002-k1", "pending")]
        batch = pushes[0].batch
        assert batch is not None
        row = page.locator(f"#batches tr[data-batch='{batch}'] td")
        # batch, boxes, applied, rejected, pending, rolled back, superseded, rejections
        expect(row).to_have_text([batch[:8], "2", "0", "0", "2", "0", "0", ""])

        answer(world, batch, {"st0001-k1": ("applied", None, "applied v1"),
                              "st0002-k1": ("rejected", "telemetry_every_s", "rejected v1: field 'telemetry_every_s': too often")})
        page.reload()
        expect(row).to_have_text([batch[:8], "2", "1", "1", "0", "0", "0",
                                  "st0002-k1: rejected v1: field 'telemetry_every_s': too often"])

        # A bad push is refused on the page (a 422 page, which the browser logs), the field named.
        assert seen.violations == [] and seen.errors == []
        form.locator("select[name=target]").select_option("store:st0001")
        form.locator("textarea[name=overrides]").fill('{"telemetry_every_s": -1}')
        form.get_by_role("button", name="Push").click()
        expect(page.locator(".error")).to_contain_text("st0001-k1: field 'telemetry_every_s': Input should be greater than or equal to 0")
        assert [e.split(": console error: ")[1] for e in seen.errors] == [
            "Failed to load resource: the server responded with a status of 422 (Unprocessable Entity)"]
        seen.clear()
        answer(world, batch, {"st0001-k1": ("rolled_back", None, "the box rolled back by itself")})
        page.goto(f"{server.url}/console/enrolment")
        expect(row).to_have_text([batch[:8], "2", "0", "1", "0", "1", "0",
                                  "st0002-k1: rejected v1: field 'telemetry_every_s': too often"])
        page.context.browser.close()
    assert seen.violations == [] and seen.errors == []
