"""The routing decision, as a pure function of an order, its candidate locations and one rule.

No database here: the service feeds candidates (from the spatial index, with their stock) and
reserves what `plan` chose, under row locks. Keeping the decision pure is what lets the property
tests compare it with brute force, and the dry run replay a rule set over past orders.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, cast

import numpy as np

from cloud.orders.geo import EARTH_KM, Zone
from cloud.orders.rules import FilterField, Rule, SortKey

__all__ = ["Candidate", "OrderIn", "Plan", "km_from", "km_to", "plan", "round_km"]

COMBINATION_POOL = 24
"""Partial assignment looks for the fewest locations among this many best-sorted candidates."""


@dataclass(frozen=True)
class OrderIn:
    id: int
    channel: str
    fulfilment: str
    lines: tuple[tuple[str, int], ...]
    """(sku, qty), one per SKU."""
    lat: float | None = None
    lon: float | None = None
    pickup_location: int | None = None
    excluded: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Candidate:
    id: int
    code: str
    kind: str
    region: str | None
    lat: float
    lon: float
    atp: Mapping[str, int]
    """Available to promise per SKU of the order (on hand - reserved - safety, never below 0)."""
    zone: Zone | None = None
    capacity_left: int | None = None
    priority: int = 0
    cost: float = 0.0
    active: bool = True


_CHOSEN = "chosen"
_SHORT = "short"
"""Markers in a plan's raw rows (a reason is otherwise the `dropped` text): the shortage text is
only formatted for the rows an explanation shows."""

EXPLAIN_MAX = 25
"""Candidates kept in a decision's explanation: the chosen ones and the nearest others; the rest are
counted by reason (an order that searched a thousand locations does not store a thousand rows)."""


@dataclass
class Plan:
    rule: str
    allocation: dict[int, list[tuple[str, int]]] = field(default_factory=dict)
    """location id → [(sku, qty)]; empty when the rule could not fill the order."""
    note: str = ""
    order: OrderIn | None = None
    rows: list[list[Any]] = field(default_factory=list)
    """Per candidate, in the order given: [candidate, distance_km, why dropped | _CHOSEN | _SHORT]."""

    @property
    def filled(self) -> bool:
        return bool(self.allocation)

    @property
    def considered(self) -> int:
        return len(self.rows)

    @property
    def candidates(self) -> list[dict[str, Any]]:
        """Each candidate: code, distance_km, stock, and `dropped` (why) or `chosen`."""
        return self._rows(self.rows)

    def _rows(self, rows: list[list[Any]]) -> list[dict[str, Any]]:
        """`rows` as the explanation shows them (in one loop: a call per row cost more than its dict)."""
        lines = self.order.lines if self.order is not None else ()
        skus = [s for s, _ in lines]
        out: list[dict[str, Any]] = []
        for c, dist, why in rows:
            atp = c.atp
            row: dict[str, Any] = {"id": c.id, "code": c.code, "kind": c.kind, "lat": c.lat, "lon": c.lon,
                                   "distance_km": dist,
                                   "stock": {s: atp.get(s, 0) for s in skus} if atp else dict.fromkeys(skus, 0)}
            if why is _CHOSEN:
                row["chosen"] = True
            elif why is _SHORT:
                row["dropped"] = _shortage(lines, c)
            else:
                row["dropped"] = why
            out.append(row)
        return out

    def shown(self) -> list[dict[str, Any]]:
        """What an explanation keeps of the candidates: all of them up to `EXPLAIN_MAX`, else the
        chosen and the nearest others, the rest counted by the reason they were dropped (the same
        list as ranking every materialized row: only the kept ones are built)."""
        rows = self.rows
        if len(rows) <= EXPLAIN_MAX:
            return self.candidates
        # Ranked by (not chosen, distance or 0), stably: the chosen, then the others, each by distance
        # (a key tuple per row cost more than the rest of ranking).
        o = self.order
        # (Distances are None only for an order without coordinates, as `_distances` gives them.)
        key = _DISTANCE if o is not None and o.lat is not None and o.lon is not None else _distance_or_0
        if self.allocation:
            chosen = [r for r in rows if r[2] is _CHOSEN]
            others = [r for r in rows if r[2] is not _CHOSEN]
            chosen.sort(key=key)
            others.sort(key=key)
            ranked = chosen + others
        else:  # nothing chosen
            ranked = sorted(rows, key=key)
        kept, rest = ranked[:EXPLAIN_MAX], ranked[EXPLAIN_MAX:]
        # Counted per distinct `why` first (most rows share a handful), then per reason, in the order
        # each reason first comes in `rest` (ties of the summary's sort keep that order).
        whys: dict[Any, int] = {}
        for r in rest:
            why = r[2]
            whys[why] = whys.get(why, 0) + 1
        reasons: dict[str, int] = {}
        for why, n in whys.items():
            reason = "not enough stock" if why is _SHORT else "" if why is _CHOSEN else str(why).split(":")[0]
            reasons[reason] = reasons.get(reason, 0) + n
        summary = "; ".join(f"{n} x {r}" for r, n in sorted(reasons.items(), key=lambda x: -x[1]))
        out = self._rows(kept)
        out.append({"code": f"(+{len(rest)} more)", "distance_km": None, "stock": {}, "dropped": summary})
        return out


_DISTANCE = itemgetter(1)


def _distance_or_0(r: list[Any]) -> float:
    return r[1] or 0.0


def _distances(order: OrderIn, candidates: Sequence[Candidate]) -> list[float | None]:
    """`great_circle_km` from the order to each candidate, rounded to metres, in one numpy pass."""
    if order.lat is None or order.lon is None:
        return [None] * len(candidates)
    return cast(list[float | None], km_to(order.lat, order.lon, candidates))


def km_to(lat0: float, lon0: float, candidates: Sequence[Candidate]) -> list[float]:
    """`_distances` from (`lat0`, `lon0`)."""
    if not candidates:
        return []
    return km_from(lat0, lon0, np.array([c.lat for c in candidates]), np.array([c.lon for c in candidates]))


def km_from(lat0: float, lon0: float, lat: np.ndarray[Any, Any], lon: np.ndarray[Any, Any]) -> list[float]:
    """`km_to` the points at `lat`, `lon` (arrays)."""
    p1, p2 = np.radians(lat0), np.radians(lat)
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon - lon0) / 2) ** 2
    km = 2 * EARTH_KM * np.arcsin(np.minimum(1.0, np.sqrt(h)))
    return round_km(km)


_ROUND_ONE_BY_ONE = 12
"""Fewer distances than this are rounded by `round` one by one (numpy's calls cost more)."""


def round_km(km: np.ndarray[Any, Any]) -> list[float]:
    """`round(d, 3)` of each distance, as Python floats.

    In numpy: the metres to the nearest integer, over 1000 (an exact integer over 1000 is the
    double nearest that decimal, as `round` gives it). Only the product by 1000 is inexact, and
    only where it lies near a half metre could that move the result: those are rounded by `round`
    (one a call in a million or so). `round` on each cost ~0.3 us, a third of a pass's distances."""
    if len(km) < _ROUND_ONE_BY_ONE:
        return [round(d, 3) for d in km.tolist()]
    m = km * 1000.0
    out: list[float] = (np.rint(m) / 1000.0).tolist()
    near_half = (np.abs(m - np.floor(m) - 0.5) < 1e-6).nonzero()[0]
    for i in near_half.tolist():
        out[i] = round(float(km[i]), 3)
    return out


def _value(f: FilterField, order: OrderIn, c: Candidate, dist: float | None) -> Any:
    if f is FilterField.AVAILABLE_STOCK:
        return min((c.atp.get(s, 0) for s, _ in order.lines), default=0)
    if f is FilterField.CAPACITY_LEFT:
        return c.capacity_left
    if f is FilterField.REGION:
        return c.region
    if f is FilterField.KIND:
        return c.kind
    if f is FilterField.FULFILMENT:
        return order.fulfilment
    if f is FilterField.DISTANCE_KM:
        return dist
    if f is FilterField.IN_ZONE:
        return order.lat is not None and order.lon is not None and (c.zone is None or c.zone.contains(order.lat, order.lon))
    return c.code


def _by_distance(rule: Rule) -> bool:
    """Whether `rule` sorts by distance alone, nearest first (`_sort_key` is then (d, d, id))."""
    sorts = rule.sorts
    return len(sorts) == 1 and sorts[0].key is SortKey.DISTANCE and not sorts[0].desc


def _sort_key(rule: Rule, order: OrderIn, c: Candidate, dist: float | None) -> tuple[Any, ...]:
    key: list[Any] = []
    for s in rule.sorts:
        if s.key is SortKey.DISTANCE:
            v: float = dist if dist is not None else 0.0
        elif s.key is SortKey.STOCK_BALANCE:
            v = float(sum(c.atp.get(sku, 0) for sku, _ in order.lines))
        elif s.key is SortKey.COST:
            v = c.cost
        else:
            v = float(c.priority)
        key.append(-v if s.desc else v)
    # Ties: nearest, then the lowest id, so that the same input always gives the same plan.
    return (*key, dist if dist is not None else 0.0, c.id)


def _shortage(lines: tuple[tuple[str, int], ...], c: Candidate) -> str | None:
    short = [f"{s} needs {q}, has {c.atp.get(s, 0)}" for s, q in lines if c.atp.get(s, 0) < q]
    return "not enough stock: " + "; ".join(short) if short else None


def plan(order: OrderIn, candidates: Sequence[Candidate], rule: Rule,
         distances: Sequence[float | None] | None = None, special: Sequence[int] | None = None) -> Plan:
    """What `rule` does with `order` given `candidates` (explained whether it fills the order or not;
    the explanation's rows are built when asked for: a pass whose plan is discarded builds none).
    `distances`: each candidate's, as `_distances` gives them (known already). `special`: the
    positions (ascending) of every candidate that has some stock of the order, is inactive or has a
    zone; the others are not looked at one by one."""
    result = Plan(rule=rule.name, order=order)
    eligible: list[tuple[tuple[Any, ...], Candidate, list[Any]]] = []
    single = rule.assignment == "single"
    pickup = order.pickup_location if order.fulfilment == "pickup" else None
    excluded = order.excluded
    bare = _SHORT if single else "none of the order's SKUs available"
    plain = not rule.filters and pickup is None
    nearest_first = _by_distance(rule)
    if distances is None:
        distances = _distances(order, candidates)
    if special is not None and plain and not excluded:
        # Most candidates: nothing of the order there and nothing else to check; their rows built at once.
        rows = result.rows = [[c, dist, bare] for c, dist in zip(candidates, distances, strict=True)]
        todo: Sequence[int] = special
    else:
        rows = result.rows = [[c, dist, None] for c, dist in zip(candidates, distances, strict=True)]
        todo = range(len(rows))
    lines = order.lines
    for n in todo:
        row = rows[n]
        c, dist, _ = row
        reason: str | None
        if plain and c.active and c.zone is None and c.id not in excluded:
            # Nothing but the stock to look at (`_dropped`'s last test, inlined: most candidates looked
            # at are a split order's holders).
            atp = c.atp
            reason = None
            if not atp:
                reason = bare
            elif single:
                for s, q in lines:
                    if atp.get(s, 0) < q:
                        reason = _SHORT
                        break
            else:
                reason = bare
                for s, _ in lines:
                    if atp.get(s, 0) > 0:
                        reason = None
                        break
        else:
            reason = _dropped(order, rule, c, dist, pickup)
        row[2] = reason
        if reason is None:
            if nearest_first:
                d = dist if dist is not None else 0.0
                eligible.append(((d, d, c.id), c, row))
            else:
                eligible.append((_sort_key(rule, order, c, dist), c, row))
    if not eligible:
        result.note = "no eligible location"
        return result
    eligible.sort(key=_KEY)
    if single:
        _, c, row = eligible[0]
        result.allocation = {c.id: list(order.lines)}
        row[2] = _CHOSEN
        for _, _, other in eligible[1:]:
            other[2] = "eligible, but sorted after the chosen one"
        return result
    return _partial(order, eligible, rule, result)


def _dropped(order: OrderIn, rule: Rule, c: Candidate, dist: float | None, pickup: int | None) -> str | None:
    """Why `plan` drops `c` (None: eligible)."""
    if not c.active:
        return "location inactive"
    if c.id in order.excluded:
        return "rejected this order before, or let its reservation expire"
    if pickup is not None and c.id != pickup:
        return "not the pickup store the shopper chose"
    if (order.fulfilment == "delivery" and order.lat is not None and order.lon is not None and c.zone is not None
            and not c.zone.contains(order.lat, order.lon)):
        return "the address is outside its delivery zone"
    for f in rule.filters:
        actual = _value(f.field, order, c, dist)
        if not f.test(actual):
            return f"filter {f.field.value} {f.op.value} {f.value!r} failed ({actual!r})"
    atp = c.atp
    lines = order.lines
    if rule.assignment == "single":
        if not atp or any(atp.get(s, 0) < q for s, q in lines):
            return _SHORT
    elif not atp or not any(atp.get(s, 0) > 0 for s, _ in lines):
        return "none of the order's SKUs available"
    return None


_KEY = itemgetter(0)

VECTOR_MAX_K = 3
"""Combinations of up to this many locations are searched with numpy at once; more, one by one."""


def _first_cover(atp: np.ndarray[Any, Any], need: np.ndarray[Any, Any], k: int) -> tuple[int, ...] | None:
    """The first `k`-combination of rows of `atp` (in `itertools.combinations` order) whose sum
    covers `need`, or None."""
    n = atp.shape[0]
    if k > n:
        return None
    if k > 2:  # (a pair is searched at once, for about what these cost)
        if not bool((np.sort(atp, axis=0)[n - k:].sum(axis=0) >= need).all()):
            return None  # not even the k largest of some column cover it: no k rows do
        # Each column still needed is covered by a row with some of it: k rows holding together
        # fewer of those columns cannot (a split order whose locations each hold one of its SKUs).
        wanted = need > 0
        held = ((atp > 0) & wanted).sum(axis=1)
        if int(np.sort(held)[n - k:].sum()) < int(wanted.sum()):
            return None
    if k > VECTOR_MAX_K:
        return next((combo for combo in itertools.combinations(range(n), k)
                     if bool((atp[list(combo)].sum(axis=0) >= need).all())), None)
    # Column by column below: numpy's reductions over an axis of a few SKUs (`.all(axis=-1)`) cost
    # more than the comparisons themselves.
    cols = atp.T
    if k == 1:
        if not len(need):
            return (0,)
        ok = cols[0] >= need[0]
        for c in range(1, len(need)):
            ok &= cols[c] >= need[c]
        first = int(ok.argmax())
        return (first,) if ok[first] else None
    if k == 2:
        return _first_pair(atp, need, 0)
    # Three: the first row first, a pair search over the rows after it for what it leaves to cover
    # (most triples found start there); then every later first row at once, against every pair of
    # rows after it (the first row with one gives the first triple in combinations order). A pair
    # search per first row cost ~150 us for 24 rows holding none; the whole cube, ~1 ms.
    pair = _first_pair(atp[1:], need - atp[0], 1)
    if pair is not None:
        return (0, *pair)
    if n < 4:
        return None
    pj, pm, after = _pairs(n)
    # First rows 1 … n - 3 x pairs (j < m, in combinations order), where the first row < j:
    fits: np.ndarray[Any, Any] = after.copy()
    left = need - atp[1:n - 2]
    for c, col in enumerate(cols):
        fits &= (col[pj] + col[pm])[None, :] >= left[:, c][:, None]
    some = cast(np.ndarray[Any, Any], fits.any(axis=1))
    first = int(some.argmax())
    if not some[first]:
        return None
    p = int(fits[first].argmax())
    return (first + 1, int(pj[p]), int(pm[p]))


@functools.cache
def _pairs(n: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Every pair of n rows (j < m) in combinations order, and which of them come after each of the
    first rows 1 … n - 3 (j > that row)."""
    j, m = np.triu_indices(n, 1)
    return j, m, j[None, :] > np.arange(1, n - 2)[:, None]


@functools.cache
def _after(n: int) -> np.ndarray[Any, Any]:
    """(j, m) with j < m, as a mask over n x n."""
    return np.triu(np.ones((n, n), dtype=bool), 1)


def _first_pair(atp: np.ndarray[Any, Any], need: np.ndarray[Any, Any], offset: int) -> tuple[int, int] | None:
    """The first pair of rows (j < m, in combinations order) whose sum covers `need`, numbered from `offset`."""
    n = atp.shape[0]
    if n < 2:
        return None
    if not len(need):
        return (offset, offset + 1)
    sums = [np.add.outer(col, col) for col in atp.T]
    ok = sums[0] >= need[0]
    for j in range(1, len(need)):
        ok &= sums[j] >= need[j]
    ok &= _after(n)
    # The first set cell in C order: (j, m) lexicographically, as itertools.combinations goes.
    flat = ok.ravel()
    first = int(flat.argmax())
    if not flat[first]:
        return None
    j, m = divmod(first, n)
    return (offset + j, offset + m)


def _partial(order: OrderIn, eligible: list[tuple[tuple[Any, ...], Candidate, list[Any]]], rule: Rule,
             result: Plan) -> Plan:
    pool = eligible[:COMBINATION_POOL]
    skus = [s for s, _ in order.lines]
    atp = np.array([[c.atp.get(s, 0) for s in skus] for _, c, _ in pool], dtype=np.int64).reshape(len(pool), len(skus))
    need = np.array([q for _, q in order.lines], dtype=np.int64)
    for k in range(1, min(rule.max_locations, len(pool)) + 1):
        found = _first_cover(atp, need, k)
        if found is None:
            continue
        combo = [pool[i] for i in found]
        alloc: dict[int, list[tuple[str, int]]] = {}
        for s, q in order.lines:
            left = q
            for _, c, _ in combo:
                take = min(left, c.atp.get(s, 0))
                if take > 0:
                    alloc.setdefault(c.id, []).append((s, take))
                    left -= take
                if left == 0:
                    break
        result.allocation = alloc
        for _, c, row in eligible:
            row[2] = _CHOSEN if c.id in alloc else "not needed: the order is filled by fewer or better-sorted locations"
        return result
    short = f"together with the others, not enough stock within {rule.max_locations} locations"  # once, not per row
    for _, _, row in eligible:
        row[2] = short
    result.note = f"no combination of at most {rule.max_locations} locations holds the order"
    return result
