"""Between the stored rules document, `signage_rules` and the `schedule` payload.

A publication stores its rules as a JSON document (campaigns with their targeting, the default
playlist); the expansion reads it as `signage_rules.Rules`; a box gets, per screen, only the
campaigns that target it (targeting stripped) as `RuleCampaign`s, plus the expansion itself."""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, time, timedelta
from typing import Any

from broker.payloads import (
    MediaRef,
    RuleCampaign,
    RuleDaypart,
    RuleItem,
    ScheduleData,
    ScheduleItem,
    SignageLayer,
    SignageTransition,
)
from signage_rules import Campaign, Daypart, Item, Layer, Plan, Rules, Transition

__all__ = ["HORIZON", "ITEMS_BUDGET", "doc_hash", "rules_from_doc", "schedule_for"]

HORIZON = timedelta(hours=48)
"""The explicit timeline the cloud computes (the box extends it from the rules beyond)."""
ITEMS_BUDGET = 150_000
"""Bytes of explicit items per schedule message (the envelope's limit is 256 KiB): beyond them the
box relies on its own expansion, which it checks against `timeline_hash` anyway."""
ITEMS_MAX = 240
"""Explicit items per message (about an hour of 15 s spots): enough to inspect and to cross-check;
the digest covers the rest of the window."""


def _date(v: Any) -> date | None:
    return None if v is None else date.fromisoformat(v)


def item_from_doc(i: dict[str, Any]) -> Item:
    t = i.get("transition")
    return Item(i["media"], float(i["duration_s"]), Transition(t["kind"], int(t.get("ms", 0))) if t else None)


def rule_item(i: Item) -> RuleItem:
    t = i.transition
    return RuleItem(media=i.media, duration_s=i.duration_s,
                    transition=SignageTransition(kind=t.kind, ms=t.ms) if t else None)


def campaign_from_doc(c: dict[str, Any]) -> Campaign:
    return Campaign(
        id=c["id"], layer=Layer(c["layer"]), priority=int(c.get("priority", 0)),
        items=tuple(item_from_doc(i) for i in c["items"]),
        start_date=_date(c.get("start_date")), end_date=_date(c.get("end_date")),
        dayparts=tuple(Daypart(frozenset(d["weekdays"]), time.fromisoformat(d["start"]), time.fromisoformat(d["end"]))
                       for d in c.get("dayparts", ())),
        regions=frozenset(c.get("regions", ())), stores=frozenset(c.get("stores", ())), tags=frozenset(c.get("tags", ())),
        sov_s=int(c.get("sov_s", 0)),
    )


def rules_from_doc(doc: dict[str, Any]) -> Rules:
    return Rules(tuple(campaign_from_doc(c) for c in doc.get("campaigns", ())),
                 tuple(item_from_doc(i) for i in doc.get("default", ())))


def doc_hash(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _rule_campaign(c: Campaign) -> RuleCampaign:
    return RuleCampaign(
        id=c.id, layer=SignageLayer(c.layer.value), priority=c.priority,
        items=tuple(rule_item(i) for i in c.items),
        start_date=c.start_date, end_date=c.end_date, sov_s=c.sov_s,
        dayparts=tuple(RuleDaypart(weekdays=tuple(sorted(d.weekdays)), start=d.start, end=d.end) for d in c.dayparts),
    )


def schedule_for(
    mine: tuple[Campaign, ...], default: tuple[Item, ...], timeline: Plan, version: int, start: datetime,
    media: dict[str, MediaRef], *, screen_name: str = "main", share: int = 1,
) -> ScheduleData:
    """The `schedule` command for one screen: the campaigns that target it, the default playlist,
    the head of its 48 h timeline as explicit items (as many as fit) and the whole plan's digest.
    `share`: how many screens' schedules travel in one message (they split the items' budget)."""
    end = start + HORIZON
    items: list[ScheduleItem] = []
    size = 0
    budget = ITEMS_BUDGET // max(1, share)
    for s in timeline.slots(start, end, limit=ITEMS_MAX // max(1, share)):
        t = s.transition
        item = ScheduleItem(media=s.media, start=s.start, end=s.end, layer=SignageLayer(s.layer.value), campaign=s.campaign,
                            local_start=s.local_start, transition=SignageTransition(kind=t.kind, ms=t.ms) if t else None)
        size += len(item.model_dump_json())
        if size > budget:
            break
        items.append(item)
    needed = {i.media for c in mine for i in c.items} | {i.media for i in default}
    return ScheduleData(
        version=version, timeline_hash=timeline.digest(), screen=screen_name, timezone=timeline.timezone,
        valid_from=start, valid_until=end, items=tuple(items), campaigns=tuple(_rule_campaign(c) for c in mine),
        default=tuple(rule_item(i) for i in default),
        media=tuple(media[m] for m in sorted(needed) if m in media),
    )
