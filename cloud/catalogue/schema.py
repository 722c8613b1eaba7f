"""One product row as a brand's ERP exports it (CSV or JSON), validated, and its merge into the
stored product.

CSV columns: sku, gtin (several separated by '|'), name_en, name_zh, desc_en, desc_zh, brand,
category ('Food > Tea > Green'), list_price, status, serialised, images ('|'-separated file names or
URLs), attr_<name> (one column per attribute) and price_<REGION> (one column per region override).
JSON objects use the same names, or lists/objects: gtins, images, attributes, prices.

A row states only what it mentions, so that a partial file (say `sku,status` to discontinue) cannot
wipe what it does not mention:

- CSV: a column absent from the header keeps the stored value; an empty cell clears it.
- JSON: an absent key keeps the stored value; `null` or `""` clears it.
- `attr_<name>` / `price_<REGION>` (JSON: a key of `attributes` / `prices`) update that one key, an
  empty value removes it, keys not mentioned are kept. JSON `"prices": null` removes them all.
- `gtin` and `images` are lists: when present they replace the stored list (empty clears it).
- Cleared `status` / `serialised` mean their defaults (`active` / no).
- `name_en`, `name_zh` and `list_price` are required for a new SKU and cannot be cleared.

`ProductRow` is the validated row (which fields it mentions: `model_fields_set`); `merge` applies it
to the stored `ProductContent` (or to nothing, for a new SKU).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
)

import gs1

__all__ = [
    "REQUIRED_FOR_NEW",
    "ImageRef",
    "ProductContent",
    "ProductRow",
    "RowProblem",
    "merge",
    "row_from_csv",
]

REQUIRED_FOR_NEW = ("name_en", "name_zh", "list_price")
"""What a new SKU must state, and what an existing product cannot clear."""

_LIST_SEP = "|"
_CATEGORY_SEP = re.compile(r"\s*>\s*")



def _split(value: Any) -> Any:
    if value is None:
        return ()
    if isinstance(value, str):
        return [part.strip() for part in value.split(_LIST_SEP) if part.strip()]
    return value


def _blank_to_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def _price(value: Any) -> Decimal | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a price (expected e.g. 12.50)")
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
    if value is None:
        return False
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "yes", "y"):
            return True
        if v in ("", "0", "false", "no", "n"):
            return False
        raise ValueError(f"{value!r} is not a yes/no value (use true/false, yes/no or 1/0)")
    return value


def _status(value: Any) -> Any:
    if value is None:
        return "active"
    if isinstance(value, str):
        return value.strip().lower() or "active"
    return value


Sku = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-/]+$")]
# The constraints sit on `str` inside the union: on the union they would be applied to None too.
Name = Annotated[Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None, BeforeValidator(_blank_to_none)]
OptName = Annotated[Annotated[str, StringConstraints(max_length=200)] | None, BeforeValidator(_blank_to_none)]
OptText = Annotated[Annotated[str, StringConstraints(max_length=5000)] | None, BeforeValidator(_blank_to_none)]
Category = Annotated[Annotated[str, StringConstraints(max_length=500)] | None, BeforeValidator(_blank_to_none)]
Price = Annotated[Decimal | None, BeforeValidator(_price)]
RegionCode = Annotated[str, StringConstraints(min_length=1, max_length=32)]
AttrName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
AttrValue = Annotated[Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None, BeforeValidator(_blank_to_none)]
Gtin = Annotated[str, AfterValidator(gs1.normalise_gtin)]
ImageSource = Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class ProductRow(BaseModel):
    """One validated row. Fields the row does not mention keep their defaults here and are absent
    from `model_fields_set`; `merge` keeps the stored value for them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sku: Sku
    gtins: Annotated[tuple[Gtin, ...], BeforeValidator(_split), Field(max_length=20)] = ()
    name_en: Name = None
    name_zh: Name = None
    desc_en: OptText = None
    desc_zh: OptText = None
    brand: OptName = None
    category: Category = None
    list_price: Price = None
    prices: Annotated[dict[RegionCode, Price] | None, BeforeValidator(_blank_to_none)] = None
    """Region → price; a None price removes that region's override, a None dict removes them all."""
    attributes: Annotated[dict[AttrName, AttrValue] | None, BeforeValidator(_blank_to_none)] = None
    """Name → value; a None value removes that attribute, a None dict removes them all."""
    images: Annotated[tuple[ImageSource, ...], BeforeValidator(_split), Field(max_length=20)] = ()
    status: Annotated[Literal["active", "discontinued"], BeforeValidator(_status)] = "active"
    serialised: Annotated[bool, BeforeValidator(_bool)] = False

    @field_validator("gtins")
    @classmethod
    def _unique_gtins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value))

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


class ImageRef(NamedTuple):
    sha256: str
    """The image file (content address in the catalogue's file store)."""
    thumb: str
    """Its 256 px JPEG thumbnail."""


class ProductContent(NamedTuple):
    """Everything an import sets on a product, normalised: what the change check compares.

    Immutable all the way down (tuples), and mappings are sorted, so equal content compares and
    hashes equal whatever the order of the file's columns or keys. A NamedTuple rather than a
    frozen dataclass: one is built per imported row, and a frozen dataclass takes 3x longer.
    """

    gtins: tuple[str, ...]
    """14 digits each; the first is the primary GTIN."""
    name_en: str
    name_zh: str
    desc_en: str | None
    desc_zh: str | None
    brand: str | None
    category: str | None
    list_price: Decimal
    """Quantized to cents, as every price here."""
    prices: tuple[tuple[str, Decimal], ...]
    """(region code, price), sorted by region."""
    attributes: tuple[tuple[str, str], ...]
    """(name, value), sorted by name."""
    images: tuple[ImageRef, ...]
    """In display order."""
    status: str
    serialised: bool

    def digest(self) -> str:
        """sha256 of the content (stored as `products.row_hash`).

        Only a shortcut: equal hashes mean equal content, and a hash that does not match (written
        by an older importer, say) only sends the product through a comparison of the content.
        """
        return hashlib.sha256(_CONTENT_JSON.dump_json(self)).hexdigest()


# JSON made by pydantic-core: exact (prices as "12.50" strings) and, per row of an import, twice as
# fast as Python's repr or json.dumps of the same tuple.
_CONTENT_JSON: TypeAdapter[ProductContent] = TypeAdapter(ProductContent)


@dataclass(frozen=True, slots=True)
class RowProblem:
    field: str
    problem: str


def _merge_map(stored: tuple[tuple[str, Any], ...], given: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    if given is None:
        return ()
    if not stored:
        return tuple(sorted((k, v) for k, v in given.items() if v is not None))
    out = dict(stored)
    for key, value in given.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return tuple(sorted(out.items()))


def merge(
    stored: ProductContent | None, row: ProductRow, images: tuple[ImageRef, ...], *, absent: str = "column"
) -> ProductContent | list[RowProblem]:
    """`row` applied to the `stored` product (None: the SKU is new); problems if that is not allowed.

    `images` are the row's images as stored files (resolved by the caller); `absent` is what a
    field left out of the row is called in its format ("column" in CSV, "key" in JSON).
    """
    given = row.model_fields_set
    problems: list[RowProblem] = []
    for name in REQUIRED_FOR_NEW:
        if getattr(row, name) is not None:
            continue
        if stored is None:
            found = "an empty value" if name in given else f"no {name} {absent}"
            problems.append(RowProblem(name, f"{name} is required for a new SKU ({row.sku} is not in the catalogue yet): "
                                             f"expected a value, found {found}"))
        elif name in given:
            problems.append(RowProblem(name, f"{name} of {row.sku} cannot be cleared: expected a value, found an empty one "
                                             f"(leave the {absent} out to keep {str(getattr(stored, name))!r})"))
    if problems:
        return problems
    if stored is None:
        # What the row leaves out has its default in `row`, which is a new product's default.
        assert row.name_en is not None and row.name_zh is not None and row.list_price is not None  # checked above
        return ProductContent(
            gtins=row.gtins, name_en=row.name_en, name_zh=row.name_zh, desc_en=row.desc_en, desc_zh=row.desc_zh,
            brand=row.brand, category=row.category, list_price=row.list_price, prices=_merge_map((), row.prices),
            attributes=_merge_map((), row.attributes), images=images, status=row.status, serialised=row.serialised,
        )

    def pick(name: str) -> Any:
        return getattr(row if name in given else stored, name)

    # The required fields are not None here: checked above, or kept from `stored`.
    return ProductContent(
        gtins=pick("gtins"),
        name_en=pick("name_en"),
        name_zh=pick("name_zh"),
        desc_en=pick("desc_en"),
        desc_zh=pick("desc_zh"),
        brand=pick("brand"),
        category=pick("category"),
        list_price=pick("list_price"),
        prices=_merge_map(stored.prices, row.prices) if "prices" in given else stored.prices,
        attributes=_merge_map(stored.attributes, row.attributes) if "attributes" in given else stored.attributes,
        images=images if "images" in given else stored.images,
        status=pick("status"),
        serialised=pick("serialised"),
    )


_KNOWN = frozenset(ProductRow.model_fields) - {"prices", "attributes"}


def row_from_csv(record: dict[str, str]) -> dict[str, Any]:
    """ProductRow's input from a CSV record (column → cell, every column of the header).

    Every known column is passed on, empty or not: an empty cell clears. attr_*/price_* columns are
    grouped into `attributes`/`prices`. A cell of an unknown column is passed on only when it holds
    something (then it is reported); an empty one is ignored, as a spreadsheet's stray column is.
    """
    out: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    prices: dict[str, str] = {}
    for key, value in record.items():
        if key.startswith("attr_"):
            attributes[key[5:]] = value
        elif key.startswith("price_"):
            prices[key[6:]] = value
        elif key in ("gtin", "gtins"):
            out["gtins"] = value
        elif key in _KNOWN or value.strip():
            out[key] = value
    if attributes:
        out["attributes"] = attributes
    if prices:
        out["prices"] = prices
    return out
