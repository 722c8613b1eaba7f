"""Routing and order-check rules as data: validated before they are saved, versioned when saved.

A rule set holds checks (hold or approve an order before routing) and routing groups per channel,
each an ordered list of rules. A rule is filters (`field`, `op`, `value`), sorts, an assignment
mode (`single`: one location; `partial`: split across the fewest locations) and what happens when
it cannot fill the order (`next_rule`, `queue` and retry, `unfulfillable`).
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "DEFAULT_RULES",
    "Check",
    "Filter",
    "FilterField",
    "Group",
    "Op",
    "Rule",
    "RuleError",
    "RuleSet",
    "Sort",
    "SortKey",
    "Unfilled",
    "parse_rules",
]


class RuleError(ValueError):
    """A rule set that cannot be saved; the message names the rule, the field and the problem."""


class FilterField(enum.StrEnum):
    AVAILABLE_STOCK = "available_stock"
    """The smallest available-to-promise over the order's SKUs at the location."""
    CAPACITY_LEFT = "capacity_left"
    """Assignments the location can still take today (capacity_per_day minus today's)."""
    REGION = "region"
    KIND = "kind"
    FULFILMENT = "fulfilment"
    """The order's fulfilment type (delivery, pickup): makes a rule apply to one type only."""
    DISTANCE_KM = "distance_km"
    IN_ZONE = "in_zone"
    """Whether the delivery address is inside the location's delivery zone."""
    LOCATION = "location"
    """The location's code."""


class Op(enum.StrEnum):
    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    IN = "in"
    NOT_IN = "not_in"


_NUMERIC = {FilterField.AVAILABLE_STOCK, FilterField.CAPACITY_LEFT, FilterField.DISTANCE_KM}
_ORDERING = {Op.LT, Op.LE, Op.GT, Op.GE}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Filter(_Strict):
    field: FilterField
    op: Op
    value: Any

    @model_validator(mode="after")
    def _typed(self) -> Filter:
        where = f"filter {self.field.value} {self.op.value}"
        if self.op in (Op.IN, Op.NOT_IN):
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"{where}: expected a non-empty list of values, got {self.value!r}")
            return self
        if self.op in _ORDERING and self.field not in _NUMERIC:
            raise ValueError(f"{where}: {self.field.value} is not a number; use eq, ne, in or not_in")
        if self.field in _NUMERIC and (isinstance(self.value, bool) or not isinstance(self.value, int | float)):
            raise ValueError(f"{where}: expected a number, got {self.value!r}")
        if self.field is FilterField.IN_ZONE and not isinstance(self.value, bool):
            raise ValueError(f"{where}: expected true or false, got {self.value!r}")
        return self

    def test(self, actual: Any) -> bool:
        v = self.value
        if self.op is Op.EQ:
            return bool(actual == v)
        if self.op is Op.NE:
            return bool(actual != v)
        if self.op is Op.IN:
            return actual in v
        if self.op is Op.NOT_IN:
            return actual not in v
        if actual is None:
            return False
        return bool({Op.LT: actual < v, Op.LE: actual <= v, Op.GT: actual > v, Op.GE: actual >= v}[self.op])


class SortKey(enum.StrEnum):
    DISTANCE = "distance"
    STOCK_BALANCE = "stock_balance"
    """The location's total available-to-promise of the order's SKUs (higher first by default)."""
    COST = "cost"
    PRIORITY = "priority"


class Sort(_Strict):
    key: SortKey
    desc: bool = False


class Unfilled(enum.StrEnum):
    NEXT_RULE = "next_rule"
    QUEUE = "queue"
    """Keep the order and try again after `retry_minutes`; cancel after `cancel_after_days`."""
    UNFULFILLABLE = "unfulfillable"


Name = Annotated[str, Field(min_length=1, max_length=100)]


class Rule(_Strict):
    name: Name
    filters: tuple[Filter, ...] = ()
    sorts: tuple[Sort, ...] = (Sort(key=SortKey.DISTANCE),)
    assignment: Literal["single", "partial"] = "single"
    max_locations: Annotated[int, Field(ge=1, le=10)] = 3
    """Partial: split across at most this many locations."""
    unfilled: Unfilled = Unfilled.NEXT_RULE
    retry_minutes: Annotated[float, Field(gt=0, le=7 * 24 * 60)] = 30
    cancel_after_days: Annotated[float, Field(gt=0, le=365)] = 3
    candidates: Annotated[int, Field(ge=1, le=1000)] = 64
    """How many nearest locations the spatial index proposes (more when they lack stock)."""


class Group(_Strict):
    name: Name
    channels: Annotated[tuple[str, ...], Field(min_length=1)] = ("*",)
    """Channels this group routes ('*': any channel no earlier group names)."""
    rules: Annotated[tuple[Rule, ...], Field(min_length=1)]


class Check(_Strict):
    """Before routing: `hold` an order for review when all conditions hold (e.g. amount over a limit),
    or `merge` it with an order of the same customer and address placed within `window_minutes`
    (routed to the same location when that location can fill it, so they go out together)."""

    name: Name
    action: Literal["hold", "approve", "merge"] = "hold"
    window_minutes: Annotated[float, Field(gt=0, le=7 * 24 * 60)] = 30
    amount_over: float | None = None
    channels: tuple[str, ...] = ()
    """Only orders of these channels (empty: all)."""
    new_customer: bool | None = None
    """True: only customers with no earlier order."""


class RuleSet(_Strict):
    checks: tuple[Check, ...] = ()
    groups: Annotated[tuple[Group, ...], Field(min_length=1)]
    accept_minutes: Annotated[float, Field(gt=0, le=7 * 24 * 60)] = 30
    """A store must accept an assignment within this, or the reservation expires and the order moves on."""

    @model_validator(mode="after")
    def _unique(self) -> RuleSet:
        seen: set[str] = set()
        for g in self.groups:
            names = [r.name for r in g.rules]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"group {g.name!r}: rule names must be unique, {', '.join(dup)} repeated")
            if g.name in seen:
                raise ValueError(f"group names must be unique, {g.name!r} repeated")
            seen.add(g.name)
        return self

    def group_for(self, channel: str) -> Group:
        for g in self.groups:
            if channel in g.channels:
                return g
        for g in self.groups:
            if "*" in g.channels:
                return g
        raise RuleError(f"no routing group for channel {channel!r} and no '*' group")


def parse_rules(spec: Any) -> RuleSet:
    """Validate a rule set (a JSON-like dict); raise `RuleError` naming where and what."""
    try:
        return RuleSet.model_validate(spec)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(x) for x in err["loc"]) or "(rule set)"
        raise RuleError(f"rule set {where}: {err['msg'].removeprefix('Value error, ')}") from None


DEFAULT_RULES = RuleSet(
    groups=(
        Group(
            name="default",
            rules=(
                Rule(name="nearest store or warehouse with all of it", assignment="single"),
                Rule(name="split across the fewest locations", assignment="partial", unfilled=Unfilled.UNFULFILLABLE),
            ),
        ),
    ),
)
"""In force until a rule set is saved: the nearest single location, else the fewest split."""
