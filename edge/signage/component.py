"""The signage player as a box component: the `schedule` command, media prefetch into the shared
file cache, the player loop, and `GET /signage/now` on the local API.

The latest accepted schedule is kept in `schedule.json` beside the cache: the bus runs a command
once only, so after a restart (maybe without a link) the box resumes from that file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from broker.client import JitteredBackoff
from broker.envelope import Envelope, MessageType
from broker.payloads import PopData, ScheduleData
from edge.component import BackgroundTask, CommandHandler, CommandRefused, Component, ComponentContext, ComponentError
from edge.filecache import FetchError, FileCache, VerifyError
from edge.localapi import Request, Route
from edge.signage import schedule as sched
from edge.signage.player import Clock, Player
from edge.signage.screen import LogScreen, Screen
from signage_rules import expand

__all__ = ["SignageComponent", "signage_dir"]

log = logging.getLogger(__name__)


def signage_dir(ctx: ComponentContext) -> Path:
    cfg = ctx.config.signage
    if cfg.path is None:
        return ctx.paths.node_dir / "signage"
    p = cfg.path.expanduser()
    return p if p.is_absolute() else (ctx.config.base_dir or ctx.paths.node_dir) / p


class SignageComponent(Component):
    name = "signage"

    def __init__(self, ctx: ComponentContext, *, clock: Clock | None = None, screen: Screen | None = None) -> None:
        cfg = ctx.config.signage
        assert cfg.cloud_url is not None
        self.cloud_url = cfg.cloud_url
        self.dir = signage_dir(ctx)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.cache = FileCache(self.dir / "media", int(cfg.media_budget_mb * 1024 * 1024), timeout=cfg.fetch_timeout_s)
        except OSError as exc:
            raise ComponentError(f"signage.path {self.dir}: cannot use it ({exc.strerror or exc})") from None
        self.prefetch_h = cfg.prefetch_h
        self.backoff = JitteredBackoff(ctx.config.backoff.base_s, ctx.config.backoff.cap_s)
        self.state_file = self.dir / "schedule.json"
        self.screen_log = self.dir / "screen.log"
        self._publish = ctx.publish
        self.player = Player(ctx.config.node_id, cfg.screen, screen or LogScreen(self.screen_log), self.cache,
                             self._send_pop, clock)
        self.refused = 0
        self.last_error: str | None = None
        self._fetch_wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._accepting = asyncio.Lock()
        saved = sched.load(self.state_file)
        if saved is not None:
            self.player.load(saved)

    async def _send_pop(self, pop: PopData) -> None:
        await self._publish(MessageType.POP, pop)

    # -- the command ---------------------------------------------------------------------------------

    def commands(self) -> Mapping[MessageType, CommandHandler]:
        return {MessageType.SCHEDULE: self._on_schedule}

    async def _on_schedule(self, env: Envelope) -> str:
        data = env.data
        if not isinstance(data, ScheduleData):
            raise CommandRefused(f"a schedule command carries ScheduleData, got {type(data).__name__}")
        async with self._accepting:
            held = self.player.data
            if held is not None and (data.version, data.valid_from) < (held.version, held.valid_from):
                return f"schedule version {data.version} ignored: playing version {held.version}, sent later"
            problem = await asyncio.to_thread(sched.agreement, data, self.player.node)
            if problem is not None:
                self.refused += 1
                self.last_error = problem
                raise CommandRefused(f"schedule version {data.version} refused: {problem}")
            await asyncio.to_thread(sched.save, self.state_file, data)
            self.player.load(data)
            self._fetch_wake.set()
            return f"playing schedule version {data.version} ({data.timeline_hash})"

    # -- prefetch ------------------------------------------------------------------------------------

    def needed(self) -> list[str]:
        """Media the screen needs within the prefetch horizon, in the order it first needs them,
        then the default playlist (the fallback)."""
        data = self.player.data
        if data is None:
            return []
        now = self.player.clock.now()
        order: dict[str, None] = {}
        for i in data.default:
            order.setdefault(i.media, None)
        slots = expand(sched.rules_of(data), sched.screen_of(data, self.player.node), now,
                       now + timedelta(hours=self.prefetch_h))
        for s in slots:
            order.setdefault(s.media, None)
        return list(order)

    def fetch_round(self) -> int:
        """Fetch what is needed and missing; return how many files were stored. Blocking."""
        data = self.player.data
        if data is None:
            return 0
        refs = {m.sha256: m for m in data.media}
        needed = self.needed()
        stored = 0
        for sha in needed:
            ref = refs.get(sha)
            if ref is None or self.cache.has(sha):
                continue
            try:
                if self.cache.fetch(self.cloud_url + ref.path, sha, ref.size, pinned=needed):
                    stored += 1
            except VerifyError as exc:
                # Never stored, so never played: the player falls back; fetched again next round.
                self.last_error = str(exc)
                log.warning("signage: %s", exc)
            except FetchError as exc:
                self.last_error = str(exc)
                if exc.status is None:
                    raise
                log.warning("signage: %s", exc)
        return stored

    async def _fetch_loop(self) -> None:
        while not self._stop.is_set():
            self._fetch_wake.clear()
            delay = 600.0
            try:
                if await asyncio.to_thread(self.fetch_round):
                    # The player may be showing a fallback for a file that just arrived.
                    self.player.wake()
                self.backoff.reset()
                if any(not self.cache.has(s) for s in await asyncio.to_thread(self.needed)):
                    delay = self.backoff.next_delay()
            except Exception as exc:
                self.last_error = str(exc)
                delay = self.backoff.next_delay()
                log.warning("signage: media fetch failed (%s); again in %.1f s", exc, delay)
            stop = asyncio.ensure_future(self._stop.wait())
            wake = asyncio.ensure_future(self._fetch_wake.wait())
            try:
                await asyncio.wait({stop, wake}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                wake.cancel()

    # -- the component -------------------------------------------------------------------------------

    def tasks(self) -> Sequence[BackgroundTask]:
        return (BackgroundTask("signage-player", self.player.run), BackgroundTask("signage-fetch", self._fetch_loop))

    def routes(self) -> Sequence[Route]:
        def now(_req: Request) -> Any:
            return self.player.now_playing()

        return (Route("GET", "/signage/now", now),)

    def status(self) -> Mapping[str, Any]:
        d, st, cs = self.player.data, self.player.stats, self.cache.stats
        return {
            "version": d.version if d else None, "timeline_hash": d.timeline_hash if d else None,
            "valid_until": d.valid_until.isoformat() if d else None, "clock_trusted": self.player.clock.trusted(),
            "plays": st.plays, "switches": st.switches, "fallbacks": st.fallbacks, "idle": st.idle,
            "dropped": dict(st.dropped or {}), "publish_errors": st.publish_errors, "refused": self.refused,
            "media": self.cache.count(), "media_bytes": self.cache.used_bytes(), "media_rejected": cs.rejected,
            "media_evicted": cs.evicted, "media_resumed": cs.resumed, "last_error": self.last_error,
        }

    async def stop(self) -> None:
        self._stop.set()
        self._fetch_wake.set()
        await self.player.stop()
