"""The signage contract: `schedule` is typed and refuses naive instants; `pop` names a media hash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from broker.payloads import PopData, ScheduleData

T0 = datetime(2026, 11, 28, 12, tzinfo=UTC)


def schedule(**kw: Any) -> dict[str, Any]:
    item = {"media": "a" * 64, "start": T0.isoformat(), "end": (T0 + timedelta(seconds=15)).isoformat(), "layer": "normal",
            "campaign": "c1"}
    base: dict[str, Any] = {"version": 1, "valid_from": T0.isoformat(), "valid_until": (T0 + timedelta(hours=48)).isoformat(),
                            "items": [item]}
    return base | kw


REFUSED = [
    ({"valid_from": "2026-11-28T12:00:00"}, "valid_from", "timezone info"),
    ({"items": [{"media": "a" * 64, "start": "2026-11-28T12:00:00", "end": "2026-11-28T12:00:15+00:00", "layer": "normal"}]},
     "items.0.start", "timezone info"),
    ({"items": [{"media": "nothex", "start": T0.isoformat(), "end": T0.isoformat(), "layer": "normal"}]}, "items.0.media",
     "pattern"),
    ({"items": [{"media": "a" * 64, "start": T0.isoformat(), "end": T0.isoformat(), "layer": "normal"}]}, "",
     "ends at 2026-11-28T12:00:00+00:00, not after it starts"),
    ({"items": [{"media": "a" * 64, "start": T0.isoformat(), "end": (T0 + timedelta(seconds=1)).isoformat(), "layer": "loud"}]},
     "items.0.layer", "override"),
    ({"valid_until": T0.isoformat()}, "", "must be after valid_from"),
]


@pytest.mark.parametrize(("change", "where", "says"), REFUSED)
def test_schedule_refuses_with_the_field_and_the_reason(change: dict[str, Any], where: str, says: str) -> None:
    with pytest.raises(ValidationError) as err:
        ScheduleData.model_validate(schedule(**change))
    e = err.value.errors()[0]
    assert ".".join(str(x) for x in e["loc"]) == where
    assert says in e["msg"]


def test_a_typed_schedule_round_trips() -> None:
    data = ScheduleData.model_validate(schedule())
    assert data.items[0].start == T0 and data.items[0].campaign == "c1"
    assert ScheduleData.model_validate_json(data.model_dump_json()) == data


def test_pop_refuses_a_naive_start_and_a_non_hash_media() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        PopData.model_validate({"screen": "main", "media_id": "a" * 64, "started_at": "2026-11-28T12:00:00", "duration_ms": 1})
    with pytest.raises(ValidationError, match="pattern"):
        PopData.model_validate({"screen": "main", "media_id": "m1", "started_at": T0.isoformat(), "duration_ms": 1})
