"""A content-addressed file cache on the box: verified, resumable downloads and LRU eviction under
a disk budget, for any capability that fetches files named by sha256 over an authenticated bus.

Used by the signage player (media) and the catalogue (product images, `edge.catalogue.sync`). A
file is trusted only if its bytes hash to the value that came over the bus; it is written aside and
renamed, so a reader never sees a partial file under its hash; the budget is kept by evicting the
least recently used files (`on_evict` tells the owner, e.g. so the catalogue wants the image again).
Small files fetched whole are handed over with `put`; for large media an interrupted download resumes with an HTTP Range request
from the bytes already on disk, and the caller pins the files needed soon: only unpinned files make
way (a full cache must not evict and re-fetch what is about to play, for ever); a file that does not
fit beside the pinned ones is not fetched and counted (`no_room`).

The index (sizes, last use) is a small JSON file rewritten atomically; it is rebuilt from the
directory if it is lost, and files on disk that do not hash to their name are removed then.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CacheStats", "FetchError", "FileCache", "VerifyError"]

_SHA = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1024 * 1024


class FetchError(OSError):
    """The server could not be reached (`status` None) or answered with an HTTP error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class VerifyError(ValueError):
    """Downloaded bytes do not hash to the announced sha256 (never stored, never served)."""


@dataclass
class CacheStats:
    stored: int = 0
    rejected: int = 0
    """Downloads whose bytes did not hash to the announced value."""
    evicted: int = 0
    resumed: int = 0
    """Downloads continued from a partial file (HTTP Range)."""
    fetch_errors: int = 0
    no_room: int = 0
    """Files not fetched because everything else in the budget is pinned or more recent."""


class FileCache:
    """Files under `root/ab/abcdef…`; thread-safe (downloads run on worker threads)."""

    def __init__(self, root: Path, budget_bytes: int, *, timeout: float = 30.0,
                 on_evict: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.on_evict = on_evict
        self.root.mkdir(parents=True, exist_ok=True)
        self.budget = budget_bytes
        self.timeout = timeout
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._index_file = root / "index.json"
        self._index: dict[str, list[float]] = self._load()
        """sha256 → [size, last used (epoch s)] of complete, verified files."""

    # -- index ---------------------------------------------------------------------------------------

    def _load(self) -> dict[str, list[float]]:
        try:
            raw = json.loads(self._index_file.read_text())
            index = {k: [float(v[0]), float(v[1])] for k, v in raw.items() if _SHA.match(k)}
        except (OSError, ValueError, TypeError, IndexError, AttributeError):
            index = {}
            for path in self.root.glob("??/*"):
                if _SHA.match(path.name) and _sha_of(path) == path.name:
                    index[path.name] = [float(path.stat().st_size), path.stat().st_mtime]
                elif _SHA.match(path.name):
                    path.unlink(missing_ok=True)
        return {k: v for k, v in index.items() if self.path(k).is_file()}

    def _save(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".index-")
        with os.fdopen(fd, "w") as f:
            json.dump(self._index, f)
        os.replace(tmp, self._index_file)

    def path(self, sha256: str) -> Path:
        if not _SHA.match(sha256):
            raise ValueError(f"{sha256!r} is not a sha256 hex digest")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        """Complete and verified (verified when it was stored; the name is the hash)."""
        with self._lock:
            return sha256 in self._index

    def touch(self, sha256: str) -> None:
        with self._lock:
            if sha256 in self._index:
                self._index[sha256][1] = time.time()

    def used_bytes(self) -> int:
        with self._lock:
            return int(sum(v[0] for v in self._index.values()))

    def count(self) -> int:
        with self._lock:
            return len(self._index)

    # -- storing ------------------------------------------------------------------------------------

    def put(self, sha256: str, data: bytes, *, pinned: Iterable[str] = (), older_than: float | None = None) -> bool:
        """Store `data` (already downloaded whole) under `sha256` if it hashes to it; True if the file
        is now cached, False if there was no room. `older_than`: only files last used before this
        time (epoch s) may make way. Raises `VerifyError` for bytes that are not the announced ones."""
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            self.stats.rejected += 1
            raise VerifyError(f"bytes announced as {sha256[:12]}… hash to {actual[:12]}…; not stored, will fetch again")
        if self.has(sha256):
            self.touch(sha256)
            return True
        if len(data) > self.budget or not self._make_room(len(data), set(pinned), older_than):
            self.stats.no_room += 1
            return False
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".put-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with self._lock:
            self._index[sha256] = [float(len(data)), time.time()]
            self._save()
        self.stats.stored += 1
        return True

    # -- fetching ------------------------------------------------------------------------------------

    def fetch(self, url: str, sha256: str, size: int, *, pinned: Iterable[str] = ()) -> bool:
        """Download `url` into the cache if it is not there; True if the file is now cached.
        Raises `FetchError` (server unreachable or an HTTP error) or `VerifyError`. Blocking."""
        if self.has(sha256):
            self.touch(sha256)
            return True
        if size > self.budget or not self._make_room(size, set(pinned)):
            self.stats.no_room += 1
            return False
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have < size:
            self._download(url, part, have, size)
        if _sha_of(part) != sha256:
            raise self._reject(part, f"{url}: the bytes do not hash to the announced {sha256[:12]}…; deleted, will fetch again")
        os.replace(part, target)
        with self._lock:
            self._index[sha256] = [float(size), time.time()]
            self._save()
        self.stats.stored += 1
        return True

    def _reject(self, part: Path, message: str) -> VerifyError:
        part.unlink(missing_ok=True)
        self.stats.rejected += 1
        return VerifyError(message)

    def _download(self, url: str, part: Path, have: int, size: int) -> None:
        headers = {"Range": f"bytes={have}-"} if have else {}
        req = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                if have and resp.status != 206:
                    # The server ignored the range: start again from the first byte.
                    have = 0
                elif have:
                    self.stats.resumed += 1
                length = resp.headers.get("Content-Length")
                body = int(length) if length and length.isdigit() else None
                written = have
                with open(part, "ab" if have else "wb") as f:
                    while chunk := resp.read(_CHUNK):
                        written += len(chunk)
                        if written > size:
                            break
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
        except urllib.error.HTTPError as exc:
            self.stats.fetch_errors += 1
            raise FetchError(f"GET {url}: HTTP {exc.code}", exc.code) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            # What arrived stays in the .part file: the next attempt resumes from there.
            self.stats.fetch_errors += 1
            raise FetchError(f"GET {url}: {getattr(exc, 'reason', exc)}") from None
        if written > size:
            raise self._reject(part, f"{url}: longer than the announced {size} bytes; deleted, will fetch again")
        if body is not None and written < have + body:
            # The connection ended early (http.client does not raise for that): resume next time.
            self.stats.fetch_errors += 1
            raise FetchError(f"GET {url}: the connection ended after {written} of {size} bytes; will resume")
        if written < size:
            raise self._reject(part, f"{url}: {written} bytes, not the announced {size}; deleted, will fetch again")

    def _make_room(self, size: int, pinned: set[str], older_than: float | None = None) -> bool:
        evicted: list[str] = []
        try:
            with self._lock:
                return self._make_room_locked(size, pinned, older_than, evicted)
        finally:
            # Outside the lock: the owner's callback may read the cache.
            for k in evicted:
                if self.on_evict is not None:
                    self.on_evict(k)

    def _make_room_locked(self, size: int, pinned: set[str], older_than: float | None, evicted: list[str]) -> bool:
        used = sum(v[0] for v in self._index.values())
        if used + size <= self.budget:
            return True
        victims = sorted((v[1], k) for k, v in self._index.items()
                         if k not in pinned and (older_than is None or v[1] < older_than))
        freed = 0.0
        chosen = []
        for _, k in victims:
            if used - freed + size <= self.budget:
                break
            chosen.append(k)
            freed += self._index[k][0]
        if used - freed + size > self.budget:
            return False
        for k in chosen:
            with contextlib.suppress(FileNotFoundError):
                self.path(k).unlink()
            del self._index[k]
            self.stats.evicted += 1
            evicted.append(k)
        self._save()
        return True


def _sha_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
