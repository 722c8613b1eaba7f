"""The `schedule` command on the box: turned into `signage_rules` input, checked against the
cloud's own expansion, remembered across restarts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydantic import ValidationError

from broker.payloads import RuleItem, ScheduleData
from signage_rules import Campaign, Daypart, Item, Layer, Rules, RulesError, Screen, Transition, plan

__all__ = ["agreement", "load", "rules_of", "save", "screen_of"]


def _items(items: tuple[RuleItem, ...]) -> tuple[Item, ...]:
    return tuple(Item(i.media, i.duration_s, Transition(i.transition.kind, i.transition.ms) if i.transition else None)
                 for i in items)


def rules_of(data: ScheduleData) -> Rules:
    """The rules of `data` (its campaigns already target this screen, so they carry no targeting)."""
    return Rules(
        tuple(Campaign(id=c.id, layer=Layer(c.layer.value), items=_items(c.items), priority=c.priority,
                       start_date=c.start_date, end_date=c.end_date, sov_s=c.sov_s,
                       dayparts=tuple(Daypart(frozenset(d.weekdays), d.start, d.end) for d in c.dayparts))
              for c in data.campaigns),
        _items(data.default),
    )


def screen_of(data: ScheduleData, node: str) -> Screen:
    return Screen(node=node, store="", region="", timezone=data.timezone)


def agreement(data: ScheduleData, node: str) -> str | None:
    """None if this box's expansion of the rules is the cloud's (its items and its hash); else why not."""
    try:
        timeline = plan(rules_of(data), screen_of(data, node), data.valid_from, data.valid_until)
    except RulesError as exc:
        return f"the rules cannot be expanded here: {exc}"
    slots = timeline.slots(data.valid_from, data.valid_until, limit=len(data.items))
    if len(slots) < len(data.items):
        return f"the cloud sent {len(data.items)} items, this box expands only {len(slots)}"
    for n, (mine, theirs) in enumerate(zip(slots, data.items, strict=False)):
        if (mine.start, mine.end, mine.media, mine.campaign) != (theirs.start, theirs.end, theirs.media, theirs.campaign):
            return (f"item {n} differs: the cloud says {theirs.campaign or 'default'} at {theirs.start.isoformat()}, "
                    f"this box expands {mine.campaign or 'default'} at {mine.start.isoformat()}")
    if data.timeline_hash is not None and timeline.digest() != data.timeline_hash:
        return f"the timeline hash differs (cloud {data.timeline_hash}, box {timeline.digest()})"
    return None


def save(path: Path, data: ScheduleData) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".schedule-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.model_dump_json().encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: Path) -> ScheduleData | None:
    try:
        return ScheduleData.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError):
        return None
