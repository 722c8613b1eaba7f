"""The kiosk's worker: an answer waited for is applied before `run` returns (the frame being drawn
shows it); a slower one, or one not waited for, comes on the clock; a stale one is dropped."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

pytest.importorskip("kivy")

from kivy.clock import Clock

from kiosk.work import Worker


def pump(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        Clock.tick()


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker()
    yield w
    w.shutdown()


def test_a_fast_answer_waited_for_is_applied_before_run_returns(worker: Worker) -> None:
    got: list[int] = []
    worker.run(lambda: 7, got.append, lambda _m: None, key="k", wait_s=5.0)
    assert got == [7]
    assert worker.pending == 0


def test_a_slow_answer_comes_on_the_clock_and_is_applied_once(worker: Worker) -> None:
    release = threading.Event()
    got: list[int] = []

    def slow() -> int:
        release.wait(10)
        return 8

    worker.run(slow, got.append, lambda _m: None, key="k", wait_s=0.01)
    assert got == [] and worker.pending == 1
    release.set()
    pump(lambda: worker.pending == 0, what="the slow answer")
    assert got == [8]


def test_an_answer_not_waited_for_comes_on_the_clock(worker: Worker) -> None:
    got: list[int] = []
    worker.run(lambda: 9, got.append, lambda _m: None, key="k")
    assert got == []
    pump(lambda: worker.pending == 0, what="the answer")
    assert got == [9]


def test_a_stale_answer_is_dropped_when_a_newer_one_was_waited_for(worker: Worker) -> None:
    release = threading.Event()
    got: list[str] = []

    def old() -> str:
        release.wait(10)
        return "old"

    worker.run(old, got.append, lambda _m: None, key="browse")
    worker.run(lambda: "new", got.append, lambda _m: None, key="browse", wait_s=5.0)
    assert got == ["new"]
    release.set()
    pump(lambda: worker.pending == 0, what="the old answer")
    assert got == ["new"]
