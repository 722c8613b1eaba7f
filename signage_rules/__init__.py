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
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "SOV_TOLERANCE",
    "Campaign",
    "Daypart",
    "Item",
    "Layer",
    "Rules",
    "RulesError",
    "Screen",
    "Slot",
    "active_intervals",
    "always_on",
    "current",
    "expand",
    "targets",
    "timeline_hash",
    "validate",
]

SOV_TOLERANCE = 0.05
"""Share of voice is honoured within ±5 % per full hour of an interrupt campaign's activity."""
_HOUR = 3600.0


class RulesError(ValueError):
    """Rules that cannot be expanded as asked; the message names the campaign and the reason."""


class Layer(enum.StrEnum):
    OVERRIDE = "override"
    NORMAL = "normal"
    INTERRUPT = "interrupt"
    DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Item:
    media: str
    """sha256 of the media file."""
    duration_s: float
    """How long it shows (a video's own length)."""


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


def _fill(
    items_by_campaign: Sequence[tuple[str | None, tuple[Item, ...]]],
    layer: Layer,
    start: datetime,
    end: datetime,
    holes: Sequence[tuple[datetime, datetime]],
    zone: ZoneInfo,
    out: list[Slot],
) -> None:
    """Play the interleaved playlists from `start` to `end`, skipping `holes` (interrupt spots):
    the rotation continues after a hole rather than restarting."""
    # Round-robin over campaigns, each through its own items: A1 B1 A2 B2 A3 B1 … (a short
    # playlist wraps around inside the longer one's cycle).
    longest = max(len(i) for _, i in items_by_campaign)
    rotation = [(cid, items[idx % len(items)]) for idx in range(longest) for cid, items in items_by_campaign]
    k = 0
    t = start
    hi = 0
    while t < end:
        while hi < len(holes) and holes[hi][1] <= t:
            hi += 1
        if hi < len(holes) and holes[hi][0] <= t:
            t = holes[hi][1]
            continue
        stop = min(end, holes[hi][0]) if hi < len(holes) else end
        cid, item = rotation[k % len(rotation)]
        k += 1
        e = min(stop, t + timedelta(seconds=item.duration_s))
        out.append(Slot(t, e, item.media, layer, cid, t.astimezone(zone)))
        t = e


def _spots(
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


def expand(rules: Rules, screen: Screen, start: datetime, end: datetime, *, clock_trusted: bool = True) -> tuple[Slot, ...]:
    """The slots `screen` plays from `start` to `end` (UTC, aware), in order, without gaps when a
    default playlist exists. Slots overlapping the window are returned whole, so any window gives
    the same slots where windows overlap. Pure: same input, same output, anywhere.

    `clock_trusted=False` (a box whose clock never synced): only always-on campaigns and the
    default playlist, because no date or time of day can be told."""
    start, end = _aware(start, "start"), _aware(end, "end")
    if end <= start:
        return ()
    zone = _zone(screen.timezone)
    mine = [c for c in rules.campaigns if targets(c, screen) and (clock_trusted or always_on(c))]
    # Padded by a day each side so that runs and spots that straddle the window are whole.
    lo, hi = start - timedelta(days=1), end + timedelta(days=1)
    actives = {c.id: active_intervals(c, zone, lo, hi) for c in mine}
    base = [c for c in mine if c.layer is not Layer.INTERRUPT]
    cuts = {lo, hi, *_midnights(zone, lo, hi)}
    for c in base:
        for s, e in actives[c.id]:
            cuts.update((max(s, lo), min(e, hi)))
    bounds = sorted(cuts)

    # Runs: maximal pieces in which the same set of campaigns holds the screen.
    runs: list[tuple[datetime, datetime, Layer, tuple[Campaign, ...]]] = []
    for a, b in itertools.pairwise(bounds):
        live = [c for c in base if any(s <= a and b <= e for s, e in actives[c.id])]
        over = [c for c in live if c.layer is Layer.OVERRIDE]
        pool, layer = (over, Layer.OVERRIDE) if over else (live, Layer.NORMAL)
        if pool:
            top = max(c.priority for c in pool)
            winners = tuple(sorted((c for c in pool if c.priority == top), key=lambda c: c.id))
        else:
            winners, layer = (), Layer.DEFAULT
        if runs and runs[-1][1] == a and runs[-1][2] is layer and runs[-1][3] == winners and not _is_midnight(a, zone):
            runs[-1] = (runs[-1][0], b, layer, winners)
        else:
            runs.append((a, b, layer, winners))

    # Interrupt spots, placed over anything but an override; two campaigns' spots never overlap
    # (the later one waits for the earlier to end).
    spots: list[tuple[datetime, datetime, Campaign]] = []
    for c in sorted((c for c in mine if c.layer is Layer.INTERRUPT), key=lambda c: (-c.priority, c.id)):
        for a, b in _spots(c, actives[c.id], lo, hi):
            spots.append((a, b, c))
    spots.sort(key=lambda x: (x[0], -x[2].priority, x[2].id))
    placed: list[tuple[datetime, datetime, Campaign]] = []
    for a, b, c in spots:
        if placed and a < placed[-1][1]:
            shift = placed[-1][1] - a
            a, b = a + shift, b + shift
        if _overlaps_override(a, b, runs):
            continue
        placed.append((a, b, c))

    out: list[Slot] = []
    starts = [p[0] for p in placed]
    for a, b, layer, winners in runs:
        i, j = bisect.bisect_left(starts, a), bisect.bisect_left(starts, b)
        holes = [] if layer is Layer.OVERRIDE else [(s, e) for s, e, _ in placed[i:j]]
        # A spot that started in the previous run and reaches into this one.
        if layer is not Layer.OVERRIDE and i > 0 and placed[i - 1][1] > a:
            holes.insert(0, (placed[i - 1][0], placed[i - 1][1]))
        if winners:
            _fill([(c.id, c.items) for c in winners], layer, a, b, holes, zone, out)
        elif rules.default:
            _fill([(None, rules.default)], Layer.DEFAULT, a, b, holes, zone, out)
    for a, b, c in placed:
        t = a
        for item in c.items:
            e = t + timedelta(seconds=item.duration_s)
            out.append(Slot(t, min(e, b), item.media, Layer.INTERRUPT, c.id, t.astimezone(zone)))
            t = e
    out.sort(key=lambda s: s.start)
    return tuple(s for s in out if s.end > start and s.start < end)


def _is_midnight(t: datetime, zone: ZoneInfo) -> bool:
    local = t.astimezone(zone)
    return local.time() == time(0) and _local(local.date(), time(0), zone, end=False) == t


def _overlaps_override(a: datetime, b: datetime, runs: Sequence[tuple[datetime, datetime, Layer, tuple[Campaign, ...]]]) -> bool:
    return any(ra < b and a < rb and layer is Layer.OVERRIDE for ra, rb, layer, _ in runs)


def current(slots: Sequence[Slot], now: datetime) -> int:
    """Index of the slot playing at `now` (the last slot starting at or before it), -1 if none:
    a binary search, so the box decides in microseconds whatever the timeline's length."""
    i = bisect.bisect_right(slots, now, key=lambda s: s.start) - 1
    if i >= 0 and slots[i].end > now:
        return i
    return -1


def timeline_hash(slots: Iterable[Slot]) -> str:
    """A short, stable digest of a timeline (what the box compares with the cloud's)."""
    h = hashlib.sha256()
    for s in slots:
        h.update(json.dumps([s.start.timestamp(), s.end.timestamp(), s.media, s.layer.value, s.campaign]).encode())
    return h.hexdigest()[:32]
