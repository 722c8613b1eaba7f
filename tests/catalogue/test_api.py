"""The catalogue's JSON API over HTTP on both databases: bounded parameters answer 422 naming the
parameter, unknown things 404 naming them, declared in the OpenAPI document; search and filters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import gs1
from cloud.api import create_app
from cloud.catalogue.importer import import_file
from cloud.settings import Settings
from tests.access.conftest import World, sign_in, world  # noqa: F401 - fixtures

BIG = "9223372036854775808"  # 2**63: one more than a BIGINT holds
MAX = "9223372036854775807"

# (request, status, where the answer points: the 422 location or the 404 detail, part of the message)
BOUNDS: list[tuple[str, int, Any, str]] = [
    (f"/catalogue/imports/{BIG}/report", 422, ["path", "import_id"], f"less than or equal to {MAX}"),
    ("/catalogue/imports/0/report", 422, ["path", "import_id"], "greater than or equal to 1"),
    ("/catalogue/imports/-5/report", 422, ["path", "import_id"], "greater than or equal to 1"),
    ("/catalogue/imports/x/report", 422, ["path", "import_id"], "valid integer"),
    (f"/catalogue/imports/{MAX}/report", 404, f"no import with id {MAX}", ""),
    ("/catalogue/products?offset=99999999999999999999", 422, ["query", "offset"], f"less than or equal to {MAX}"),
    ("/catalogue/products?offset=-1", 422, ["query", "offset"], "greater than or equal to 0"),
    ("/catalogue/products?limit=0", 422, ["query", "limit"], "greater than or equal to 1"),
    ("/catalogue/products?limit=501", 422, ["query", "limit"], "less than or equal to 500"),
    ("/catalogue/products?limit=" + "9" * 5000, 422, ["query", "limit"], "exceeded maximum size"),
    ("/catalogue/products?status=gone", 422, ["query", "status"], "'active' or 'discontinued'"),
    ("/catalogue/imports?limit=501", 422, ["query", "limit"], "less than or equal to 500"),
    ("/catalogue/products/NOPE", 404, "no product with SKU 'NOPE'", ""),
    ("/console/catalogue?page=100001", 422, ["query", "page"], "less than or equal to 100000"),
]


def client_for(world: World, tmp: Path) -> TestClient:  # noqa: F811
    settings = Settings(DATABASE_URL=world.settings.DATABASE_URL, CATALOGUE_DIR=str(tmp / "cat"))
    return TestClient(create_app(settings, run_worker=False, engine=world.engine))


@pytest.mark.parametrize(("path", "status", "where", "message"), BOUNDS, ids=[b[0][:70] for b in BOUNDS])
def test_out_of_range_parameters_are_refused_naming_them(
    world: World, tmp_path: Path, path: str, status: int, where: Any, message: str,  # noqa: F811
) -> None:
    with client_for(world, tmp_path) as client:
        sign_in(client, "hq")
        answer = client.get(path)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    if status == 404:
        assert detail == where
    else:
        assert [d["loc"] for d in detail] == [where]
        assert message in detail[0]["msg"]


def test_at_the_largest_offset_the_list_is_empty(world: World, tmp_path: Path) -> None:  # noqa: F811
    with client_for(world, tmp_path) as client:
        sign_in(client, "hq")
        answer = client.get("/catalogue/products", params={"offset": MAX, "limit": 500})
    assert answer.status_code == 200 and answer.json() == {"total": 5, "items": []}  # the five seeded products


ROUTES = [
    ("/catalogue/products", {"401", "403", "422"}),
    ("/catalogue/products/{sku}", {"401", "403", "404", "422"}),
    ("/catalogue/imports", {"401", "403", "422"}),
    ("/catalogue/imports/{import_id}/report", {"401", "403", "404", "422"}),
    ("/catalogue/files/{sha256}", {"400", "404", "422"}),
]


@pytest.mark.parametrize(("route", "errors"), ROUTES, ids=[r[0] for r in ROUTES])
def test_error_answers_are_declared(world: World, tmp_path: Path, route: str, errors: set[str]) -> None:  # noqa: F811
    with client_for(world, tmp_path) as client:
        responses = client.get("/openapi.json").json()["paths"][route]["get"]["responses"]
    assert set(responses) - {"200"} == errors
    for code in errors - {"422"}:
        assert responses[code]["content"]["application/json"]["schema"]["$ref"].endswith("/Problem")


GTIN = "690000000005" + gs1.check_digit("690000000005")


def _catalogue_csv(tmp: Path) -> Path:
    src = tmp / "p.csv"
    src.write_text(
        "sku,gtin,name_en,name_zh,brand,category,list_price\n"
        f"T-1,{GTIN},Green tea 100%,绿茶,Lake,Food > Tea,1\n"
        "T-2,,Black tea,红茶,Lake,Food > Tea > Black,2\n"
        "POT/9,,Teapot,茶壶,Clay,Food > Teapots,3\n"
        "U_1,,Under_score,下划线,Clay,Kitchen,4\n",
        encoding="utf-8",
    )
    return src


# Besides these four, the world holds the five seeded products (no brand, no category).
SEARCHES: list[tuple[dict[str, str], list[str]]] = [
    ({"category": "Food > Tea"}, ["T-1", "T-2"]),  # sub-categories yes, "Food > Teapots" no
    ({"category": "Food"}, ["POT/9", "T-1", "T-2"]),
    ({"q": "%"}, ["T-1"]),  # % is a character, not a wildcard
    ({"q": "r_s"}, ["U_1"]),  # and so is _
    ({"q": "k_t"}, []),
    ({"q": GTIN}, ["T-1"]),  # GTIN-13 finds its GTIN-14
    ({"q": "0" + GTIN}, ["T-1"]),
    ({"q": "茶"}, ["POT/9", "T-1", "T-2", "TEA-LJ-250"]),
    ({"q": "pot/9"}, []),  # SKUs match exactly
    ({"q": "POT/9"}, ["POT/9"]),
    ({"brand": "Clay", "category": "Kitchen"}, ["U_1"]),
    ({"status": "discontinued"}, []),
]


@pytest.mark.parametrize(("params", "skus"), SEARCHES, ids=[str(s[0]) for s in SEARCHES])
def test_search_and_filters(world: World, tmp_path: Path, params: dict[str, str], skus: list[str]) -> None:  # noqa: F811
    assert import_file(world.engine, _catalogue_csv(tmp_path), tmp_path / "cat").rows_failed == 0
    with client_for(world, tmp_path) as client:
        sign_in(client, "hq")
        page = client.get("/catalogue/products", params=params | {"limit": "500"}).json()
    assert [p["sku"] for p in page["items"]] == skus
    assert page["total"] == len(skus)


def test_a_sku_with_a_slash_has_its_page(world: World, tmp_path: Path) -> None:  # noqa: F811
    import_file(world.engine, _catalogue_csv(tmp_path), tmp_path / "cat")
    with client_for(world, tmp_path) as client:
        sign_in(client, "hq")
        assert client.get("/catalogue/products/POT/9").json()["name_en"] == "Teapot"
        assert "Teapot" in client.get("/console/catalogue/products/POT/9").text
