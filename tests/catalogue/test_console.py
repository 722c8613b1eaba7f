"""Catalogue console pages and JSON API over HTTP: list/search/filters, product page, imports."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from cloud.api import create_app
from cloud.catalogue.importer import import_file
from cloud.settings import Settings
from tests.access.conftest import World, sign_in, world  # noqa: F401 - fixtures
from tests.catalogue.gen import HEADER, product_row


def client_for(world: World, tmp: Path) -> TestClient:  # noqa: F811
    settings = Settings(DATABASE_URL=world.settings.DATABASE_URL, CATALOGUE_DIR=str(tmp / "cat"))
    return TestClient(create_app(settings, run_worker=False, engine=world.engine))


def test_catalogue_pages(world: World, tmp_path: Path) -> None:  # noqa: F811
    pics = tmp_path / "pics"
    pics.mkdir()
    out = io.BytesIO()
    Image.new("RGB", (300, 200), "orange").save(out, "PNG")
    (pics / "o.png").write_bytes(out.getvalue())
    rows = [product_row(i) for i in range(1, 31)]
    rows[0][12] = "o.png"
    rows[5][1] = "123"  # broken GTIN: in the error report
    src = tmp_path / "p.csv"
    src.write_text(",".join(HEADER) + "\n" + "\n".join(",".join(r) for r in rows) + "\n", encoding="utf-8")
    result = import_file(world.engine, src, tmp_path / "cat", image_dir=pics)
    assert result.rows_failed == 1

    with client_for(world, tmp_path) as client:
        assert client.get("/catalogue/products").status_code == 401  # product data needs a sign-in
        sign_in(client, "hq")
        page = client.get("/console/catalogue", params={"q": "绿茶"})
        assert page.status_code == 200
        assert "SKU-0000010" in page.text and "SKU-0000001" not in page.text  # 红茶1号 does not match 绿茶
        assert ">Catalogue</a>" in page.text
        filtered = client.get("/console/catalogue", params={"category": "Food > Tea", "status": "active"}).text
        assert "SKU-0000010" in filtered and "SKU-0000003" not in filtered

        product = client.get("/console/catalogue/products/SKU-0000001").text
        thumb = client.get("/catalogue/products/SKU-0000001").json()["images"][0]["thumb"]
        assert f"/catalogue/files/{thumb}" in product and "east: 1.25" in product
        image = client.get(f"/catalogue/files/{thumb}")
        assert image.status_code == 200 and hashlib.sha256(image.content).hexdigest() == thumb
        assert client.get("/console/catalogue/products/NOPE").status_code == 404

        imports = client.get("/console/catalogue/imports").text
        assert f"/catalogue/imports/{result.import_id}/report" in imports
        report = client.get(f"/catalogue/imports/{result.import_id}/report")
        assert report.status_code == 200 and "6,gtin," in report.text

        assert client.get("/catalogue/files/not-a-hash").status_code == 400

    with client_for(world, tmp_path) as client:
        sign_in(client, "technician")
        assert client.get("/console/catalogue").status_code == 403
