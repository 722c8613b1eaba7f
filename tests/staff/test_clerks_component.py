"""The box's clerks component on its own (real SQLite file, real scrypt, the roster command handler):
parallel wrong PINs cannot try more than the count allows, a deactivated clerk is refused and their
session ends, a box with no roster says so, and an older roster is ignored."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from broker.envelope import Envelope, MessageType
from broker.payloads import CLERK_ROSTER, ClerkRosterArgs, CommandData, RosterClerk
from broker.pins import hash_pin
from edge.clerks.component import ClerksComponent, Locked, NotOnRoster, WrongPin
from edge.component import ComponentContext
from firmware_config import NodeConfig, resolve_paths

PIN = "2580"
HASH = hash_pin(PIN)


def component(tmp: Path, **clerks: Any) -> ClerksComponent:
    cfg = NodeConfig.model_validate({"node_id": "st0001-k1", "store_id": "st0001", "data_dir": str(tmp),
                                     "broker": {"url": "mqtt://127.0.0.1:1"}, "clerks": {"enabled": True, **clerks}})

    async def publish(*_a: Any) -> Any:
        raise AssertionError("the clerks component publishes nothing")

    return ClerksComponent(ComponentContext(config=cfg, paths=resolve_paths(cfg), publish=publish))


def roster(version: int, *clerks: tuple[int, str, bool]) -> Envelope:
    args = ClerkRosterArgs(version=version, store="st0001", clerks=tuple(
        RosterClerk(id=i, name=n, pin_hash=HASH, active=a) for i, n, a in clerks))
    return Envelope(type=MessageType.COMMAND, node="st0001-k1", session=0, seq=version,
                    data=CommandData(name=CLERK_ROSTER, args=args.model_dump(mode="json")))


def apply(c: ClerksComponent, env: Envelope) -> str:
    async def run() -> str | None:
        return await c.named_commands()[CLERK_ROSTER](env)

    return asyncio.run(run()) or ""


def test_parallel_wrong_pins_cannot_beat_the_count(tmp_path: Path) -> None:
    c = component(tmp_path, max_failures=3)
    apply(c, roster(1, (1, "Ana", True)))

    def attempt(_i: int) -> str:
        try:
            c.sign_in(1, "1470")
        except WrongPin:
            return "wrong"
        except Locked:
            return "locked"
        return "signed in"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(attempt, range(12)))
    # Exactly max_failures PINs were checked; every other attempt met the lock.
    assert outcomes.count("wrong") == 2 and outcomes.count("locked") == 10, outcomes
    assert c.counts["wrong_pins"] == 3 and c.counts["lockouts"] == 1
    c.close()


def test_deactivation_ends_sessions_and_refuses_sign_in(tmp_path: Path) -> None:
    c = component(tmp_path)
    with pytest.raises(NotOnRoster) as err:
        c.sign_in(1, PIN)
    assert err.value.reason == "no_roster" and "holds no roster of store 'st0001' yet" in str(err.value)
    assert apply(c, roster(1, (1, "Ana", True), (2, "Bo", True))).startswith("roster version 1 applied (2 clerks, 2 active")
    token = c.sign_in(1, PIN).token
    assert c.who(token) is not None
    assert "1 session(s) ended" in apply(c, roster(2, (1, "Ana", False), (2, "Bo", True)))
    assert c.who(token) is None
    with pytest.raises(NotOnRoster) as err:
        c.sign_in(1, PIN)
    assert err.value.reason == "inactive" and "Ana) is deactivated in store 'st0001'" in str(err.value)
    # An older roster (a retry that arrives late) changes nothing.
    assert apply(c, roster(1, (1, "Ana", True))) == "roster version 1 is older than the held version 2: ignored"
    assert [x.name for x in c.db.clerks()] == ["Bo"]
    c.close()
    # The roster is on disk: a new component (an agent restart) has it.
    again = component(tmp_path)
    assert again.db.version == 2 and again.sign_in(2, PIN).clerk.name == "Bo"
    again.close()


def test_a_lock_set_while_the_clock_ran_ahead_lasts_no_longer_than_its_cap(tmp_path: Path) -> None:
    c = component(tmp_path, max_failures=1, lock_s=60, lock_max_s=600)
    apply(c, roster(1, (1, "Ana", True)))
    real = c.clock
    c.clock = lambda: real() + 86_400  # the box's clock a day ahead, later corrected
    with pytest.raises(Locked):
        c.sign_in(1, "1470")
    c.clock = real
    with pytest.raises(Locked) as err:
        c.sign_in(1, PIN)
    assert 599 <= err.value.retry_after_s <= 600
    c.close()


def test_clerk_ref_names_the_signed_in_clerk_until_they_are_deactivated(tmp_path: Path) -> None:
    """What the station and the order desk stamp on a clerk's actions (`X-Clerk-Session`)."""
    from broker.payloads import ClerkRef

    c = component(tmp_path)
    apply(c, roster(1, (1, "Ana", True)))
    token = c.sign_in(1, PIN).token
    assert c.ctx.shared.clerk_sessions is c
    assert c.clerk_ref(token) == ClerkRef(id="1", name="Ana")
    assert c.clerk_ref("garbage") is None
    apply(c, roster(2, (1, "Ana", False)))
    assert c.clerk_ref(token) is None
    c.close()
