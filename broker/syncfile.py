"""The catalogue sync file: what the cloud writes and a box applies, one JSON object per line.

A file (gzip'd) is a header line, then one line per product change:

    {"format": 1, "kind": "snapshot", "from": 0, "to": 17, "epoch": "…"}
    {"op": "put", "p": {"sku": "TEA-LJ-250", "gtins": ["06901234567892"], …}}
    {"op": "del", "sku": "OLD-1"}

A snapshot holds every active product of version `to`; a delta holds what changed after `from` up
to `to`. The file itself travels over plain HTTP; the box trusts it because its sha256 came over
the authenticated bus (`CatalogFile` in `broker.payloads`). Both ends use these models, so a change
of the format is a change here, with its tests.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

__all__ = [
    "FORMAT",
    "DelLine",
    "ImageRef",
    "ProductRecord",
    "PutLine",
    "SyncFileError",
    "SyncHeader",
    "SyncLine",
    "encode_header",
    "encode_line",
    "parse_header",
    "parse_line",
]

FORMAT = 1

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Sku = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-/]+$")]
Gtin14 = Annotated[str, StringConstraints(pattern=r"^[0-9]{14}$")]
Money = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}(\.[0-9]{1,2})?$")]
"""A price as a decimal string ('12.50'): never a float on the wire."""
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
OptText = Annotated[str, StringConstraints(max_length=5000)] | None


class SyncFileError(ValueError):
    """A line that is not part of the sync file format; the message names the line's problem."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SyncHeader(_Model):
    format: Literal[1] = 1
    kind: Literal["snapshot", "delta"]
    from_version: int = Field(alias="from", ge=0)
    """0 for a snapshot."""
    to_version: int = Field(alias="to", ge=1)
    epoch: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] | None = None
    """The catalogue identity the versions belong to (see `CatalogData.epoch`)."""


class ImageRef(_Model):
    sha256: Sha256
    """The full image, by content hash (`/catalogue/files/<sha256>`)."""
    thumb: Sha256
    """Its thumbnail."""


class ProductRecord(_Model):
    """One product as a box stores it."""

    sku: Sku
    gtins: tuple[Gtin14, ...] = ()
    name_en: Name
    name_zh: Name
    desc_en: OptText = None
    desc_zh: OptText = None
    brand: Annotated[str, StringConstraints(max_length=200)] | None = None
    category: Annotated[str, StringConstraints(max_length=500)] | None = None
    """Levels separated by ' > ', e.g. 'Food > Tea > Green'."""
    attributes: dict[Annotated[str, StringConstraints(max_length=64)], Annotated[str, StringConstraints(max_length=200)]] = {}
    list_price: Money
    prices: dict[Annotated[str, StringConstraints(max_length=32)], Money] = {}
    """Price overrides by region code."""
    images: tuple[ImageRef, ...] = ()
    serialised: bool = False
    """Each unit carries its own serial (GS1 AI 21) and is traced one by one."""


class PutLine(_Model):
    op: Literal["put"] = "put"
    p: ProductRecord


class DelLine(_Model):
    op: Literal["del"] = "del"
    sku: Sku


SyncLine = Annotated[PutLine | DelLine, Field(discriminator="op")]
_LINE: TypeAdapter[PutLine | DelLine] = TypeAdapter(SyncLine)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    where = ".".join(str(x) for x in err["loc"]) or "(line)"
    return f"field '{where}': {err['msg']}"


def parse_header(text: str) -> SyncHeader:
    try:
        return SyncHeader.model_validate_json(text)
    except ValidationError as exc:
        raise SyncFileError(f"not a sync file header ({_first_error(exc)})") from None


def parse_line(text: str) -> PutLine | DelLine:
    try:
        return _LINE.validate_json(text)
    except ValidationError as exc:
        raise SyncFileError(_first_error(exc)) from None


def encode_header(header: SyncHeader) -> str:
    return header.model_dump_json(by_alias=True)


def encode_line(line: PutLine | DelLine) -> str:
    # ensure_ascii off: Chinese names stay readable and a third smaller.
    return json.dumps(line.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":"))
