"""The box side without a broker: the verified file cache (resumed downloads over HTTP ranges, LRU
under a budget that never evicts what is pinned, corrupt files refused), and the player (untrusted
clock, fallback, records that cannot be true dropped and counted, switching on a real timer)."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.payloads import PopData, ScheduleData
from edge.filecache import FileCache, VerifyError
from edge.signage.player import ManualClock, Player
from edge.signage.screen import Shown

A, B = "a" * 64, "b" * 64


class Files(http.server.ThreadingHTTPServer):
    """Serves `files` by path; honours `Range: bytes=N-`; `cut` stops a body after that many bytes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: int | None = None
        self.ranges: list[str] = []
        files = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = files.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                start = 0
                if rng:
                    files.ranges.append(rng)
                    start = int(rng.removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if files.cut is not None:
                    self.wfile.write(body[: files.cut])
                    files.cut = None
                    self.wfile.flush()
                    self.connection.close()
                    return
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def files() -> Iterator[Files]:
    srv = Files()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def put(files: Files, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    files.files[f"/m/{sha}"] = data
    return sha


def test_an_interrupted_download_resumes_with_a_range_request(files: Files, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4000
    sha = put(files, data)
    cache = FileCache(tmp_path, 10**7)
    files.cut = 300_000
    with pytest.raises((VerifyError, OSError)):
        cache.fetch(f"{files.url}/m/{sha}", sha, len(data))
    assert not cache.has(sha)
    assert cache.fetch(f"{files.url}/m/{sha}", sha, len(data))
    assert files.ranges == ["bytes=300000-"] and cache.stats.resumed == 1
    assert cache.path(sha).read_bytes() == data


def test_wrong_bytes_are_never_stored(files: Files, tmp_path: Path) -> None:
    cache = FileCache(tmp_path, 10**6)
    files.files[f"/m/{A}"] = b"not the announced bytes"
    with pytest.raises(VerifyError, match="do not hash to the announced aaaaaaaaaaaa"):
        cache.fetch(f"{files.url}/m/{A}", A, 23)
    assert not cache.has(A) and not cache.path(A).exists() and cache.stats.rejected == 1


def test_lru_eviction_never_evicts_pinned_files_and_the_index_survives(files: Files, tmp_path: Path) -> None:
    shas = [put(files, bytes([i]) * 1000) for i in range(4)]
    cache = FileCache(tmp_path, 2500)
    for sha in shas[:2]:
        assert cache.fetch(f"{files.url}/m/{sha}", sha, 1000)
    cache.touch(shas[0])  # shas[1] is now the least recently used
    assert cache.fetch(f"{files.url}/m/{shas[2]}", shas[2], 1000, pinned=[shas[0], shas[2]])
    assert not cache.has(shas[1]) and cache.has(shas[0])
    assert cache.fetch(f"{files.url}/m/{shas[3]}", shas[3], 1000, pinned=[shas[3]])
    assert not cache.has(shas[0]) and cache.stats.evicted == 2  # the least recently used unpinned one
    # Everything in the cache pinned: no room, nothing evicted.
    assert not cache.fetch(f"{files.url}/m/{shas[1]}", shas[1], 1000, pinned=[shas[2], shas[3]])
    assert cache.stats.no_room == 1 and cache.stats.evicted == 2
    again = FileCache(tmp_path, 2500)
    assert {s for s in shas if again.has(s)} == {s for s in shas if cache.has(s)}


class Log:
    def __init__(self) -> None:
        self.shown: list[tuple[datetime, Shown]] = []

    def show(self, what: Shown, at: datetime) -> None:
        self.shown.append((at, what))


def ready(tmp: Path, *shas: str) -> FileCache:
    cache = FileCache(tmp, 10**6)
    for sha in shas:
        cache.path(sha).parent.mkdir(parents=True, exist_ok=True)
        cache.path(sha).write_bytes(b"x")
        cache._index[sha] = [1.0, 0.0]
    return cache


def schedule(now: datetime, **kw: Any) -> ScheduleData:
    return ScheduleData.model_validate({
        "version": 1, "valid_from": now.isoformat(), "valid_until": (now + timedelta(hours=48)).isoformat(),
        "timezone": "Europe/Berlin", "default": [{"media": B, "duration_s": 10}], **kw,
    })


EVENING = {"id": "evening", "layer": "normal", "items": [{"media": A, "duration_s": 30}],
           "dayparts": [{"weekdays": [0, 1, 2, 3, 4, 5, 6], "start": "18:00", "end": "20:00"}]}
ALWAYS = {"id": "always", "layer": "normal", "items": [{"media": A, "duration_s": 30}]}


async def run_until(player: Player, clock: ManualClock, t: datetime) -> None:
    from tests.signage.test_end_to_end import step_to

    await step_to(player, clock, t)


async def settle(player: Player) -> None:
    from tests.signage.test_end_to_end import settle as settle_

    await settle_(player)


@pytest.mark.parametrize(("trusted", "campaigns", "expected"), [
    (True, [EVENING], {"evening"}),
    (False, [EVENING], {None}),
    (False, [EVENING, ALWAYS], {"always"}),
])
def test_an_untrusted_clock_plays_only_always_on_campaigns(tmp_path: Path, trusted: bool, campaigns: list[Any],
                                                           expected: set[str | None]) -> None:
    now = datetime.combine(datetime(2026, 6, 1).date(), time(16, 30), tzinfo=UTC)  # 18:30 in Berlin
    pops: list[PopData] = []

    async def main() -> None:
        async def publish(p: PopData) -> None:
            pops.append(p)

        clock = ManualClock(now, trusted=trusted)
        screen = Log()
        player = Player("n1", "main", screen, ready(tmp_path, A, B), publish, clock)
        player.load(schedule(now, campaigns=campaigns))
        task = asyncio.create_task(player.run())
        await run_until(player, clock, now + timedelta(minutes=2))
        await player.stop()
        await task
        assert {s.campaign for _, s in screen.shown} == expected

    asyncio.run(asyncio.wait_for(main(), 20))
    assert pops and {p.campaign_id for p in pops} == expected


def test_missing_media_falls_back_to_the_default_then_to_the_idle_card(tmp_path: Path) -> None:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)

    async def main() -> list[Shown]:
        async def publish(_p: PopData) -> None:
            return None

        clock = ManualClock(now)
        screen = Log()
        cache = ready(tmp_path, B)
        player = Player("n1", "main", screen, cache, publish, clock)
        player.load(schedule(now, campaigns=[ALWAYS]))
        task = asyncio.create_task(player.run())
        await run_until(player, clock, now + timedelta(seconds=45))
        # The default's file goes too (evicted): the idle card, never black.
        cache._index.clear()
        await run_until(player, clock, now + timedelta(seconds=75))
        await player.stop()
        await task
        return [s for _, s in screen.shown]

    shown = asyncio.run(asyncio.wait_for(main(), 20))
    assert [(s.media, s.reason) for s in shown] == [(B, "fallback"), (B, "fallback"), (None, "idle")]


def test_records_that_cannot_be_true_are_dropped_and_counted(tmp_path: Path) -> None:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)

    async def main() -> Player:
        sent: list[PopData] = []

        async def publish(p: PopData) -> None:
            sent.append(p)

        clock = ManualClock(now)
        player = Player("n1", "main", Log(), ready(tmp_path, A, B), publish, clock)
        player.load(schedule(now))
        task = asyncio.create_task(player.run())
        await run_until(player, clock, now + timedelta(seconds=25))
        # The wall clock is stepped back an hour (a bad NTP answer): the next record would overlap.
        clock._now -= timedelta(hours=1)
        await settle(player)
        await run_until(player, clock, clock.now() + timedelta(seconds=15))
        await player.stop()
        await task
        assert [p.duration_ms for p in sent][:2] == [10_000, 10_000]
        return player

    player = asyncio.run(asyncio.wait_for(main(), 20))
    assert player.stats.dropped is not None and player.stats.dropped["overlap"] >= 1


def test_switches_on_a_real_timer_within_milliseconds(tmp_path: Path) -> None:
    async def main() -> list[float]:
        async def publish(_p: PopData) -> None:
            return None

        now = datetime.now(UTC)
        player = Player("n1", "main", Log(), ready(tmp_path, B), publish)
        player.load(ScheduleData.model_validate({
            "version": 1, "valid_from": now.isoformat(), "valid_until": (now + timedelta(hours=1)).isoformat(),
            "timezone": "UTC", "default": [{"media": B, "duration_s": 0.1}],
        }))
        task = asyncio.create_task(player.run())
        assert player.stats.jitter_ms is not None
        while len(player.stats.jitter_ms) < 10:  # noqa: ASYNC110 - a bounded wait in a test
            await asyncio.sleep(0.05)
        await player.stop()
        await task
        return player.stats.jitter_ms

    jitter = asyncio.run(asyncio.wait_for(main(), 20))
    assert min(jitter) >= 0 and sorted(jitter)[len(jitter) // 2] < 50


def test_put_verifies_keeps_the_budget_and_tells_the_owner_what_it_evicted(tmp_path: Path) -> None:
    """What the catalogue's image cache uses: bytes fetched whole, handed over, verified; only files
    used before `older_than` make way, and the owner hears of each eviction."""
    evicted: list[str] = []
    cache = FileCache(tmp_path, 250, on_evict=evicted.append)
    blobs = [bytes([i]) * 100 for i in range(3)]
    shas = [hashlib.sha256(b).hexdigest() for b in blobs]
    with pytest.raises(VerifyError, match=f"bytes announced as {shas[0][:12]}"):
        cache.put(shas[0], blobs[1])
    assert cache.stats.rejected == 1 and not cache.has(shas[0])
    assert cache.put(shas[0], blobs[0]) and cache.put(shas[1], blobs[1])
    # Nothing was used before 0: no room, nothing evicted.
    assert not cache.put(shas[2], blobs[2], older_than=0.0)
    assert cache.stats.no_room == 1 and evicted == []
    cache.touch(shas[0])
    assert cache.put(shas[2], blobs[2], older_than=float("inf"))
    assert evicted == [shas[1]] and cache.has(shas[0]) and cache.has(shas[2]) and not cache.path(shas[1]).exists()
    assert cache.path(shas[2]).read_bytes() == blobs[2] and cache.used_bytes() == 200
