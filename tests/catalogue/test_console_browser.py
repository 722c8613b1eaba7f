"""The catalogue pages in real headless Chromium: search, a product page showing its image, and the
import history with its error report. Writes catalogue-*.png to var/screenshots/ (docs/img/ with `make screenshots`, used by docs/catalogue.md)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw

from cloud.api import create_app
from cloud.catalogue.importer import import_file
from cloud.settings import Settings
from tests.access.conftest import PASSWORD, World, world  # noqa: F401 - fixtures
from tests.catalogue.gen import HEADER, product_row
from tests.console.test_browser import ARGS, CHROMIUM, IMG, Server, pytestmark  # noqa: F401 - skip rule


def _picture(colour: str) -> bytes:
    """A product photo stand-in: a coloured tin with a label, big enough to pass the image checks."""
    img = Image.new("RGB", (480, 480), "white")
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((120, 60, 360, 420), radius=30, fill=colour)
    draw.rectangle((120, 190, 360, 290), fill="ivory")
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def test_catalogue_pages_in_chromium(world: World, tmp_path: Path) -> None:  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    pics = tmp_path / "pics"
    pics.mkdir()
    (pics / "green.png").write_bytes(_picture("seagreen"))
    (pics / "red.png").write_bytes(_picture("firebrick"))
    rows = [product_row(i) for i in range(1, 41)]
    rows[9][12] = "green.png"  # SKU-0000010, a green tea
    rows[0][12] = "red.png"
    rows[6][6] = "twelve"  # a broken price: data row 7 (the report counts from the line after the header)
    src = tmp_path / "brand-export.csv"
    src.write_text(",".join(HEADER) + "\n" + "\n".join(",".join(r) for r in rows) + "\n", encoding="utf-8")
    result = import_file(world.engine, src, tmp_path / "cat", image_dir=pics)
    assert (result.rows_ok, result.rows_failed) == (39, 1)

    settings = Settings(DATABASE_URL=world.settings.DATABASE_URL, CATALOGUE_DIR=str(tmp_path / "cat"))
    IMG.mkdir(parents=True, exist_ok=True)
    with Server(create_app(settings, run_worker=False, engine=world.engine)) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        expect.set_options(timeout=20_000)
        page.goto(f"{server.url}/console/")
        page.fill("input[name=username]", "hq")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.get_by_role("link", name="Catalogue").click()

        # Chinese substring search narrows the list to the green teas.
        page.fill("input[name=q]", "绿茶")
        page.keyboard.press("Enter")
        expect(page.get_by_text("SKU-0000010")).to_be_visible()
        expect(page.get_by_text("SKU-0000002")).to_have_count(0)
        page.screenshot(path=str(IMG / "catalogue-products.png"), full_page=True)

        # The product page shows its image, served by the app and actually decoded by the browser.
        page.get_by_text("SKU-0000010").first.click()
        photo = page.locator("img").first
        expect(photo).to_be_visible()
        assert photo.evaluate("img => img.complete && img.naturalWidth > 0")
        page.screenshot(path=str(IMG / "catalogue-product.png"), full_page=True)

        # Import history, with the error report of the broken row.
        page.goto(f"{server.url}/console/catalogue/imports")
        expect(page.get_by_text("brand-export.csv")).to_be_visible()
        page.screenshot(path=str(IMG / "catalogue-imports.png"), full_page=True)
        report = page.request.get(f"{server.url}/catalogue/imports/{result.import_id}/report")
        assert report.ok and "7,list_price," in report.text()
        browser.close()
