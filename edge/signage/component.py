"""The signage player as a box component: the `schedule` command, media prefetch into the shared
file cache, one player loop per screen the box drives, and `GET /signage/now` on the local API.

A box may drive several screens (`signage.screens` in its config: e.g. the kiosk's attract loop and
a signage screen by the door), each with its own timeline: one `schedule` command carries them all
(the first screen's at the top level, the others in `screens`), each screen's player plays its own
and names its screen in proof of play. The media cache is shared.

The latest accepted schedule is kept in `schedule.json` beside the cache: the bus runs a command
once only, so after a restart (maybe without a link) the box resumes from that file.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

from broker.client import JitteredBackoff
from broker.envelope import Envelope, MessageType
from broker.payloads import PopData, ScheduleData
from edge.component import BackgroundTask, CommandHandler, CommandRefused, Component, ComponentContext, ComponentError
from edge.filecache import FetchError, FileCache, VerifyError
from edge.localapi import ApiError, Request, Response, Route, text
from edge.signage import schedule as sched
from edge.signage.player import Clock, Player
from edge.signage.screen import LogScreen, Screen
from signage_rules import expand

__all__ = ["SignageComponent", "signage_dir"]

log = logging.getLogger(__name__)

_SHA = re.compile(r"[0-9a-f]{64}")
MAX_SERVED_BYTES = 64 * 1024 * 1024
"""The local API answers from memory: a longer video is for the box's own screen, not the kiosk."""


def signage_dir(ctx: ComponentContext) -> Path:
    return ctx.paths.signage


class SignageComponent(Component):
    name = "signage"

    def __init__(self, ctx: ComponentContext, *, clock: Clock | None = None, screen: Screen | None = None,
                 screens: Mapping[str, Screen] | None = None) -> None:
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
        """The first screen's log (the others': screen-<name>.log)."""
        self._publish = ctx.publish
        self.players: dict[str, Player] = {}
        for n, name in enumerate(cfg.screen_names()):
            log_path = self.screen_log if n == 0 else self.dir / f"screen-{_file_safe(name)}.log"
            own = (screen if n == 0 else None) or (screens or {}).get(name) or LogScreen(log_path)
            self.players[name] = Player(ctx.config.node_id, name, own, self.cache, self._send_pop, clock)
        self.player = next(iter(self.players.values()))
        """The first (default) screen's player."""
        self.refused = 0
        self.last_error: str | None = None
        self._fetch_wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._accepting = asyncio.Lock()
        saved = sched.load(self.state_file)
        if saved is not None:
            for name, part in self._parts(saved)[0].items():
                self.players[name].load(part)

    def _parts(self, data: ScheduleData) -> tuple[dict[str, ScheduleData], list[str]]:
        """Each configured screen's part of `data`, and the names of parts no screen here has.
        The top level goes to the screen of its name, else to the first screen (a cloud that knows
        one screen per box names it as HQ set it)."""
        parts: dict[str, ScheduleData] = {}
        unknown: list[str] = []
        for part in (data.model_copy(update={"screens": ()}), *data.screens):
            if part.screen in self.players:
                parts.setdefault(part.screen, part)
            else:
                unknown.append(part.screen)
        first = next(iter(self.players))
        if first not in parts and data.screen not in self.players:
            parts[first] = data.model_copy(update={"screens": ()})
            unknown.remove(data.screen)
        return parts, unknown

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
            parts, unknown = self._parts(data)
            for name, part in parts.items():
                problem = await asyncio.to_thread(sched.agreement, part, self.player.node)
                if problem is not None:
                    self.refused += 1
                    self.last_error = f"screen {name}: {problem}"
                    raise CommandRefused(f"schedule version {data.version} refused for screen {name}: {problem}")
            await asyncio.to_thread(sched.save, self.state_file, data)
            for name, part in parts.items():
                self.players[name].load(part)
            self._fetch_wake.set()
            extra = f"; no screen here named {', '.join(unknown)}" if unknown else ""
            missing = [n for n in self.players if n not in parts]
            extra += f"; nothing for screen {', '.join(missing)}" if missing else ""
            return f"playing schedule version {data.version} ({data.timeline_hash}){extra}"

    # -- prefetch ------------------------------------------------------------------------------------

    def needed(self) -> list[str]:
        """Media the screens need within the prefetch horizon, in the order they first need them,
        then the default playlists (the fallback)."""
        order: dict[str, None] = {}
        players = [p for p in self.players.values() if p.data is not None]
        for p in players:
            assert p.data is not None
            for i in p.data.default:
                order.setdefault(i.media, None)
        for p in players:
            assert p.data is not None
            now = p.clock.now()
            slots = expand(sched.rules_of(p.data), sched.screen_of(p.data, p.node), now,
                           now + timedelta(hours=self.prefetch_h))
            for s in slots:
                order.setdefault(s.media, None)
        return list(order)

    def fetch_round(self) -> int:
        """Fetch what is needed and missing; return how many files were stored. Blocking."""
        refs = {m.sha256: m for p in self.players.values() if p.data is not None for m in p.data.media}
        if not refs:
            return 0
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
                    # A player may be showing a fallback for a file that just arrived.
                    for p in self.players.values():
                        p.wake()
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
        players = tuple(BackgroundTask("signage-player" if n == 0 else f"signage-player-{name}", p.run)
                        for n, (name, p) in enumerate(self.players.items()))
        return (*players, BackgroundTask("signage-fetch", self._fetch_loop))

    def routes(self) -> Sequence[Route]:
        def now(req: Request) -> Any:
            name = req.params.get("screen")
            if not name:
                return self.player.now_playing() | {"screen": self.player.screen_name}
            p = self.players.get(str(name))
            if p is None:
                raise ApiError(HTTPStatus.NOT_FOUND,
                               f"no screen {name!r} on this box: it drives {', '.join(self.players)}")
            return p.now_playing() | {"screen": p.screen_name}

        def screens(_req: Request) -> Any:
            return {"screens": [p.now_playing() | {"screen": name} for name, p in self.players.items()]}

        def media(req: Request) -> Response:
            # What the kiosk's attract loop shows: only complete, verified files, never a partial one.
            sha = req.args["sha256"]
            if not _SHA.fullmatch(sha):
                raise ApiError(HTTPStatus.BAD_REQUEST, f"{sha[:80]!r} is not a media id: expected 64 lowercase hex digits")
            ref = next((m for p in self.players.values() if p.data is not None for m in p.data.media if m.sha256 == sha),
                       None)
            if ref is None or not self.cache.has(sha):
                raise ApiError(HTTPStatus.NOT_FOUND, f"media {sha} is not on this box (not in its schedule, or not fetched yet)")
            if ref.size > MAX_SERVED_BYTES:
                raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"media {sha} is {ref.size} bytes; the local API serves at most {MAX_SERVED_BYTES}")
            try:
                data = self.cache.path(sha).read_bytes()
            except FileNotFoundError:
                raise ApiError(HTTPStatus.NOT_FOUND, f"media {sha} is not on this box any more") from None
            self.cache.touch(sha)
            return Response(data, content_type=ref.mime, headers={"Cache-Control": "public, max-age=31536000, immutable"})

        return (Route("GET", "/signage/now", now, params=(text("screen", max_len=200),)),
                Route("GET", "/signage/screens", screens),
                Route("GET", "/signage/media/{sha256}", media))

    def status(self) -> Mapping[str, Any]:
        d, st, cs = self.player.data, self.player.stats, self.cache.stats
        out: dict[str, Any] = {
            "version": d.version if d else None, "timeline_hash": d.timeline_hash if d else None,
            "valid_until": d.valid_until.isoformat() if d else None, "clock_trusted": self.player.clock.trusted(),
            "plays": st.plays, "switches": st.switches, "fallbacks": st.fallbacks, "idle": st.idle,
            "dropped": dict(st.dropped or {}), "publish_errors": st.publish_errors, "refused": self.refused,
            "media": self.cache.count(), "media_bytes": self.cache.used_bytes(), "media_rejected": cs.rejected,
            "media_evicted": cs.evicted, "media_resumed": cs.resumed, "last_error": self.last_error,
        }
        if len(self.players) > 1:
            # The top-level figures are the first screen's; each screen's own follow.
            out["screens"] = {name: {"timeline_hash": p.data.timeline_hash if p.data else None, "plays": p.stats.plays,
                                     "switches": p.stats.switches, "fallbacks": p.stats.fallbacks, "idle": p.stats.idle}
                              for name, p in self.players.items()}
        return out

    async def stop(self) -> None:
        self._stop.set()
        self._fetch_wake.set()
        for p in self.players.values():
            await p.stop()


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]
