"""Several screens per box, over the real broker: the box's config lists two screens (the kiosk's
attract loop `main` and a signage screen by the door), HQ tags the door screen, a campaign for that
tag plays on the door screen only, each screen has its own log and timeline, proof of play names
its screen, `GET /signage/now` answers per screen (the first when none is named: the kiosk's
existing call) and a one-screen box still gets and plays the same schedule as before."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from broker.payloads import ScheduleData
from cloud.access.service import write_session
from cloud.models import DownlinkCommand
from cloud.signage import service
from cloud.signage.models import Play, ScreenState
from edge.signage.player import ManualClock
from firmware_config import NodeConfig
from firmware_config.paths import resolve_paths
from tests.catalogue.test_sync import cloud
from tests.cloud.conftest import until
from tests.conftest import Broker
from tests.signage.test_end_to_end import HQ, NODE, agent, at, box_config, get_json, publish, settle, setup, step_to


def two_screens(cfg: NodeConfig) -> NodeConfig:
    raw = cfg.model_dump(mode="json", exclude_none=True)
    raw["signage"]["screens"] = [{"name": "main"}, {"name": "door"}]
    return NodeConfig.model_validate(raw)


def log_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_each_screen_plays_its_own_timeline_and_proves_it(broker: Broker, engine: Engine, tmp_path: Path) -> None:
    cat_dir = tmp_path / "cloud-cat"
    m = setup(engine, cat_dir)
    with write_session(engine) as s, s.begin():
        service.set_screen(s, HQ, NODE, ["window"], "door")
        # The promo now targets the door screen's tag only (12:00-12:01 on Saturdays).
        service.save_campaign(s, HQ, service.CampaignIn(
            id="promo", name="Promo", layer="normal", playlist="promo", tags=("window",),
            dayparts=({"weekdays": [5], "start": "12:00", "end": "12:01"},)))

    async def main() -> None:
        async with cloud(broker, engine, cat_dir) as url:
            clock = ManualClock(at(11, 59))
            async with agent(two_screens(box_config(tmp_path, broker, url)), clock) as (a, sig):
                assert list(sig.players) == ["main", "door"]
                door = sig.players["door"]
                assert publish(engine) == 1
                await until(lambda: all(p.data is not None for p in sig.players.values()), timeout=5,
                            what="both screens' schedules on the box")
                await until(lambda: sig.cache.has(m["red"]) and sig.cache.has(m["blue"]), what="media cached")
                assert sig.player.data is not None and door.data is not None
                # Each screen got its own rules: the door's tag brings the promo, the first screen has none.
                assert [c.id for c in door.data.campaigns] == ["promo"] and sig.player.data.campaigns == ()
                for p in sig.players.values():
                    await settle(p)
                    await step_to(p, clock, at(12, 0, 30))
                api = a.api
                assert api is not None
                default = await asyncio.to_thread(get_json, f"{api.url}/signage/now")
                at_door = await asyncio.to_thread(get_json, f"{api.url}/signage/now?screen=door")
                assert (default["screen"], default["now"]["campaign"]) == ("main", None)
                assert (at_door["screen"], at_door["now"]["campaign"]) == ("door", "promo")
                both = await asyncio.to_thread(get_json, f"{api.url}/signage/screens")
                assert [s["screen"] for s in both["screens"]] == ["main", "door"]
                try:
                    await asyncio.to_thread(get_json, f"{api.url}/signage/now?screen=lobby")
                    raise AssertionError("an unknown screen was answered")
                except Exception as exc:  # urllib raises HTTPError for the 404
                    assert getattr(exc, "code", None) == 404
                for p in sig.players.values():
                    await step_to(p, clock, at(12, 2))
                sent = sum(p.stats.plays for p in sig.players.values())
                await until(lambda: _plays(engine) == sent, timeout=10, what=f"{sent} plays counted")
                await until(lambda: _playing(engine) == {"main": 1, "door": 1}, timeout=5, what="both screens acked")
            main_log, door_log = log_of(sig.screen_log), log_of(tmp_path / "signage" / "screen-door.log")
            assert {e["campaign"] for e in main_log} == {None}
            promo = [e for e in door_log if e["campaign"] == "promo"]
            assert promo and promo[0]["at"] == at(12).isoformat(timespec="milliseconds")
        with Session(engine) as s:
            by_screen = {(p.screen, p.campaign) for p in s.scalars(select(Play))}
            assert ("door", "promo") in by_screen and ("main", "promo") not in by_screen
            cmd = s.scalars(select(DownlinkCommand).where(DownlinkCommand.type == "schedule")).one()
            data = ScheduleData.model_validate(cmd.data)
            assert (data.screen, [x.screen for x in data.screens]) == ("main", ["door"])
            assert [c.id for c in data.campaigns] == [] and [c.id for c in data.screens[0].campaigns] == ["promo"]

    asyncio.run(asyncio.wait_for(main(), 90))


def _plays(engine: Engine) -> int:
    with Session(engine) as s:
        return len(s.scalars(select(Play)).all())


def _playing(engine: Engine) -> dict[str, int | None]:
    with Session(engine) as s:
        return {st.screen: st.playing_version for st in s.scalars(select(ScreenState).where(ScreenState.node == NODE))}


def test_a_one_screen_box_plays_the_first_screen_of_a_schedule_named_otherwise(tmp_path: Path) -> None:
    """A box whose config names no screens has one (`signage.screen`): it plays the top level of a
    schedule whatever the cloud called that screen, and ignores the others."""
    from tests.signage.test_box import B, schedule

    now = at(11)
    data = schedule(now).model_copy(update={"screen": "lobby"})
    data = data.model_copy(update={"screens": (schedule(now).model_copy(update={"screen": "door"}),)})
    cfg = NodeConfig.model_validate({"node_id": "n1", "store_id": "s1", "broker": {"url": "mqtt://127.0.0.1:1"},
                                     "signage": {"cloud_url": "http://127.0.0.1:1", "path": str(tmp_path)}})
    assert cfg.signage.screen_names() == ("main",)
    from edge.signage.component import SignageComponent

    class Ctx:
        config = cfg
        paths = resolve_paths(cfg)

        async def publish(self, *_: Any) -> None:
            return None

    sig = SignageComponent(Ctx(), clock=ManualClock(now))  # type: ignore[arg-type]
    parts, unknown = sig._parts(data)
    assert list(parts) == ["main"] and parts["main"].default[0].media == B and unknown == ["door"]


def test_screen_names_are_checked() -> None:
    base = {"node_id": "n1", "store_id": "s1", "broker": {"url": "mqtt://127.0.0.1:1"}}
    with pytest.raises(ValidationError, match="main is listed twice"):
        NodeConfig.model_validate(base | {"signage": {"screens": [{"name": "main"}, {"name": "main"}]}})
    with pytest.raises(ValidationError, match="distinct names"):
        ScheduleData.model_validate({"version": 1, "valid_from": "2026-06-01T00:00:00+00:00",
                                     "valid_until": "2026-06-02T00:00:00+00:00", "screens": [
                                         {"version": 1, "valid_from": "2026-06-01T00:00:00+00:00",
                                          "valid_until": "2026-06-02T00:00:00+00:00"}]})
