"""The demo catalogue of cloud.seed: valid GTINs, found by GTIN like imported products."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

import gs1
from cloud.catalogue import service
from cloud.seed import DEMO_PRODUCTS, seed


@pytest.mark.parametrize(("sku", "gtin"), [(p[0], p[1]) for p in DEMO_PRODUCTS], ids=[p[0] for p in DEMO_PRODUCTS])
def test_every_seed_gtin_is_valid(sku: str, gtin: str) -> None:
    assert gs1.normalise_gtin(gtin) == gtin, f"{sku}: {gtin} is not a 14-digit GTIN"


def test_seeded_products_are_found_by_their_gtin(engine: Engine) -> None:
    seed(engine)
    seed(engine)  # idempotent: no duplicate GTIN rows
    for sku, gtin, *_ in DEMO_PRODUCTS:
        page = service.list_products(engine, service.ProductQuery(q=gtin.lstrip("0")))
        assert [p.sku for p in page.items] == [sku]
        assert page.items[0].gtins == [gtin]
