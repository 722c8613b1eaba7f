"""The expansion, table-driven: dayparts across midnight, DST days in two zones next to one without
DST, date-range edges, priority layers and share of voice."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from signage_rules import (
    Campaign,
    Daypart,
    Item,
    Layer,
    Rules,
    RulesError,
    Screen,
    Slot,
    active_intervals,
    current,
    expand,
    timeline_hash,
    validate,
)

A, B, C, D, X = ("a" * 64, "b" * 64, "c" * 64, "d" * 64, "e" * 64)
EVERY_DAY = frozenset(range(7))


def screen(tz: str, *, store: str = "s1", region: str = "east", tags: set[str] | None = None) -> Screen:
    return Screen(node="n1", store=store, region=region, timezone=tz, tags=frozenset(tags or ()))


def u(y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


def local(tz: str, y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(tz)).astimezone(UTC)


def evening(**kw: object) -> Campaign:
    return Campaign("evening", Layer.NORMAL, (Item(A, 30),), dayparts=(Daypart(EVERY_DAY, time(8), time(20)),), **kw)  # type: ignore[arg-type]


# (zone, local day, daypart, expected (start, end) in UTC, expected length in hours)
DAYPARTS = [
    # Berlin spring forward 2026-03-29 02:00 → 03:00: 08:00-20:00 is 12 h of wall time and 12 h real.
    ("Europe/Berlin", date(2026, 3, 29), (time(8), time(20)), (u(2026, 3, 29, 6), u(2026, 3, 29, 18)), 12),
    # All day on the spring-forward day: 23 hours.
    ("Europe/Berlin", date(2026, 3, 29), (time(0), time(0)), (u(2026, 3, 28, 23), u(2026, 3, 29, 22)), 23),
    # Autumn back 2026-10-25: 25 hours; 01:00-04:00 spans the repeated hour → 4 h real.
    ("Europe/Berlin", date(2026, 10, 25), (time(0), time(0)), (u(2026, 10, 24, 22), u(2026, 10, 25, 23)), 25),
    ("Europe/Berlin", date(2026, 10, 25), (time(1), time(4)), (u(2026, 10, 24, 23), u(2026, 10, 25, 3)), 4),
    # Crossing midnight into the spring-forward night: 22:00 Sat → 06:00 Sun is 7 h real.
    ("Europe/Berlin", date(2026, 3, 28), (time(22), time(6)), (u(2026, 3, 28, 21), u(2026, 3, 29, 4)), 7),
    # New York springs forward 2026-03-08 and falls back 2026-11-01.
    ("America/New_York", date(2026, 3, 8), (time(0), time(0)), (u(2026, 3, 8, 5), u(2026, 3, 9, 4)), 23),
    ("America/New_York", date(2026, 11, 1), (time(0), time(0)), (u(2026, 11, 1, 4), u(2026, 11, 2, 5)), 25),
    ("America/New_York", date(2026, 11, 1), (time(19), time(1)), (u(2026, 11, 2, 0), u(2026, 11, 2, 6)), 6),
    # A slot wholly inside the gap (02:00-03:00 on the spring day) does not happen.
    ("America/New_York", date(2026, 3, 8), (time(2), time(3)), None, 0),
    # Shanghai has no DST: the same days are plain 24 h, 08:00 is always 00:00 UTC.
    ("Asia/Shanghai", date(2026, 3, 29), (time(0), time(0)), (u(2026, 3, 28, 16), u(2026, 3, 29, 16)), 24),
    ("Asia/Shanghai", date(2026, 11, 1), (time(8), time(20)), (u(2026, 11, 1, 0), u(2026, 11, 1, 12)), 12),
    ("Asia/Shanghai", date(2026, 11, 1), (time(22), time(2)), (u(2026, 11, 1, 14), u(2026, 11, 1, 18)), 4),
]


@pytest.mark.parametrize(("tz", "day", "part", "expected", "hours"), DAYPARTS)
def test_daypart_is_converted_per_day_in_the_store_zone(tz, day, part, expected, hours) -> None:
    c = Campaign("c", Layer.NORMAL, (Item(A, 10),), start_date=day, end_date=day,
                 dayparts=(Daypart(frozenset({day.weekday()}), *part),))
    got = active_intervals(c, ZoneInfo(tz), u(2026, 1, 1), u(2027, 1, 1))
    if expected is None:
        assert got == []
    else:
        assert got == [expected]
        assert (expected[1] - expected[0]) == timedelta(hours=hours)


def slots_between(rules: Rules, scr: Screen, a: datetime, b: datetime) -> list[Slot]:
    return list(expand(rules, scr, a, b))


@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York", "Asia/Shanghai"])
@pytest.mark.parametrize("day", [date(2026, 3, 8), date(2026, 3, 29), date(2026, 10, 25), date(2026, 11, 1)])
def test_the_timeline_has_no_gap_and_switches_exactly_at_local_boundaries(tz: str, day: date) -> None:
    rules = Rules((evening(),), default=(Item(D, 20),))
    a = datetime.combine(day, time(0), tzinfo=ZoneInfo(tz)).astimezone(UTC)
    b = datetime.combine(day + timedelta(days=1), time(0), tzinfo=ZoneInfo(tz)).astimezone(UTC)
    slots = slots_between(rules, screen(tz), a, b)
    for s1, s2 in itertools.pairwise(slots):
        assert s1.end == s2.start
    assert slots[0].start <= a and slots[-1].end >= b
    on = [s for s in slots if s.campaign == "evening"]
    assert on[0].start == local(tz, day.year, day.month, day.day, 8)
    assert on[-1].end == local(tz, day.year, day.month, day.day, 20)
    assert on[0].local_start.hour == 8
    # Before 08:00 the default plays, and stops exactly at 08:00.
    before = [s for s in slots if s.end <= on[0].start]
    assert before and {s.layer for s in before} == {Layer.DEFAULT}


DATE_EDGES = [
    # (start_date, end_date, instant, plays?)
    (date(2026, 12, 24), date(2026, 12, 31), local("Europe/Berlin", 2026, 12, 24, 8), True),
    (date(2026, 12, 24), date(2026, 12, 31), local("Europe/Berlin", 2026, 12, 24, 7, 59), False),
    (date(2026, 12, 24), date(2026, 12, 31), local("Europe/Berlin", 2026, 12, 31, 19, 59), True),
    (date(2026, 12, 24), date(2026, 12, 31), local("Europe/Berlin", 2027, 1, 1, 8), False),
    # The last day's slot that crosses midnight runs to its end the next morning.
    (date(2026, 12, 24), date(2026, 12, 31), local("Europe/Berlin", 2027, 1, 1, 1, 59), True),
    (date(2026, 12, 24), date(2026, 12, 31), local("Europe/Berlin", 2027, 1, 1, 2), False),
    # ...and the first day's does not start the evening before.
    (date(2026, 12, 24), date(2026, 12, 31), local("Europe/Berlin", 2026, 12, 24, 1), False),
]


@pytest.mark.parametrize(("first", "last", "at", "plays"), DATE_EDGES)
def test_date_range_edges_are_store_local_and_inclusive(first, last, at, plays) -> None:
    c = Campaign("xmas", Layer.NORMAL, (Item(A, 60),), start_date=first, end_date=last,
                 dayparts=(Daypart(EVERY_DAY, time(8), time(20)), Daypart(EVERY_DAY, time(22), time(2))))
    slots = expand(Rules((c,), (Item(D, 60),)), screen("Europe/Berlin"), at - timedelta(hours=1), at + timedelta(hours=1))
    i = current(slots, at)
    assert (slots[i].campaign == "xmas") is plays


def test_override_beats_normal_and_only_the_top_priority_normals_share() -> None:
    tz = "Asia/Shanghai"
    low = Campaign("low", Layer.NORMAL, (Item(A, 10),), priority=1)
    hi1 = Campaign("hi1", Layer.NORMAL, (Item(B, 10),), priority=5)
    hi2 = Campaign("hi2", Layer.NORMAL, (Item(C, 10), Item(C, 10)), priority=5)
    alert = Campaign("alert", Layer.OVERRIDE, (Item(X, 10),), dayparts=(Daypart(EVERY_DAY, time(12), time(12, 5)),))
    rules = Rules((low, hi1, hi2, alert), (Item(D, 10),))
    slots = expand(rules, screen(tz), local(tz, 2026, 6, 1, 11, 59), local(tz, 2026, 6, 1, 12, 6))
    before = [s.campaign for s in slots if s.end <= local(tz, 2026, 6, 1, 12)]
    during = {s.campaign for s in slots if local(tz, 2026, 6, 1, 12) <= s.start < local(tz, 2026, 6, 1, 12, 5)}
    assert set(before) == {"hi1", "hi2"}
    assert "low" not in {s.campaign for s in slots}
    assert during == {"alert"}
    # The override cuts the normal item at once (no waiting for the item to end).
    assert any(s.end == local(tz, 2026, 6, 1, 12) for s in slots)


@pytest.mark.parametrize(("sov", "spot", "tz"), [(60, 15, "Europe/Berlin"), (120, 10, "America/New_York"),
                                                 (45, 15, "Asia/Shanghai"), (300, 30, "Asia/Kolkata")])
def test_share_of_voice_is_honoured_within_five_percent_every_hour(sov: int, spot: int, tz: str) -> None:
    ad = Campaign("ad", Layer.INTERRUPT, (Item(X, spot),), sov_s=sov)
    rules = Rules((Campaign("loop", Layer.NORMAL, (Item(A, 37),)), ad), (Item(D, 20),))
    a = u(2026, 10, 24, 0)
    slots = expand(rules, screen(tz), a, a + timedelta(hours=48))
    for h in range(48):
        ha, hb = a + timedelta(hours=h), a + timedelta(hours=h + 1)
        got = sum((min(s.end, hb) - max(s.start, ha)).total_seconds()
                  for s in slots if s.campaign == "ad" and s.start < hb and s.end > ha)
        assert abs(got - sov) <= 0.05 * sov, (h, got)
    spots = [s.start for s in slots if s.campaign == "ad"]
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(spots)}
    assert gaps == {3600 / round(sov / spot)}  # evenly spread


def test_interrupts_never_play_over_an_override() -> None:
    ad = Campaign("ad", Layer.INTERRUPT, (Item(X, 15),), sov_s=60)
    alert = Campaign("alert", Layer.OVERRIDE, (Item(B, 10),), dayparts=(Daypart(EVERY_DAY, time(10), time(11)),))
    tz = "Asia/Shanghai"
    slots = expand(Rules((ad, alert), (Item(D, 20),)), screen(tz), local(tz, 2026, 6, 1, 9), local(tz, 2026, 6, 1, 12))
    during = {s.campaign for s in slots if local(tz, 2026, 6, 1, 10) <= s.start < local(tz, 2026, 6, 1, 11)}
    assert during == {"alert"}
    assert sum(1 for s in slots if s.campaign == "ad") == 8


def test_targeting_by_region_store_and_tags() -> None:
    c = Campaign("c", Layer.NORMAL, (Item(A, 10),), regions=frozenset({"east"}), tags=frozenset({"window"}))
    rules = Rules((c,), (Item(D, 10),))
    a = u(2026, 6, 1)
    def plays(scr: Screen) -> bool:
        return any(s.campaign == "c" for s in expand(rules, scr, a, a + timedelta(minutes=1)))
    assert plays(screen("Asia/Shanghai", tags={"window", "big"}))
    assert not plays(screen("Asia/Shanghai", tags={"big"}))
    assert not plays(screen("Asia/Shanghai", region="west", tags={"window"}))


def test_any_window_gives_the_same_slots_where_windows_overlap() -> None:
    """What lets the box extend its horizon from the rules and still agree with the cloud."""
    ad = Campaign("ad", Layer.INTERRUPT, (Item(X, 15),), sov_s=60)
    rules = Rules((evening(), ad, Campaign("night", Layer.NORMAL, (Item(B, 7), Item(C, 11)),
                                           dayparts=(Daypart(EVERY_DAY, time(22), time(6)),))), (Item(D, 13),))
    scr = screen("Europe/Berlin")
    t0 = u(2026, 10, 24, 0)
    whole = expand(rules, scr, t0, t0 + timedelta(hours=96))
    part = expand(rules, scr, t0 + timedelta(hours=50, minutes=7), t0 + timedelta(hours=60))
    inner = [s for s in whole if s.end > part[0].start and s.start < part[-1].end]
    assert inner == list(part)
    assert timeline_hash(inner) == timeline_hash(part)


def test_untrusted_clock_plays_only_always_on_items() -> None:
    rules = Rules((evening(priority=1), Campaign("always", Layer.NORMAL, (Item(B, 10),))), (Item(D, 10),))
    a = local("Europe/Berlin", 2026, 6, 1, 12)
    assert {s.campaign for s in expand(rules, screen("Europe/Berlin"), a, a + timedelta(hours=1))} == {"evening"}
    assert {s.campaign for s in expand(rules, screen("Europe/Berlin"), a, a + timedelta(hours=1), clock_trusted=False)} == {"always"}


def test_nothing_scheduled_and_no_default_leaves_an_empty_slot() -> None:
    rules = Rules((evening(),))
    a = local("Europe/Berlin", 2026, 6, 1, 7)
    slots = expand(rules, screen("Europe/Berlin"), a, a + timedelta(hours=2))
    assert slots[0].start == local("Europe/Berlin", 2026, 6, 1, 8)


REFUSED = [
    (Campaign("x", Layer.NORMAL, ()), "campaign 'x' has no items: give it a playlist with at least one item"),
    (Campaign("x", Layer.INTERRUPT, (Item(A, 15),), sov_s=50),
     "campaign 'x': 50 s per hour is not a whole number of 15 s spots within ±5 %: use 45 or 60 s"),
    (Campaign("x", Layer.NORMAL, (Item(A, 15),), sov_s=50), "campaign 'x': share of voice applies to interrupt campaigns only (this one is normal)"),
    (Campaign("x", Layer.NORMAL, (Item(A, 15),), start_date=date(2026, 2, 1), end_date=date(2026, 1, 1)),
     "campaign 'x' ends (2026-01-01) before it starts (2026-02-01)"),
]


@pytest.mark.parametrize(("campaign", "message"), REFUSED)
def test_validate_names_the_problem(campaign: Campaign, message: str) -> None:
    with pytest.raises(RulesError) as err:
        validate(campaign)
    assert str(err.value) == message


def test_naive_instants_are_refused() -> None:
    with pytest.raises(RulesError, match="has no time zone"):
        expand(Rules(), screen("Asia/Shanghai"), datetime(2026, 1, 1), datetime(2026, 1, 2))
