"""Keeps the box's catalogue at the version the cloud announces, and its image cache filled.

The announcement comes over the authenticated bus (`dn/{node}/catalog`, retained) and names the
sync files by sha256; the files themselves are plain HTTP GETs from the cloud. The latest accepted
announcement is kept in `announcement.json` beside the catalogue: the bus runs a command once
only, so after a restart the box resumes from that file, not from a redelivery. An announcement of
another epoch (a new catalogue database in the cloud) means a snapshot, whatever the versions say. A file is applied
only if its bytes hash to the announced value and it parses completely; anything else is rejected,
counted, and fetched again after a backoff. Images are fetched in the background, verified the same
way, and kept within a disk budget by evicting the least recently used.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from broker.client import JitteredBackoff
from broker.payloads import CatalogData, CatalogFile
from edge.catalogue.store import CatalogueStore, CorruptSyncFile
from edge.filecache import FileCache, VerifyError

__all__ = ["CatalogueSync", "FetchError", "SyncStats"]

log = logging.getLogger(__name__)

MAX_SYNC_FILE = 2 * 1024**3


class FetchError(OSError):
    """The cloud could not be reached (`status` None) or answered with an HTTP error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class SyncStats:
    applied: int = 0
    snapshots: int = 0
    rejected: int = 0
    """Sync files refused: wrong hash or malformed."""
    fetch_errors: int = 0
    images_stored: int = 0
    images_rejected: int = 0
    images_evicted: int = 0
    last_error: str | None = None
    apply_s: list[float] = field(default_factory=list)


class CatalogueSync:
    def __init__(
        self,
        store: CatalogueStore,
        cloud_url: str,
        *,
        image_budget_bytes: int = 512 * 1024**2,
        timeout: float = 30.0,
        backoff: JitteredBackoff | None = None,
        state_file: Path | None = None,
    ) -> None:
        self.store = store
        self.cloud_url = cloud_url.rstrip("/")
        self.image_budget = image_budget_bytes
        self.images = FileCache(store.image_dir, max(0, image_budget_bytes), timeout=timeout, on_evict=self._evicted)
        """The verified image files (index, LRU, budget): the box's one file cache implementation."""
        self.timeout = timeout
        self.backoff = backoff or JitteredBackoff(1.0, 60.0)
        self.stats = SyncStats()
        self.state_file = state_file or store.directory / "announcement.json"
        self.changed = asyncio.Event()
        """Set whenever the local version changes (tests, diagnostics)."""
        self._wake = asyncio.Event()
        self._images_wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = asyncio.Lock()
        self.latest: CatalogData | None = self._load()
        if self.latest is not None:
            self._wake.set()

    # -- bus side ----------------------------------------------------------------------------------

    def _load(self) -> CatalogData | None:
        try:
            return CatalogData.model_validate_json(self.state_file.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            log.warning("catalogue: ignoring %s (%s); waiting for the next announcement", self.state_file, exc)
            return None

    def _save(self, data: CatalogData) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.state_file.parent, prefix=".announcement-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data.model_dump_json().encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def supersedes(self, data: CatalogData) -> bool:
        """Whether `data` replaces the latest accepted announcement (newer, or of another epoch)."""
        latest = self.latest
        return latest is None or data.epoch != latest.epoch or data.version >= latest.version

    def _describe(self, data: CatalogData) -> str:
        held = f"box holds version {self.store.version}" + (f" of epoch {self.store.epoch}" if self.store.epoch else "")
        return f"catalogue version {data.version} accepted ({held})"

    async def accept(self, data: CatalogData) -> str:
        """The bus's `catalog` command: remember the announcement durably, then sync towards it.
        Returns the ack's detail; raises (the ack says ok=false) if it cannot be remembered."""
        async with self._accepting:
            if not self.supersedes(data):
                assert self.latest is not None
                return f"catalogue version {data.version} ignored: version {self.latest.version} was announced later"
            await asyncio.to_thread(self._save, data)
            self.latest = data
            self._wake.set()
            return self._describe(data)

    def on_announcement(self, data: CatalogData) -> None:
        """`accept` without waiting (the file is written on this thread)."""
        if self.supersedes(data):
            self._save(data)
            self.latest = data
            self._wake.set()

    # -- fetching ----------------------------------------------------------------------------------

    def _get(self, path: str, limit: int) -> bytes:
        url = self.cloud_url + path
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                data: bytes = resp.read(limit + 1)
        except urllib.error.HTTPError as exc:
            raise FetchError(f"GET {url}: HTTP {exc.code}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise FetchError(f"GET {url}: {getattr(exc, 'reason', exc)}") from None
        if len(data) > limit:
            raise FetchError(f"GET {url}: larger than {limit} bytes")
        return data

    def _fetch_verified(self, ref: CatalogFile) -> bytes:
        data = self._get(ref.path, min(ref.size, MAX_SYNC_FILE) + 1)
        digest = hashlib.sha256(data).hexdigest()
        if digest != ref.sha256:
            raise CorruptSyncFile(f"{ref.path}: sha256 {digest[:12]}… does not match the announced {ref.sha256[:12]}…")
        return data

    def choose(self, ann: CatalogData) -> CatalogFile | None:
        """None if the box already holds `ann`; the delta from the local version if offered (same
        epoch and region), else the snapshot."""
        local = self.store.version
        same = ann.epoch == self.store.epoch and (ann.region or None) == self.store.region
        if same and ann.version <= local:
            return None
        if same and local > 0:
            for d in ann.deltas:
                if d.from_version == local:
                    return d
        if ann.snapshot is None:
            raise CorruptSyncFile(
                f"the announcement of version {ann.version} offers no snapshot and no delta from local version {local}"
            )
        return ann.snapshot

    def sync_once(self, ann: CatalogData) -> bool:
        """Bring the store to `ann.version`; True if something was applied. Blocking (run in a thread)."""
        ref = self.choose(ann)
        if ref is None:
            return False
        data = self._fetch_verified(ref)
        started = time.perf_counter()
        try:
            text = io.TextIOWrapper(gzip.GzipFile(fileobj=io.BytesIO(data)), encoding="utf-8")
            self.store.apply(text, expect_from=ref.from_version, expect_to=ann.version, region=ann.region, epoch=ann.epoch)
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise CorruptSyncFile(f"{ref.path}: not a readable gzip'd sync file ({exc})") from None
        self.stats.apply_s.append(time.perf_counter() - started)
        self.stats.applied += 1
        if ref.from_version == 0:
            self.stats.snapshots += 1
        log.info(
            "catalogue: applied %s to version %d (%d bytes, %d products)",
            "snapshot" if ref.from_version == 0 else f"delta from {ref.from_version}", ann.version, len(data),
            self.store.count(),
        )
        return True

    # -- loops -------------------------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        images = asyncio.create_task(self._image_loop(), name="catalogue-images")
        try:
            while not self._stop.is_set():
                await self._wait(self._wake, None)
                self._wake.clear()
                while (ann := self.latest) is not None and not self._stop.is_set():
                    try:
                        applied = await asyncio.to_thread(self.sync_once, ann)
                    except Exception as exc:
                        if isinstance(exc, CorruptSyncFile):
                            self.stats.rejected += 1
                        elif isinstance(exc, FetchError):
                            self.stats.fetch_errors += 1
                        else:
                            # e.g. the disk is full: the copy is unchanged (one transaction); keep trying.
                            log.exception("catalogue: applying version %d failed", ann.version)
                        self.stats.last_error = str(exc)
                        delay = self.backoff.next_delay()
                        log.warning("catalogue: %s; trying again in %.1f s", exc, delay)
                        await self._wait(self._wake, delay)
                        self._wake.clear()
                        continue
                    self.backoff.reset()
                    if applied:
                        self.changed.set()
                        self._images_wake.set()
                    if self.latest is ann:
                        break
        finally:
            images.cancel()
            await asyncio.gather(images, return_exceptions=True)

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def _wait(self, event: asyncio.Event, timeout: float | None) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        ev = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({stop, ev}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            ev.cancel()

    async def _image_loop(self) -> None:
        backoff = JitteredBackoff(1.0, 60.0)
        while not self._stop.is_set():
            self._images_wake.clear()
            try:
                progressed = await asyncio.to_thread(self.fetch_images)
                backoff.reset()
            except Exception as exc:
                if isinstance(exc, FetchError):
                    self.stats.fetch_errors += 1
                else:
                    log.exception("catalogue: image fetch failed")
                self.stats.last_error = str(exc)
                await self._wait(self._images_wake, backoff.next_delay())
                continue
            if not progressed:
                await self._wait(self._images_wake, 60.0)

    def request_image(self, sha256: str) -> None:
        """Someone asked for an image that is not cached: fetch it soon (thread-safe: the local API
        calls this from its own threads)."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the agent is stopping
                self._loop.call_soon_threadsafe(self._images_wake.set)

    def fetch_images(self, batch: int = 50) -> int:
        """Download wanted images up to the budget into the shared verified cache (`edge.filecache`,
        the signage player's too); return how many were stored. Blocking."""
        stored = 0
        if self.image_budget <= 0:
            return 0
        for sha, used_at in self.store.wanted_images(batch):
            try:
                data = self._get(f"/catalogue/files/{sha}", 20 * 1024**2)
            except FetchError as exc:
                if exc.status is None:
                    raise  # the cloud is unreachable: back off
                # One image the cloud cannot serve must not hold up the others.
                self.stats.fetch_errors += 1
                self.stats.last_error = str(exc)
                self.store.image_later(sha)
                continue
            try:
                # Only images used less recently than the one wanted make way for it: otherwise a
                # full cache would evict and re-fetch the same images for ever.
                if not self.images.put(sha, data, older_than=used_at):
                    break
            except VerifyError:
                # Never stored, never served: asked for again on the next round.
                self.stats.images_rejected += 1
                log.warning("catalogue: image %s… failed verification; will fetch again", sha[:12])
                continue
            self.store.image_stored(sha, len(data))
            self.stats.images_stored += 1
            stored += 1
        return stored

    def _evicted(self, sha256: str) -> None:
        """The cache made room: the image is wanted again (fetched when asked for)."""
        self.store.image_forget(sha256)
        self.stats.images_evicted += 1
