"""The signage player: deadline-driven, offline-first, never black, and it proves what it played.

- The timeline is always this box's own expansion of the rules it received (`signage_rules`, the
  code the cloud and its console run), so it goes on past the cloud's 48 h window for as long as
  the box is offline, and plays the right slots on day three.
- It sleeps until the next boundary on an asyncio timer (no polling) and switches there; a new
  schedule wakes it at once, so an unpublished or changed item stops now, not at its end.
- It shows an item only if its file is complete and verified in the cache; otherwise a cached item
  of the default playlist, else any cached item of the rules, else the idle card: never black.
- An untrusted clock (never synced) plays only always-on campaigns and the default playlist.
- Each play ends in one `pop` message through the durable outbox: the UTC start from the wall
  clock, the duration from the monotonic clock. Records that cannot be true (empty, over-long,
  overlapping the previous one) are dropped and counted instead.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from broker.payloads import PopData, ScheduleData, SignageLayer
from edge.clock import clock_synced
from edge.filecache import FileCache
from edge.signage import schedule as sched
from edge.signage.screen import Screen, Shown
from signage_rules import Plan, Rules, Slot, current, plan

__all__ = ["Clock", "ManualClock", "Player", "SystemClock"]

log = logging.getLogger(__name__)

PLAN_SPAN = timedelta(hours=24)
"""How far ahead the player plans at a time (a plan is compact: runs and spots)."""
SLOTS_SPAN = timedelta(minutes=10)
SLOTS_MAX = 500
"""The slots materialised at a time: a few minutes ahead, so a switch never waits for a long
expansion (materialising skips whole playlist cycles, so the next batch is cheap too)."""
IDLE_RECHECK = timedelta(seconds=60)
MAX_PLAY = timedelta(hours=6)
OVERLAP_SLACK = timedelta(seconds=1)


class Clock(Protocol):
    def now(self) -> datetime: ...
    def monotonic(self) -> float: ...
    def trusted(self) -> bool: ...
    async def sleep_until(self, when: datetime, wake: asyncio.Event) -> None:
        """Return at `when` (wall clock) or as soon as `wake` is set."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def trusted(self) -> bool:
        return clock_synced()

    async def sleep_until(self, when: datetime, wake: asyncio.Event) -> None:
        delay = (when - self.now()).total_seconds()
        if delay <= 0:
            return
        # One timer on the event loop (call_later), not a polling loop.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), delay)


class ManualClock:
    """A clock the caller moves (tests, simulations): time passes only in `advance_to`."""

    def __init__(self, start: datetime, *, trusted: bool = True) -> None:
        self._now = start
        self._mono = 1000.0
        self.synced = trusted
        self._waiters: list[tuple[datetime, asyncio.Future[Any]]] = []

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def trusted(self) -> bool:
        return self.synced

    def advance_to(self, t: datetime) -> None:
        if t > self._now:
            self._mono += (t - self._now).total_seconds()
            self._now = t
        for when, fut in self._waiters:
            if when <= self._now and not fut.done():
                fut.set_result(None)

    async def sleep_until(self, when: datetime, wake: asyncio.Event) -> None:
        if when <= self._now:
            return
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        entry = (when, fut)
        self._waiters.append(entry)
        woken: asyncio.Future[Any] = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait({fut, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            self._waiters.remove(entry)


@dataclass(frozen=True, slots=True)
class Playing:
    key: tuple[Any, ...]
    shown: Shown
    slot: Slot | None
    started: datetime
    started_mono: float
    version: int | None


@dataclass
class PlayerStats:
    plays: int = 0
    fallbacks: int = 0
    idle: int = 0
    switches: int = 0
    dropped: Counter[str] | None = None
    publish_errors: int = 0
    jitter_ms: list[float] | None = None
    """Wall time between a planned boundary and the switch (kept for the last 1000 switches)."""


class Player:
    def __init__(
        self, node: str, screen_name: str, screen: Screen, cache: FileCache,
        publish: Callable[[PopData], Awaitable[None]], clock: Clock | None = None,
    ) -> None:
        self.node = node
        self.screen_name = screen_name
        self.screen = screen
        self.cache = cache
        self.publish = publish
        self.clock: Clock = clock or SystemClock()
        self.data: ScheduleData | None = None
        self.rules = Rules()
        self.stats = PlayerStats(dropped=Counter(), jitter_ms=[])
        self.playing: Playing | None = None
        self.deadline: datetime | None = None
        self.sleeping = asyncio.Event()
        """Set while the player waits for its next deadline (tests step a ManualClock on it)."""
        self.turns = 0
        """Decisions taken so far (one per boundary or wake-up)."""
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._slots: tuple[Slot, ...] = ()
        self._window: tuple[datetime, datetime, bool] | None = None
        self._plan: Plan | None = None
        self._plan_window: tuple[datetime, datetime, bool] | None = None
        self._last_end: datetime | None = None

    # -- schedule ------------------------------------------------------------------------------------

    def load(self, data: ScheduleData) -> None:
        """Play `data` from now on (the caller checked and saved it); wakes the loop at once."""
        self.data = data
        self.rules = sched.rules_of(data)
        self._window = self._plan_window = None
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def timeline(self, now: datetime) -> tuple[Slot, ...]:
        """The slots around `now` (a few minutes' worth, from the current plan)."""
        trusted = self.clock.trusted()
        pw = self._plan_window
        if self._plan is None or pw is None or now < pw[0] or now + SLOTS_SPAN >= pw[1] or pw[2] != trusted:
            start, end = now - timedelta(minutes=1), now + PLAN_SPAN
            self._plan = plan(self.rules, sched.screen_of(self.data, self.node), start, end, clock_trusted=trusted) \
                if self.data is not None else Plan("UTC", (), ())
            self._plan_window = (start, end, trusted)
            self._window = None
        w = self._window
        # w = (from, refresh at, trusted): a new batch is made a little before this one runs out.
        if w is None or now < w[0] or now >= w[1]:
            start, end = now - timedelta(seconds=1), now + SLOTS_SPAN
            slots = self._plan.slots(start, end, limit=SLOTS_MAX)
            refresh = slots[-3].start if len(slots) == SLOTS_MAX else end - IDLE_RECHECK
            self._slots = slots
            self._window = (start, refresh, trusted)
        return self._slots

    def upcoming(self, now: datetime, n: int = 5) -> list[Slot]:
        # The loop's last expansion (an immutable tuple): safe to read from the API's threads.
        slots = self._slots
        i = bisect.bisect_right(slots, now, key=lambda s: s.start)
        return list(slots[i:i + n])

    # -- choosing ------------------------------------------------------------------------------------

    def _path(self, sha: str) -> Any:
        return self.cache.path(sha) if self.cache.has(sha) else None

    def _fallback(self, seed: int) -> Shown:
        ready = [i.media for i in self.rules.default if self.cache.has(i.media)]
        if ready:
            sha = ready[seed % len(ready)]
            return Shown(sha, self.cache.path(sha), None, SignageLayer.DEFAULT.value, "fallback")
        for c in self.rules.campaigns:
            for i in c.items:
                if self.cache.has(i.media):
                    return Shown(i.media, self.cache.path(i.media), None, SignageLayer.DEFAULT.value, "fallback")
        return Shown(None, None, None, SignageLayer.DEFAULT.value, "idle")

    def decide(self, now: datetime) -> tuple[Shown, Slot | None, datetime]:
        """What to show at `now`, the slot it stands for, and until when (the next boundary)."""
        slots = self.timeline(now)
        i = current(slots, now)
        if i >= 0:
            slot = slots[i]
            path = self._path(slot.media)
            if path is not None:
                t = slot.transition
                return (Shown(slot.media, path, slot.campaign, slot.layer.value, "scheduled",
                              t.kind if t else None, t.ms if t else 0), slot, slot.end)
            return self._fallback(int(slot.start.timestamp())), slot, slot.end
        j = bisect.bisect_right(slots, now, key=lambda s: s.start)
        until = slots[j].start if j < len(slots) else now + IDLE_RECHECK
        return self._fallback(int(now.timestamp()) // 60), None, min(until, now + IDLE_RECHECK)

    # -- the loop ------------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while not self._stop.is_set():
                self.sleeping.clear()
                self._wake.clear()
                now = self.clock.now()
                shown, slot, until = self.decide(now)
                key = (slot.start, slot.media, slot.campaign, shown.media) if slot else ("gap", shown.media)
                if self.playing is None or self.playing.key != key:
                    if self.deadline is not None and self.playing is not None and self.stats.jitter_ms is not None:
                        self.stats.jitter_ms.append((now - self.deadline).total_seconds() * 1000)
                        del self.stats.jitter_ms[:-1000]
                    await self._end(now)
                    self._start(key, shown, slot, now)
                self.deadline = until
                self.turns += 1
                self.sleeping.set()
                await self.clock.sleep_until(until, self._wake)
        finally:
            self.sleeping.clear()
            with contextlib.suppress(Exception):
                await self._end(self.clock.now())

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _start(self, key: tuple[Any, ...], shown: Shown, slot: Slot | None, now: datetime) -> None:
        self.screen.show(shown, now)
        self.stats.switches += 1
        if shown.reason == "fallback":
            self.stats.fallbacks += 1
        elif shown.reason == "idle":
            self.stats.idle += 1
        if shown.media is not None:
            self.cache.touch(shown.media)
        self.playing = Playing(key, shown, slot, now, self.clock.monotonic(), self.data.version if self.data else None)

    async def _end(self, now: datetime) -> None:
        p, self.playing = self.playing, None
        if p is None or p.shown.media is None:
            return
        ms = round((self.clock.monotonic() - p.started_mono) * 1000)
        assert self.stats.dropped is not None
        if ms <= 0:
            self.stats.dropped["empty"] += 1
            return
        if ms > MAX_PLAY.total_seconds() * 1000:
            self.stats.dropped["over_long"] += 1
            return
        if self._last_end is not None and p.started < self._last_end - OVERLAP_SLACK:
            self.stats.dropped["overlap"] += 1
            return
        self._last_end = p.started + timedelta(milliseconds=ms)
        layer = SignageLayer(p.shown.layer)
        pop = PopData(screen=self.screen_name, media_id=p.shown.media, campaign_id=p.shown.campaign, layer=layer,
                      schedule_version=p.version, started_at=p.started, duration_ms=ms)
        try:
            await self.publish(pop)
            self.stats.plays += 1
        except Exception:
            # The outbox could not take it (e.g. the disk is full): counted, and the player goes on.
            self.stats.publish_errors += 1
            log.exception("signage: proof of play could not be queued")

    def now_playing(self) -> dict[str, Any]:
        now = self.clock.now()
        p = self.playing
        return {
            "at": now.isoformat(),
            "version": self.data.version if self.data else None,
            "clock_trusted": self.clock.trusted(),
            "now": None if p is None else {
                "media": p.shown.media, "campaign": p.shown.campaign, "layer": p.shown.layer, "reason": p.shown.reason,
                "transition": {"kind": p.shown.transition, "ms": p.shown.transition_ms} if p.shown.transition else None,
                "since": p.started.isoformat(), "until": self.deadline.isoformat() if self.deadline else None,
            },
            "next": [{"media": s.media, "campaign": s.campaign, "layer": s.layer.value, "start": s.start.isoformat(),
                      "end": s.end.isoformat(), "local_start": s.local_start.isoformat(), "ready": self.cache.has(s.media),
                      "transition": {"kind": s.transition.kind, "ms": s.transition.ms} if s.transition else None}
                     for s in self.upcoming(now)],
        }
