"""The foundation's promises, checked with real processes: a box agent, cloud workers, Mosquitto
and the database, each started and killed the way they are in the field."""

from __future__ import annotations

import signal

import pytest

from tests.system.harness import System, wait_for


def test_offline_box_traffic_arrives_exactly_once(system: System) -> None:
    """1,000 messages published while the cloud worker is stopped are all stored, once."""
    worker = system.worker()
    wait_for(lambda: system.host_online() is True, 30, "the worker to come online")
    worker.stop()  # the worker's persistent session stays at the broker
    assert system.host_online() is False
    box = system.box("st-off", burst=1000)
    wait_for(lambda: system.box_status("st-off")["last_seq"] >= 1000, 60, "the box to queue its burst")
    assert system.ledger("st-off") == []
    system.worker()
    wait_for(lambda: len(system.ledger("st-off")) >= 1000, 90, "1,000 messages in the ledger")
    system.fence()  # anything duplicated would have landed before the fence
    system.assert_complete("st-off", 1000)
    assert system.online("st-off") is True
    assert box.alive


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_box_killed_mid_burst_loses_nothing(system: System) -> None:
    system.worker()
    box = system.box("st-crash", burst=20_000)
    wait_for(lambda: len(system.ledger("st-crash")) > 500, 60, "the burst to start arriving")
    box.kill()  # kill -9, mid-burst: some messages un-acked, maybe one half-written transaction
    pending = system.box_status("st-crash")
    assert pending["pending"] > 0, "the kill came too late to test anything"
    system.box("st-crash")  # same outbox, no new burst: only what the first run accepted
    last = pending["last_seq"]
    wait_for(lambda: len(system.ledger("st-crash")) >= last, 120, f"all {last} messages after the restart")
    system.fence()
    system.assert_complete("st-crash", last)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("how", ["stop", "kill"])
def test_broker_restart_mid_stream(system: System, how: str) -> None:
    """Both ends reconnect by themselves; nothing is lost, even when the broker dies with messages
    it had acknowledged but not yet delivered (the cloud's gap detection asks the box to replay)."""
    system.worker(OMNISHELF_GAP_GRACE_S="1")
    system.box("st-restart", scans_per_s=200)
    wait_for(lambda: len(system.ledger("st-restart")) > 200, 60, "traffic to flow")
    if how == "kill":
        system.broker.process.kill()
    else:
        system.broker.process.stop()
    produced = system.box_status("st-restart")["last_seq"]
    # The box keeps producing into its outbox meanwhile.
    wait_for(lambda: system.box_status("st-restart")["last_seq"] >= produced + 100, 30, "the box to queue while the broker is down")
    system.broker.process.start()
    before = len(system.ledger("st-restart"))
    wait_for(lambda: len(system.ledger("st-restart")) > before + 200, 60, "traffic to resume after the restart")
    last = system.box_status("st-restart")["last_seq"]
    wait_for(
        lambda: {s for s, _ in system.ledger("st-restart")} >= set(range(1, last + 1)), 60, f"seqs 1..{last} complete"
    )
    rows = system.ledger("st-restart")
    assert len(rows) == len({s for s, _ in rows}), "a seq was stored twice"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_unclean_disconnect_marks_offline_within_keepalive(system: System) -> None:
    keepalive = 10
    system.worker()
    box = system.box("st-death", keepalive_s=keepalive)
    wait_for(lambda: system.online("st-death") is True, 30, "the box's birth")
    first_session = system.session("st-death")
    box.signal(signal.SIGSTOP)  # frozen: no DISCONNECT, no PINGREQ; only the broker's timer notices
    try:
        # The database poll adds up to 0.1 s to what the cloud itself knew.
        wait_for(lambda: system.online("st-death") is False, 1.5 * keepalive + 0.2, "offline within 1.5 x keepalive")
    finally:
        box.signal(signal.SIGCONT)
    # The box notices it was dropped, reconnects with a new session and is online again; the
    # death of its old session, delivered in any order, does not knock it offline.
    wait_for(lambda: (system.session("st-death") or 0) > (first_session or 0), 30, "a new session's birth")
    wait_for(lambda: system.online("st-death") is True, 10, "online again")
    system.fence()  # a late death of the old session would have been applied before the fence
    assert system.online("st-death") is True
