"""Request and response bodies of the staff API (separate from the ORM tables; never a PIN hash out)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

__all__ = ["ClerkCreate", "ClerkPublic", "ClerkUpdate", "PinReset"]

Pin = Annotated[str, StringConstraints(min_length=1, max_length=32)]
"""Length and content are checked by `broker.pins.check_pin` (one message for every way it fails)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClerkCreate(_Strict):
    store: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    pin: Pin
    staff_number: Annotated[str, StringConstraints(max_length=32)] | None = None


class ClerkUpdate(_Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    staff_number: Annotated[str, StringConstraints(max_length=32)] | None = None
    """"" clears it."""


class PinReset(_Strict):
    pin: Pin


class ClerkPublic(BaseModel):
    id: int
    store: str
    name: str
    staff_number: str | None
    active: bool
    pin_set_at: datetime
    created_at: datetime
    created_by: str
    updated_at: datetime
