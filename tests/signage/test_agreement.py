"""The console's calendar, the cloud's schedule and the box's player agree on every case: the box
rebuilds the rules from the `schedule` payload, checks the cloud's items and digest, and its
timeline (even days past the cloud's window) is the calendar's."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from broker.payloads import MediaRef, ScheduleData
from cloud.signage.rules import schedule_for
from edge.signage import schedule as box
from signage_rules import Campaign, Daypart, Item, Layer, Rules, Screen, expand, plan, targeted

A, B, C, D, X = ("a" * 64, "b" * 64, "c" * 64, "d" * 64, "e" * 64)
DAYS = frozenset(range(7))
RULES = Rules(
    (
        Campaign("evening", Layer.NORMAL, (Item(A, 30), Item(B, 20)), dayparts=(Daypart(DAYS, time(18), time(2)),),
                 regions=frozenset({"eu"})),
        Campaign("weekend", Layer.NORMAL, (Item(C, 15),), priority=2, dayparts=(Daypart(frozenset({5, 6}), time(10), time(12)),)),
        Campaign("xmas", Layer.NORMAL, (Item(B, 10),), start_date=date(2026, 12, 24), end_date=date(2026, 12, 26)),
        Campaign("ad", Layer.INTERRUPT, (Item(X, 15),), sov_s=60, tags=frozenset({"window"})),
        Campaign("alert", Layer.OVERRIDE, (Item(D, 5),), dayparts=(Daypart(frozenset({6}), time(3), time(4)),),
                 stores=frozenset({"ny1"})),
    ),
    (Item(D, 25),),
)
SCREENS = [
    Screen("be1-k1", "be1", "eu", "Europe/Berlin", frozenset({"window"})),
    Screen("ny1-k1", "ny1", "us", "America/New_York", frozenset({"window"})),
    Screen("sh1-k1", "sh1", "cn", "Asia/Shanghai"),
]
STARTS = [datetime(2026, 3, 28, 12, tzinfo=UTC), datetime(2026, 10, 24, 0, tzinfo=UTC), datetime(2026, 11, 1, 3, tzinfo=UTC),
          datetime(2026, 12, 23, 22, tzinfo=UTC)]


def payload(screen: Screen, start: datetime) -> ScheduleData:
    mine = targeted(RULES, [screen])[screen.node]
    refs = {m: MediaRef(sha256=m, size=1, mime="image/png", path=f"/signage/media/{m}") for m in (A, B, C, D, X)}
    data = schedule_for(mine, RULES.default, plan(RULES, screen, start, start + timedelta(hours=48)), 1, start, refs)
    # Over the wire and back, as the box gets it.
    return ScheduleData.model_validate_json(data.model_dump_json())


@pytest.mark.parametrize("screen", SCREENS, ids=[s.node for s in SCREENS])
@pytest.mark.parametrize("start", STARTS, ids=[s.date().isoformat() for s in STARTS])
def test_box_and_console_agree(screen: Screen, start: datetime) -> None:
    data = payload(screen, start)
    assert box.agreement(data, screen.node) is None
    # Beyond the cloud's window too (the box offline for three days).
    later = start + timedelta(hours=60)
    on_box = expand(box.rules_of(data), box.screen_of(data, screen.node), later, later + timedelta(hours=12))
    in_console = expand(RULES, screen, later, later + timedelta(hours=12))
    assert on_box == in_console
    assert [s.local_start for s in on_box] == [s.local_start for s in in_console]
    assert all(s.local_start.tzinfo == ZoneInfo(screen.timezone) for s in on_box[:3])


def test_a_tampered_schedule_is_refused_with_the_reason() -> None:
    data = payload(SCREENS[0], STARTS[0])
    items = list(data.items)
    items[3] = items[3].model_copy(update={"campaign": "evil"})
    bad = data.model_copy(update={"items": tuple(items)})
    assert box.agreement(bad, "be1-k1") == (
        f"item 3 differs: the cloud says evil at {items[3].start.isoformat()}, this box expands "
        f"{data.items[3].campaign or 'default'} at {items[3].start.isoformat()}"
    )
    other = data.model_copy(update={"timeline_hash": "0" * 32})
    assert (box.agreement(other, "be1-k1") or "").startswith("the timeline hash differs (cloud 000")
