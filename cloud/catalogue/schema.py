"""One product row as a brand's ERP exports it (CSV or JSON), validated and normalised.

CSV columns: sku, gtin (several separated by '|'), name_en, name_zh, desc_en, desc_zh, brand,
category ('Food > Tea > Green'), list_price, status, serialised, images ('|'-separated file names or
URLs), attr_<name> (one column per attribute) and price_<REGION> (one column per region override).
JSON objects use the same names, or lists/objects: gtins, images, attributes, prices.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator

__all__ = ["GTIN_RE", "ProductRow", "gtin_check_digit", "normalise_gtin", "row_from_csv"]

GTIN_RE = re.compile(r"^\d{8}$|^\d{12,14}$")
_LIST_SEP = "|"
_CATEGORY_SEP = re.compile(r"\s*>\s*")


def gtin_check_digit(body: str) -> str:
    """The GS1 mod-10 check digit of `body` (a GTIN without its last digit)."""
    total = 3 * sum(map(int, body[-1::-2])) + sum(map(int, body[-2::-2]))
    return str(-total % 10)


def normalise_gtin(value: str) -> str:
    """A GTIN-8/12/13/14 as 14 digits; `ValueError` saying what is wrong otherwise."""
    code = value.strip()
    if not GTIN_RE.match(code):
        raise ValueError(f"GTIN {code!r} must be 8, 12, 13 or 14 digits")
    if gtin_check_digit(code[:-1]) != code[-1]:
        raise ValueError(f"GTIN {code!r} has a wrong check digit (expected {gtin_check_digit(code[:-1])})")
    return code.zfill(14)


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(_LIST_SEP) if part.strip()]
    return value


def _blank_to_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def _price(value: Any) -> Decimal:
    if isinstance(value, float):
        value = repr(value)
    try:
        price = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a price (expected e.g. 12.50)") from None
    if not price.is_finite() or price < 0 or price >= Decimal("1e10"):
        raise ValueError(f"price {value!r} must be between 0 and 9,999,999,999.99")
    if price != price.quantize(Decimal("0.01")):
        raise ValueError(f"price {value!r} has more than 2 decimals")
    return price.quantize(Decimal("0.01"))


def _bool(value: Any) -> Any:
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "yes", "y"):
            return True
        if v in ("", "0", "false", "no", "n"):
            return False
        raise ValueError(f"{value!r} is not a yes/no value (use true/false, yes/no or 1/0)")
    return value


Sku = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-/]+$")]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
OptText = Annotated[str | None, BeforeValidator(_blank_to_none), StringConstraints(max_length=5000)]
OptName = Annotated[str | None, BeforeValidator(_blank_to_none), StringConstraints(max_length=200)]
Price = Annotated[Decimal, BeforeValidator(_price)]
RegionCode = Annotated[str, StringConstraints(min_length=1, max_length=32)]


class ProductRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sku: Sku
    gtins: Annotated[list[str], BeforeValidator(_split), Field(max_length=20)] = []
    name_en: Name
    name_zh: Name
    desc_en: OptText = None
    desc_zh: OptText = None
    brand: OptName = None
    category: Annotated[str | None, BeforeValidator(_blank_to_none), StringConstraints(max_length=500)] = None
    list_price: Price
    prices: dict[RegionCode, Price] = {}
    attributes: dict[Annotated[str, StringConstraints(min_length=1, max_length=64)], Annotated[str, StringConstraints(max_length=200)]] = {}
    images: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=2000)]], BeforeValidator(_split), Field(max_length=20)] = []
    status: Literal["active", "discontinued"] = "active"
    serialised: Annotated[bool, BeforeValidator(_bool)] = False

    @field_validator("gtins")
    @classmethod
    def _gtins(cls, value: list[str]) -> list[str]:
        out: list[str] = []
        for code in value:
            gtin = normalise_gtin(str(code))
            if gtin not in out:
                out.append(gtin)
        return out

    @field_validator("category")
    @classmethod
    def _category(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = [p for p in _CATEGORY_SEP.split(value.strip()) if p]
        if not parts:
            return None
        if any(len(p) > 100 for p in parts):
            raise ValueError("each category level must be at most 100 characters")
        return " > ".join(parts)

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value.strip().lower() or "active"
        return value


def row_from_csv(record: dict[str, str | None]) -> dict[str, Any]:
    """Map a CSV record (header → cell) to ProductRow's input: attr_*/price_* columns grouped."""
    out: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    prices: dict[str, str] = {}
    for key, value in record.items():
        if key is None:
            raise ValueError("the row has more cells than the header has columns")
        key = key.strip()
        if value is None:
            continue
        if key.startswith("attr_"):
            if value.strip():
                attributes[key[5:]] = value.strip()
        elif key.startswith("price_"):
            if value.strip():
                prices[key[6:]] = value
        elif key in ("gtin", "gtins"):
            out["gtins"] = value
        elif value.strip() or key in ("sku", "name_en", "name_zh", "list_price"):
            out[key] = value
    if attributes:
        out["attributes"] = attributes
    if prices:
        out["prices"] = prices
    return out
