"""The enrolment page in real headless Chromium: a token is made and shown once, a box claimed with
it shows up online with its config version, it is revoked from the page, and the token list says
which token was used and which revoked."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from cloud.access import service
from tests.access.conftest import PASSWORD
from tests.console.test_browser import ARGS, CHROMIUM
from tests.provisioning.conftest import LOOPBACK, BoxProc, Cloud, start_box


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: nothing here depends on the database (the claim tests run on both)."""
    return f"sqlite:///{tmp_path / 'cloud.db'}"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install chromium)")


def test_enrolment_page(cloud: Cloud, boxes: list[BoxProc], tmp_path: Path) -> None:
    from provisioning import technician

    with service.write_session(cloud.engine) as s, s.begin():
        service.create_user(s, "cli:test", "tech", PASSWORD, "technician", regions=[], stores=["st0001"], via="cli")
    box = start_box(tmp_path, "SN-3000")
    boxes.append(box)
    code = box.pairing_code
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        expect.set_options(timeout=20_000)
        page.goto(f"{cloud.url}/console/login")
        page.fill("input[name=username]", "tech")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.goto(f"{cloud.url}/console/enrolment")
        expect(page.get_by_role("heading", name="Enrolment", exact=True)).to_be_visible()

        # The technician's scope is one store: the form offers only it.
        assert page.locator("#token-form select[name=store] option").all_inner_texts() == ["st0001 Shanghai Nanjing Road"]
        page.select_option("#token-form select[name=role]", "kiosk")
        page.click("#token-form button[type=submit]")
        secret = page.locator("#token-secret").inner_text().strip()
        assert secret.startswith("et_")
        expect(page.locator("#tokens tbody tr").first).to_have_attribute("data-state", "usable")

        done = technician.claim("SN-3000", store="st0001", role="kiosk", token=secret, code=code, cloud_url=cloud.url,
                                interface=LOOPBACK, wait_online_s=30)
        assert done.online
        page.goto(f"{cloud.url}/console/enrolment")
        expect(page.locator("#tokens tbody tr").first).to_have_attribute("data-state", "used")
        row = page.locator(f"#identities tr[data-node='{done.node_id}']")
        expect(row).to_contain_text("online")
        expect(row.locator("td.config")).to_have_text("v0")
        assert secret not in page.content()  # shown once, never again

        row.locator("input[name=reason]").fill("test revocation")
        row.get_by_role("button", name="Revoke").click()
        expect(page.locator("p.saved")).to_have_text(f"{done.node_id} revoked: the broker dropped it.")
        expect(page.locator(f"#identities tr[data-node='{done.node_id}']")).to_have_attribute("data-status", "revoked")
        page.screenshot(path=str(tmp_path / "enrolment.png"))
        browser.close()
