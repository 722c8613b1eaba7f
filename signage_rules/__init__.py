"""Signage rules → a concrete timeline: the one expansion the cloud, its console and the box share.

Why a package of its own: the cloud expands campaigns into per-screen timelines, the console shows
the same expansion as a calendar, and the box must be able to extend its horizon from the same
rules when it has been offline for days. One function, imported by all three, is the only way the
three can never disagree. It cannot live in `cloud/` or `edge/` (they never import each other), and
it is not part of the bus contract (`broker/` holds what goes on the wire, not how a schedule is
computed), so it is a neutral package like `gs1/`: standard library only (`zoneinfo`), imports
nothing of ours, and the box and the cloud both depend on it. The cloud sends the rules that
concern a screen together with the timeline it expanded from them; the box expands the rules
itself, checks that it gets the same timeline (agreement is proven at run time, not assumed), and
keeps expanding forward while it is offline.

Semantics (all of them covered by `tests/signage/test_rules.py`):

- A campaign targets a screen when every non-empty criterion matches: `regions` holds the screen's
  region, `stores` its store, and `tags` share at least one tag with the screen.
- `start_date`/`end_date` are store-local calendar dates, inclusive; a slot belongs to the day it
  starts on (a 22:00-02:00 slot on the last day runs until 02:00 the next morning).
- A daypart is weekdays (0 = Monday) + local start/end wall times; `end <= start` crosses midnight.
  Wall times are converted with `zoneinfo` per day, so on a DST day a 08:00-20:00 slot lasts 11 or
  13 hours, an "all day" slot 23 or 25 hours. A wall time inside the spring-forward gap is read with
  the offset before the jump (02:30 in Berlin becomes 03:30 CEST), so a slot lying wholly inside the
  gap does not play that day; in the autumn overlap a start takes the first occurrence of the wall
  time and an end the second.
- Layers: an active `override` campaign beats everything; otherwise the active `normal` campaigns
  of the highest priority share the screen (their items interleave round-robin); otherwise the
  default playlist plays. `interrupt` campaigns take `sov_s` seconds per hour of their playlist, as
  evenly spaced spots anchored to UTC hours, over normal and default content (never over an
  override); `validate` refuses a share of voice that whole spots cannot honour within ±5 %.
- Every run of one layer restarts its playlist at local midnight and at each change of what is
  active, so any window of the expansion is the same whatever window it was computed in.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "SOV_TOLERANCE",
    "Campaign",
    "Daypart",
    "Item",
    "Layer",
    "Plan",
    "Rules",
    "RulesError",
    "Run",
    "Screen",
    "Slot",
    "Spot",
    "Transition",
    "active_intervals",
    "always_on",
    "current",
    "expand",
    "expand_many",
    "plan",
    "plan_many",
    "targeted",
    "targets",
    "timeline_hash",
    "validate",
]

SOV_TOLERANCE = 0.05
"""Share of voice is honoured within ±5 % per full hour of an interrupt campaign's activity."""
_HOUR = 3600.0
TRANSITIONS = ("cut", "fade")


class RulesError(ValueError):
    """Rules that cannot be expanded as asked; the message names the campaign and the reason."""


class Layer(enum.StrEnum):
    OVERRIDE = "override"
    NORMAL = "normal"
    INTERRUPT = "interrupt"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Transition:
    """How an item comes on screen (the screen renders it; timing is the item's own start)."""

    kind: str
    """'cut' or 'fade'."""
    ms: int = 0


@dataclass(frozen=True, slots=True)
class Item:
    media: str
    """sha256 of the media file."""
    duration_s: float
    """How long it shows (a video's own length)."""
    transition: Transition | None = None
    """None: the screen's own way (a cut)."""

    def text(self) -> str:
        """The item as the digests write it; an item without a transition reads as it always did,
        so plans without transitions keep their hashes."""
        base = f"{self.media}:{float(self.duration_s)!r}"
        return base if self.transition is None else f"{base}:{self.transition.kind}/{self.transition.ms}"


@dataclass(frozen=True, slots=True)
class Daypart:
    weekdays: frozenset[int]
    """0 = Monday … 6 = Sunday: the days a slot *starts* on."""
    start: time
    end: time
    """`end <= start`: the slot ends on the next day (crosses midnight); equal: 24 hours."""


@dataclass(frozen=True, slots=True)
class Campaign:
    id: str
    layer: Layer
    items: tuple[Item, ...]
    priority: int = 0
    start_date: date | None = None
    end_date: date | None = None
    dayparts: tuple[Daypart, ...] = ()
    """Empty: all day, every day."""
    regions: frozenset[str] = frozenset()
    stores: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    sov_s: int = 0
    """Interrupts only: seconds per hour."""

    @property
    def spot_s(self) -> float:
        return sum(i.duration_s for i in self.items)


@dataclass(frozen=True, slots=True)
class Screen:
    node: str
    store: str
    region: str
    timezone: str
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Rules:
    campaigns: tuple[Campaign, ...] = ()
    default: tuple[Item, ...] = ()


@dataclass(frozen=True, slots=True)
class Slot:
    start: datetime
    """UTC."""
    end: datetime
    media: str
    layer: Layer
    campaign: str | None
    """None for the default playlist."""
    local_start: datetime = field(compare=False)
    """The same instant as `start`, in the store's zone (for people and the calendar)."""
    transition: Transition | None = field(default=None, compare=False)
    """How the screen brings this slot's media on (its item's transition)."""


# -- checks ---------------------------------------------------------------------------------------


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise RulesError(f"time zone {name!r} is not an IANA zone name (e.g. 'Europe/Berlin')") from None


def validate(campaign: Campaign) -> Campaign:
    """`campaign` if it can be expanded as it says, else `RulesError` naming what is wrong."""
    what = f"campaign {campaign.id!r}"
    if not campaign.items:
        raise RulesError(f"{what} has no items: give it a playlist with at least one item")
    for item in campaign.items:
        if not item.duration_s > 0:
            raise RulesError(f"{what}: item {item.media[:12]}… lasts {item.duration_s} s, expected more than 0")
        t = item.transition
        if t is not None and (t.kind not in TRANSITIONS or not 0 <= t.ms < item.duration_s * 1000 or (t.kind == "cut" and t.ms)):
            raise RulesError(f"{what}: item {item.media[:12]}… has transition {t.kind} {t.ms} ms, expected one of "
                             f"{', '.join(TRANSITIONS)} shorter than the item (a cut: 0 ms)")
    if campaign.start_date and campaign.end_date and campaign.end_date < campaign.start_date:
        raise RulesError(f"{what} ends ({campaign.end_date}) before it starts ({campaign.start_date})")
    for dp in campaign.dayparts:
        if not dp.weekdays or not dp.weekdays <= set(range(7)):
            raise RulesError(f"{what}: a daypart's weekdays must be 0 (Monday) to 6 (Sunday), got {sorted(dp.weekdays)}")
    if campaign.layer is Layer.INTERRUPT:
        spot = campaign.spot_s
        if not 0 < campaign.sov_s <= _HOUR / 2:
            raise RulesError(f"{what}: share of voice is {campaign.sov_s} s per hour, expected 1 to 1800")
        spots = max(1, round(campaign.sov_s / spot))
        if abs(spots * spot - campaign.sov_s) > SOV_TOLERANCE * campaign.sov_s:
            near = sorted({max(1, int(campaign.sov_s // spot)) * spot, (int(campaign.sov_s // spot) + 1) * spot})
            raise RulesError(
                f"{what}: {campaign.sov_s} s per hour is not a whole number of {spot:g} s spots within ±5 %: "
                f"use {' or '.join(f'{n:g}' for n in near)} s"
            )
    elif campaign.sov_s:
        raise RulesError(f"{what}: share of voice applies to interrupt campaigns only (this one is {campaign.layer})")
    if campaign.layer is Layer.DEFAULT:
        raise RulesError(f"{what}: 'default' is the default playlist, not a campaign layer")
    return campaign


def targets(campaign: Campaign, screen: Screen) -> bool:
    return (
        (not campaign.regions or screen.region in campaign.regions)
        and (not campaign.stores or screen.store in campaign.stores)
        and (not campaign.tags or not campaign.tags.isdisjoint(screen.tags))
    )


def always_on(campaign: Campaign) -> bool:
    """Plays whatever the date and time: the only campaigns a box with an untrusted clock plays."""
    return not campaign.dayparts and campaign.start_date is None and campaign.end_date is None and (
        campaign.layer is not Layer.INTERRUPT
    )


# -- time -----------------------------------------------------------------------------------------


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise RulesError(f"{name} {value.isoformat()} has no time zone: give an aware instant (e.g. …+00:00)")
    return value.astimezone(UTC)


def _local(d: date, t: time, zone: ZoneInfo, *, end: bool) -> datetime:
    # fold=1 on an end: in the autumn overlap the slot runs to the second occurrence of the wall time.
    return datetime.combine(d, t, tzinfo=zone).replace(fold=1 if end else 0).astimezone(UTC)


def active_intervals(campaign: Campaign, zone: ZoneInfo, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """The UTC intervals in which `campaign` is active, overlapping [start, end), merged and clipped
    to local midnights only where the rules say so (not to the window)."""
    first = start.astimezone(zone).date() - timedelta(days=1)
    last = end.astimezone(zone).date()
    out: list[tuple[datetime, datetime]] = []
    d = first
    while d <= last:
        if (campaign.start_date is None or d >= campaign.start_date) and (
            campaign.end_date is None or d <= campaign.end_date
        ):
            if not campaign.dayparts:
                out.append((_local(d, time(0), zone, end=False), _local(d + timedelta(days=1), time(0), zone, end=False)))
            for dp in campaign.dayparts:
                if d.weekday() not in dp.weekdays:
                    continue
                s = _local(d, dp.start, zone, end=False)
                e = _local(d + timedelta(days=1) if dp.end <= dp.start else d, dp.end, zone, end=True)
                if e > s:
                    out.append((s, e))
        d += timedelta(days=1)
    out.sort()
    merged: list[tuple[datetime, datetime]] = []
    for s, e in out:
        if e <= start or s >= end:
            continue
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def _midnights(zone: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    d = start.astimezone(zone).date()
    out: list[datetime] = []
    while True:
        m = _local(d, time(0), zone, end=False)
        if m >= end:
            return out
        if m > start:
            out.append(m)
        d += timedelta(days=1)


# -- expansion ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """A stretch in which one layer holds the screen: its playlist (the winners' items interleaved)
    plays from `start`, in order and round and round, skipping the `holes` (interrupt spots)."""

    start: datetime
    end: datetime
    layer: Layer
    rotation: tuple[tuple[str | None, Item], ...]
    """(campaign id or None for the default playlist, item) in playing order; empty: nothing plays."""
    holes: tuple[tuple[datetime, datetime], ...] = ()
    rotation_text: str = field(default="", compare=False, repr=False)
    """`rotation` as the digest writes it (computed once per playlist mix, not once per run)."""


@dataclass(frozen=True, slots=True)
class Spot:
    start: datetime
    end: datetime
    campaign: str
    items: tuple[Item, ...]


@dataclass(frozen=True, slots=True)
class Plan:
    """A screen's timeline in compact form: every slot follows from it by arithmetic (`slots`).
    The cloud computes, hashes and sends plans; the box and the console materialise the slots of
    the window they need."""

    timezone: str
    runs: tuple[Run, ...]
    spots: tuple[Spot, ...]

    def slots(self, start: datetime, end: datetime, limit: int | None = None) -> tuple[Slot, ...]:
        """The slots overlapping [start, end), in order (at most `limit`)."""
        zone = _zone(self.timezone)
        out: list[Slot] = []
        spots = iter(self.spots)
        spot = next(spots, None)
        cap = limit if limit is not None else 1 << 62
        for run in self.runs:
            if run.end <= start:
                continue
            if run.start >= end or len(out) >= cap:
                break
            # Spots before this run's slots (and inside it) are interleaved in time order.
            for slot in _run_slots(run, start, end, zone):
                while spot is not None and spot.start <= slot.start:
                    if spot.end > start and spot.start < end:
                        out.extend(_spot_slots(spot, zone))
                    spot = next(spots, None)
                out.append(slot)
                if len(out) >= cap:
                    break
        while spot is not None and spot.start < end and len(out) < cap:
            if spot.end > start:
                out.extend(_spot_slots(spot, zone))
            spot = next(spots, None)
        return tuple(out[:cap])

    def digest(self) -> str:
        """A short, stable hash of the whole plan (what the box compares with the cloud's)."""
        parts = [self.timezone]
        for r in self.runs:
            parts.append(f"R{r.start.timestamp()!r}|{r.end.timestamp()!r}|{r.layer.value}")
            parts.append(r.rotation_text or _rotation_text(r.rotation))
            parts.extend(f"H{a.timestamp()!r}|{b.timestamp()!r}" for a, b in r.holes)
        parts.extend(f"S{sp.start.timestamp()!r}|{sp.end.timestamp()!r}|{sp.campaign}|"
                     + ";".join(it.text() for it in sp.items) for sp in self.spots)
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _rotation_text(rotation: tuple[tuple[str | None, Item], ...]) -> str:
    return "\n".join(f"{cid}:{it.text()}" for cid, it in rotation)


def _spot_slots(spot: Spot, zone: ZoneInfo) -> list[Slot]:
    out = []
    t = spot.start
    for item in spot.items:
        e = min(t + timedelta(seconds=item.duration_s), spot.end)
        out.append(Slot(t, e, item.media, Layer.INTERRUPT, spot.campaign, t.astimezone(zone), item.transition))
        t = e
    return out


_US = timedelta(microseconds=1)


def _run_slots(run: Run, start: datetime, end: datetime, zone: ZoneInfo) -> Iterable[Slot]:
    """The slots of `run` overlapping [start, end). The walk is in whole microseconds from the run's
    start (exact, so any window gives the same instants), skips whole playlist cycles that end
    before the window, and only the slots in the window become objects."""
    if not run.rotation:
        return
    base = run.start
    stop_all = (run.end - base) // _US
    lo, hi = (start - base) // _US, (end - base) // _US
    holes = [((a - base) // _US, (b - base) // _US) for a, b in run.holes]
    durations = [round(it.duration_s * 1_000_000) for _, it in run.rotation]
    n = len(durations)
    cycle = sum(durations)
    t = 0
    k = 0
    h = 0
    while t < stop_all and t < hi:
        while h < len(holes) and holes[h][1] <= t:
            h += 1
        if h < len(holes) and holes[h][0] <= t:
            t = holes[h][1]
            continue
        stop = min(stop_all, holes[h][0]) if h < len(holes) else stop_all
        # Whole cycles before the window (and before the next hole) change nothing: skip them.
        ahead = min(lo, stop) - t
        if ahead > cycle:
            skip = ahead // cycle
            t += skip * cycle
            k += skip * n
            continue
        e = min(stop, t + durations[k % n])
        if e > lo:
            cid, item = run.rotation[k % n]
            a = base + t * _US
            yield Slot(a, base + e * _US, item.media, run.layer, cid, a.astimezone(zone), item.transition)
        k += 1
        t = e


def _spot_times(
    campaign: Campaign, active: Sequence[tuple[datetime, datetime]], start: datetime, end: datetime
) -> list[tuple[datetime, datetime]]:
    """Evenly spaced spots of an interrupt campaign: `n` per UTC hour at (i + ½)·3600/n s past
    the hour, kept where the campaign is active for the whole spot."""
    spot = campaign.spot_s
    n = max(1, round(campaign.sov_s / spot))
    period = _HOUR / n
    out: list[tuple[datetime, datetime]] = []
    for s, e in active:
        hour = max(s, start - timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
        while hour < min(e, end + timedelta(hours=1)):
            for i in range(n):
                a = hour + timedelta(seconds=(i + 0.5) * period - spot / 2)
                b = a + timedelta(seconds=spot)
                if a >= s and b <= e and b > start and a < end:
                    out.append((a, b))
            hour += timedelta(hours=1)
    return out


_Actives = dict[str, list[tuple[datetime, datetime]]]


@dataclass
class _Cache:
    """What `plan_many` computes once per zone and shares between the screens' plans."""

    actives: _Actives = field(default_factory=dict)
    spot_times: dict[str, list[tuple[datetime, datetime]]] = field(default_factory=dict)
    placed: dict[tuple[Any, ...], list[tuple[datetime, datetime, Campaign]]] = field(default_factory=dict)
    rotations: dict[tuple[str | None, ...], tuple[tuple[tuple[str | None, Item], ...], str]] = field(default_factory=dict)


def _spot_order(x: tuple[datetime, int, str, datetime, Campaign]) -> tuple[datetime, int, str]:
    return x[0], x[1], x[2]


def plan(
    rules: Rules, screen: Screen, start: datetime, end: datetime, *, clock_trusted: bool = True,
    _cache: _Cache | None = None,
) -> Plan:
    """The compact timeline of `screen` from `start` to `end` (UTC, aware): runs and spots
    overlapping the window, whole, so any window gives the same runs where windows overlap.
    Pure: same input, same output, anywhere.

    `clock_trusted=False` (a box whose clock never synced): only always-on campaigns and the
    default playlist, because no date or time of day can be told."""
    start, end = _aware(start, "start"), _aware(end, "end")
    zone = _zone(screen.timezone)
    if end <= start:
        return Plan(screen.timezone, (), ())
    mine = [c for c in rules.campaigns if targets(c, screen) and (clock_trusted or always_on(c))]
    # Padded by a day each side so that runs and spots that straddle the window are whole.
    lo, hi = start - timedelta(days=1), end + timedelta(days=1)
    actives: _Actives = {}
    cache = _cache or _Cache()
    for c in mine:
        got = cache.actives.get(c.id)
        if got is None:
            got = cache.actives[c.id] = active_intervals(c, zone, lo, hi)
        actives[c.id] = got
    base = [c for c in mine if c.layer is not Layer.INTERRUPT]

    # A sweep over the boundaries: which base campaigns are active between two of them.
    events: list[tuple[datetime, int, int]] = []
    for n, c in enumerate(base):
        for s, e in actives[c.id]:
            if e > lo and s < hi:
                events.append((max(s, lo), 1, n))
                events.append((min(e, hi), -1, n))
    midnights = _midnights(zone, lo, hi)
    cuts = sorted({lo, hi, *midnights, *(t for t, _, _ in events)})
    events.sort()  # at one instant an end (-1) comes before a start (+1)
    live: set[int] = set()
    ei = 0
    midnight_set = set(midnights)
    runs_raw: list[tuple[datetime, datetime, Layer, tuple[Campaign, ...]]] = []
    for a, b in itertools.pairwise(cuts):
        while ei < len(events) and events[ei][0] <= a:
            _, kind, n = events[ei]
            if kind > 0:
                live.add(n)
            else:
                live.discard(n)
            ei += 1
        cands = [base[n] for n in live]
        over = [c for c in cands if c.layer is Layer.OVERRIDE]
        pool, layer = (over, Layer.OVERRIDE) if over else (cands, Layer.NORMAL)
        if pool:
            top = max(c.priority for c in pool)
            winners = tuple(sorted((c for c in pool if c.priority == top), key=lambda c: c.id))
        else:
            winners, layer = (), Layer.DEFAULT
        if runs_raw and runs_raw[-1][1] == a and runs_raw[-1][2] is layer and runs_raw[-1][3] == winners \
                and a not in midnight_set:
            runs_raw[-1] = (runs_raw[-1][0], b, layer, winners)
        else:
            runs_raw.append((a, b, layer, winners))

    # Interrupt spots, placed over anything but an override; two campaigns' spots never overlap
    # (the later one waits for the earlier to end). Only spots near the window matter (a chain of
    # waiting spots is minutes long, not hours).
    slo, shi = start - timedelta(hours=1), end + timedelta(hours=1)
    overrides = [(a, b) for a, b, layer, _ in runs_raw if layer is Layer.OVERRIDE]
    interrupts = [c for c in mine if c.layer is Layer.INTERRUPT]
    # Screens that differ only in their normal campaigns share the placement of their spots.
    pkey = ("placed", tuple(c.id for c in interrupts), tuple(overrides))
    placed = cache.placed.get(pkey, [])
    if pkey not in cache.placed:
        cands_spots: list[tuple[datetime, int, str, datetime, Campaign]] = []
        for c in interrupts:
            times = cache.spot_times.get(c.id)
            if times is None:
                times = cache.spot_times[c.id] = _spot_times(c, actives[c.id], slo, shi)
            cands_spots.extend((a, -c.priority, c.id, b, c) for a, b in times)
        cands_spots.sort(key=_spot_order)
        oi = 0
        for a, _, _, b, c in cands_spots:
            if placed and a < placed[-1][1]:
                shift = placed[-1][1] - a
                a, b = a + shift, b + shift
            # Both lists are in time order: one pointer walks the overrides.
            while oi < len(overrides) and overrides[oi][1] <= a:
                oi += 1
            if oi < len(overrides) and overrides[oi][0] < b:
                continue
            placed.append((a, b, c))
        cache.placed[pkey] = placed

    runs: list[Run] = []
    starts = [p[0] for p in placed]
    rotations = cache.rotations
    for a, b, layer, winners in runs_raw:
        if b <= start or a >= end:
            continue
        holes: list[tuple[datetime, datetime]] = []
        if layer is not Layer.OVERRIDE:
            i, j = bisect.bisect_left(starts, a), bisect.bisect_left(starts, b)
            if i > 0 and placed[i - 1][1] > a:
                i -= 1  # a spot that started in the previous run and reaches into this one
            holes = [(s, e) for s, e, _ in placed[i:j]]
        # Campaign ids name their items within one set of rules (the cache lives for one call of
        # plan_many, or one plan); None stands for the default playlist.
        ids: tuple[str | None, ...] = tuple(c.id for c in winners) if winners else (None,)
        cached = rotations.get(ids)
        if cached is None:
            if winners:
                longest = max(len(c.items) for c in winners)
                # Round-robin over the campaigns, each through its own items: A1 B1 A2 B2 A3 B1 …
                rot: tuple[tuple[str | None, Item], ...] = tuple(
                    (c.id, c.items[k % len(c.items)]) for k in range(longest) for c in winners)
            else:
                rot = tuple((None, it) for it in rules.default)
            cached = rotations[ids] = (rot, _rotation_text(rot))
        runs.append(Run(a, b, layer, cached[0], tuple(holes), cached[1]))
    spots = tuple(Spot(a, b, c.id, c.items) for a, b, c in placed if b > start and a < end)
    return Plan(screen.timezone, tuple(runs), spots)


def expand(rules: Rules, screen: Screen, start: datetime, end: datetime, *, clock_trusted: bool = True) -> tuple[Slot, ...]:
    """The slots `screen` plays from `start` to `end` (UTC, aware), in order, without gaps when a
    default playlist exists; slots overlapping the window are returned whole (see `plan`)."""
    start, end = _aware(start, "start"), _aware(end, "end")
    return plan(rules, screen, start, end, clock_trusted=clock_trusted).slots(start, end)


def targeted(rules: Rules, screens: Iterable[Screen]) -> dict[str, tuple[Campaign, ...]]:
    """node → the campaigns of `rules` that target it (in the rules' order)."""
    # Index the targeting: most campaigns name regions or stores, so a screen looks only at those
    # naming its region or store, plus the untargeted ones, instead of at all of them.
    by_region: dict[str, list[Campaign]] = {}
    by_store: dict[str, list[Campaign]] = {}
    anywhere: list[Campaign] = []
    for c in rules.campaigns:
        if c.stores:
            for code in c.stores:
                by_store.setdefault(code, []).append(c)
        elif c.regions:
            for code in c.regions:
                by_region.setdefault(code, []).append(c)
        else:
            anywhere.append(c)
    order = {c.id: n for n, c in enumerate(rules.campaigns)}
    out: dict[str, tuple[Campaign, ...]] = {}
    for screen in screens:
        pool = {c.id: c for c in (*anywhere, *by_region.get(screen.region, ()), *by_store.get(screen.store, ()))}
        out[screen.node] = tuple(sorted((c for c in pool.values() if targets(c, screen)), key=lambda c: order[c.id]))
    return out


def plan_many(
    rules: Rules, screens: Iterable[Screen], start: datetime, end: datetime,
    mine: dict[str, tuple[Campaign, ...]] | None = None,
) -> dict[str, Plan]:
    """`plan` for many screens: node → plan. Screens with the same zone and the same targeted
    campaigns (`mine`, computed by `targeted` if not given) get the same plan, computed once; each
    campaign's active intervals and spots are computed once per zone."""
    screens = list(screens)
    mine = mine if mine is not None else targeted(rules, screens)
    done: dict[tuple[str, tuple[str, ...]], Plan] = {}
    caches: dict[str, _Cache] = {}
    out: dict[str, Plan] = {}
    for screen in screens:
        own = mine[screen.node]
        key = (screen.timezone, tuple(c.id for c in own))
        p = done.get(key)
        if p is None:
            # Targeting is settled: plan the screen's own campaigns.
            p = done[key] = plan(Rules(own, rules.default), screen, start, end,
                                 _cache=caches.setdefault(screen.timezone, _Cache()))
        out[screen.node] = p
    return out


def expand_many(rules: Rules, screens: Iterable[Screen], start: datetime, end: datetime) -> dict[str, tuple[Slot, ...]]:
    """`expand` for many screens (node → slots), through `plan_many`."""
    start, end = _aware(start, "start"), _aware(end, "end")
    plans = plan_many(rules, screens, start, end)
    made: dict[int, tuple[Slot, ...]] = {}
    return {node: made.setdefault(id(p), p.slots(start, end)) for node, p in plans.items()}


def current(slots: Sequence[Slot], now: datetime) -> int:
    """Index of the slot playing at `now` (the last slot starting at or before it), -1 if none:
    a binary search, so the box decides in microseconds whatever the timeline's length."""
    i = bisect.bisect_right(slots, now, key=lambda s: s.start) - 1
    if i >= 0 and slots[i].end > now:
        return i
    return -1


def timeline_hash(slots: Iterable[Slot]) -> str:
    """A short, stable digest of a materialised timeline."""
    h = hashlib.sha256()
    for s in slots:
        row: list[Any] = [s.start.timestamp(), s.end.timestamp(), s.media, s.layer.value, s.campaign]
        if s.transition is not None:
            row.append([s.transition.kind, s.transition.ms])
        h.update(json.dumps(row).encode())
    return h.hexdigest()[:32]
