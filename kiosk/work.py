"""All I/O off the UI thread: a small pool runs blocking calls; results come back on Kivy's clock.

Widgets and Kivy properties are touched only in the callbacks, which `Clock.schedule_once` runs on
the UI thread. A call whose result arrives after a newer call of the same key was made is dropped
(the shopper typed another letter: the older answer must not overwrite the newer one). With
`latest_only`, such a call that has not started yet is not made at all: typing fast queues one
search per key, and only the last one is worth asking the box.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from kivy.clock import Clock

from kiosk.client import BoxError

__all__ = ["Worker"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class Worker:
    def __init__(self, threads: int = 4) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="kiosk-io")
        self._latest: dict[str, int] = {}
        self._ids = itertools.count(1)
        self.pending = 0
        """Calls whose callback has not run yet (tests wait for 0)."""
        self.skipped = 0
        """`latest_only` calls never made: a newer one of the same key came first."""

    def run(self, fn: Callable[[], T], done: Callable[[T], None], failed: Callable[[str], None],
            key: str | None = None, *, latest_only: bool = False) -> None:
        call_id = next(self._ids)
        if key is not None:
            self._latest[key] = call_id
        self.pending += 1

        def deliver(cb: Callable[[Any], None], value: Any) -> None:
            def on_ui(_dt: float) -> None:
                self.pending -= 1
                if key is not None and self._latest.get(key) != call_id:
                    return
                cb(value)

            Clock.schedule_once(on_ui, 0)

        def job() -> None:
            if latest_only and key is not None and self._latest.get(key) != call_id:
                deliver(failed, "superseded")  # dropped on the UI thread like any stale answer
                self.skipped += 1
                return
            try:
                value = fn()
            except BoxError as exc:
                deliver(failed, str(exc))
            except Exception as exc:  # a bug must show as a message, never take the kiosk down
                log.exception("kiosk: background call failed")
                deliver(failed, f"something went wrong ({type(exc).__name__}: {exc})")
            else:
                deliver(done, value)

        self._pool.submit(job)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
