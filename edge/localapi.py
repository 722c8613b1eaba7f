"""The box's one local HTTP API (owned by the agent; components add routes to it).

Standard library only, for memory: the agent's idle budget is 60 MB on a Pi-class box, and a web
framework plus an ASGI server would cost more than the whole agent does.

Concurrency: one selector thread owns every connection while it is idle or still sending its
request, and hands a connection to the worker pool only once a whole request (head and body) has
arrived. So idle keep-alive connections and slow or half-sent requests never hold a worker thread:
they wait in the selector until `idle_timeout_s` (nothing sent) or `request_timeout_s` (counted
from a request's first byte: slow-loris) closes them. Workers run the route and write the answer,
then give a keep-alive connection back to the selector. Open connections are bounded; when full,
the longest-idle one is closed to make room for the newcomer.

Every answer is JSON except a route's own binary body (images); every error is
`{"error": "...", "status": N}` and names the input, what was expected and what was found.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import selectors
import socket
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote

from pydantic import BaseModel, ValidationError

from firmware_config import LocalApiConfig

__all__ = [
    "ApiError",
    "LocalApi",
    "Param",
    "Request",
    "Response",
    "Route",
    "integer",
    "json_response",
    "text",
]

log = logging.getLogger(__name__)

_MAX_HEAD = 16 * 1024
_MAX_HEADERS = 64
_MAX_FIELDS = 32
_MAX_SEGMENT = 200
_WRITE_TIMEOUT_S = 10.0
_METHOD = re.compile(r"[A-Z]{1,16}")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_INT = re.compile(r"-?[0-9]{1,15}")


class ApiError(Exception):
    """An answer other than 200, with a message for the caller."""

    def __init__(self, status: HTTPStatus, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


@dataclass(frozen=True, slots=True)
class Param:
    """A query parameter a route accepts, validated before the route runs."""

    name: str
    kind: Literal["text", "int"]
    required: bool = False
    default: str | int | None = None
    max_len: int = 200
    lo: int = 0
    hi: int = 2**31 - 1


def text(name: str, *, required: bool = False, default: str | None = None, max_len: int = 200) -> Param:
    """Printable text (no control characters) of at most `max_len` characters."""
    return Param(name, "text", required=required, default=default, max_len=max_len)


def integer(name: str, default: int, lo: int, hi: int) -> Param:
    """A whole number within lo..hi."""
    return Param(name, "int", default=default, lo=lo, hi=hi)


@dataclass(frozen=True, slots=True)
class Response:
    body: bytes
    status: HTTPStatus = HTTPStatus.OK
    content_type: str = "application/json; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


def json_response(value: Any, status: HTTPStatus = HTTPStatus.OK, headers: Mapping[str, str] | None = None) -> Response:
    return Response(json.dumps(value, ensure_ascii=False).encode(), status, headers=dict(headers or {}))


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request, as a route's handler sees it."""

    method: str
    path: str
    args: Mapping[str, str]
    """Path arguments (`{name}` in the route's path)."""
    params: Mapping[str, str | int | None]
    """Query parameters, declared and validated by the route (absent optional ones: their default)."""
    body: BaseModel | None
    """The JSON body, validated against the route's `body` model (POST routes)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """The request's headers, names in lower case (a header given twice: its values joined by ', ')."""


Handler = Callable[[Request], Response | Any]


@dataclass(frozen=True, slots=True)
class Route:
    """`path` is literal segments and `{name}` arguments; a last `{name...}` takes the rest of the path
    (slashes included). Handlers run on worker threads and must be thread-safe."""

    method: Literal["GET", "POST"]
    path: str
    handler: Handler
    params: tuple[Param, ...] = ()
    body: type[BaseModel] | None = None
    """POST: the model the JSON body must match (content type application/json)."""

    def match(self, segs: Sequence[str]) -> dict[str, str] | None:
        pattern = [p for p in self.path.split("/") if p]
        out: dict[str, str] = {}
        for i, part in enumerate(pattern):
            if part.startswith("{") and part.endswith("...}"):
                if i >= len(segs):
                    return None
                out[part[1:-4]] = "/".join(segs[i:])
                return out
            if i >= len(segs):
                return None
            if part.startswith("{") and part.endswith("}"):
                out[part[1:-1]] = segs[i]
            elif part != segs[i]:
                return None
        return out if len(segs) == len(pattern) else None


# -- request parsing (selector thread) ---------------------------------------------------------------


@dataclass(slots=True)
class _Head:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body_length: int
    keep_alive: bool


class _Incomplete(Exception):
    pass


def _printable(value: str, what: str) -> None:
    for i, ch in enumerate(value):
        if unicodedata.category(ch) == "Cc":
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                f"{what} holds control character U+{ord(ch):04X} at position {i}: expected printable text",
            )


def _parse_head(buf: bytes | bytearray, max_body: int) -> tuple[_Head, int]:
    """The request head in `buf` and where its body starts; `_Incomplete` if more bytes are needed."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > _MAX_HEAD:
            raise ApiError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"the request head is larger than {_MAX_HEAD} bytes")
        raise _Incomplete
    if end > _MAX_HEAD:
        raise ApiError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"the request head is larger than {_MAX_HEAD} bytes")
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"request line {lines[0][:80]!r} is not 'METHOD /path HTTP/1.1'")
    method, target, version = parts
    if not _METHOD.fullmatch(method):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"method {method[:20]!r} is not an HTTP method: expected GET or POST")
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"protocol {version[:20]!r} is not supported: expected HTTP/1.1 or HTTP/1.0")
    if not target.startswith("/") or not target.isascii() or any(ord(c) <= 32 or ord(c) == 127 for c in target):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"request target {target[:80]!r} is not a path: expected /path?query, percent-encoded")
    if len(lines) - 1 > _MAX_HEADERS:
        raise ApiError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"{len(lines) - 1} header lines: at most {_MAX_HEADERS} accepted")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"header line {line[:60]!r} is not 'Name: value'")
        value = value.strip(" \t")
        if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"header {name!r} holds a control character")
        key = name.lower()
        if key in headers and key in ("content-length", "content-type", "host", "transfer-encoding"):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"header {name!r} is given twice")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if "transfer-encoding" in headers:
        raise ApiError(HTTPStatus.BAD_REQUEST, "chunked or encoded bodies are not supported: send Content-Length")
    raw_length = headers.get("content-length", "0")
    if not raw_length.isdigit() or len(raw_length) > 12:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"Content-Length {raw_length[:20]!r} is not a byte count")
    length = int(raw_length)
    if length > max_body:
        raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is {length} bytes: at most {max_body} accepted")
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    return _Head(method, target, version, headers, length, keep_alive), end + 4


# -- connections -------------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Conn:
    sock: socket.socket
    peer: str
    buf: bytearray = field(default_factory=bytearray)
    last_active: float = 0.0
    request_started: float | None = None
    """When the first byte of the request being received arrived (None between requests)."""
    with_worker: bool = False
    """A worker has it: the selector neither watches nor times it out meanwhile."""


class LocalApi:
    """Serves `routes` on `cfg.host:cfg.port` (bound at construction: a busy port raises OSError)."""

    def __init__(self, cfg: LocalApiConfig, routes: Sequence[Route] = ()) -> None:
        self.cfg = cfg
        self._routes: list[Route] = []
        for route in routes:
            self.add_route(route)
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        self._listener = socket.create_server((cfg.host, cfg.port), family=family, backlog=128)
        self._listener.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._returned: queue.SimpleQueue[tuple[_Conn, bool]] = queue.SimpleQueue()
        """Connections workers are done with, and whether to keep them open (only the selector thread
        touches the connection set)."""
        self._conns: set[_Conn] = set()
        self._pool = ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="local-api")
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.requests = 0
        self.errors = 0
        self.timeouts = 0
        self.evicted = 0

    def add_route(self, route: Route) -> None:
        if any(r.method == route.method and r.path == route.path for r in self._routes):
            raise ValueError(f"route {route.method} {route.path} is registered twice")
        self._routes.append(route)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        host = self._listener.getsockname()[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def stats(self) -> dict[str, int]:
        """Counters since the start (approximate: workers update them without a lock)."""
        return {"connections": len(self._conns), "requests": self.requests, "errors": self.errors,
                "timeouts": self.timeouts, "evicted": self.evicted}

    def start(self) -> None:
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._serve, name="local-api-io", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close every connection, let running requests finish (bounded by the write
        timeout), then return."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(10)
        self._pool.shutdown(wait=True, cancel_futures=True)
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        self._sel.close()

    # -- selector thread -------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._stopping.is_set():
                for key, _mask in self._sel.select(timeout=self._next_deadline()):
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        self._readable(key.data)
                self._expire()
        except Exception:
            log.exception("local api: the connection thread failed; the API stops answering")
        finally:
            for conn in list(self._conns):
                self._close(conn)

    def _next_deadline(self) -> float:
        now = time.monotonic()
        soonest = 1.0
        for conn in self._conns:
            if conn.with_worker:
                continue
            if conn.request_started is not None:
                soonest = min(soonest, conn.request_started + self.cfg.request_timeout_s - now)
            else:
                soonest = min(soonest, conn.last_active + self.cfg.idle_timeout_s - now)
        return max(0.0, soonest)

    def _accept(self) -> None:
        while True:
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("local api: accept failed: %s", exc)
                return
            if len(self._conns) >= self.cfg.max_connections and not self._evict_idle():
                self._refuse(sock)
                continue
            sock.setblocking(False)
            conn = _Conn(sock, f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer), last_active=time.monotonic())
            self._conns.add(conn)
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _evict_idle(self) -> bool:
        idle = [c for c in self._conns if not c.with_worker and c.request_started is None and not c.buf]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.last_active)
        self.evicted += 1
        self._close(victim)
        return True

    def _refuse(self, sock: socket.socket) -> None:
        # Every connection is mid-request: answer at once rather than let the newcomer hang.
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.send(self._encode(self._error_response(ApiError(
                HTTPStatus.SERVICE_UNAVAILABLE, f"the box serves at most {self.cfg.max_connections} connections at once; try again"
            )), keep_alive=False))
        sock.close()

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        while True:
            try:
                conn, keep = self._returned.get_nowait()
            except queue.Empty:
                return
            conn.with_worker = False
            if not keep or self._stopping.is_set():
                self._close(conn, unregister=False)
                continue
            conn.sock.setblocking(False)
            conn.last_active = time.monotonic()
            self._sel.register(conn.sock, selectors.EVENT_READ, conn)
            if conn.buf:  # a pipelined request already arrived
                conn.request_started = conn.last_active
                self._try_dispatch(conn)

    def _readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        now = time.monotonic()
        conn.last_active = now
        if conn.request_started is None:
            conn.request_started = now
        conn.buf += data
        self._try_dispatch(conn)

    def _try_dispatch(self, conn: _Conn) -> None:
        try:
            head, start = _parse_head(conn.buf, self.cfg.max_body_bytes)
        except _Incomplete:
            return
        except ApiError as exc:
            self._hand_over(conn, None, b"", exc)
            return
        if len(conn.buf) < start + head.body_length:
            return
        body = bytes(conn.buf[start : start + head.body_length])
        del conn.buf[: start + head.body_length]
        self._hand_over(conn, head, body, None)

    def _hand_over(self, conn: _Conn, head: _Head | None, body: bytes, error: ApiError | None) -> None:
        self._sel.unregister(conn.sock)
        conn.request_started = None
        conn.with_worker = True
        try:
            self._pool.submit(self._work, conn, head, body, error)
        except RuntimeError:  # the pool has shut down: we are stopping
            self._close(conn, unregister=False)

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in list(self._conns):
            if conn.with_worker:
                continue
            if conn.request_started is not None and now - conn.request_started > self.cfg.request_timeout_s:
                self.timeouts += 1
                log.info("local api: %s sent a partial request for %.1f s; closing", conn.peer, now - conn.request_started)
                self._hand_over(conn, None, b"", ApiError(
                    HTTPStatus.REQUEST_TIMEOUT,
                    f"the request did not arrive whole within {self.cfg.request_timeout_s:g} s",
                ))
            elif conn.request_started is None and now - conn.last_active > self.cfg.idle_timeout_s:
                self._close(conn)

    def _close(self, conn: _Conn, unregister: bool = True) -> None:
        self._conns.discard(conn)
        if unregister:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()

    # -- worker threads --------------------------------------------------------------------------

    def _work(self, conn: _Conn, head: _Head | None, body: bytes, error: ApiError | None) -> None:
        # Only a well-framed request leaves the connection usable for the next one.
        keep_alive = error is None and head is not None and head.keep_alive
        try:
            if error is not None or head is None:
                response = self._error_response(error or ApiError(HTTPStatus.BAD_REQUEST, "bad request"))
            else:
                response = self._respond(head, body)
            conn.sock.setblocking(True)
            conn.sock.settimeout(_WRITE_TIMEOUT_S)
            conn.sock.sendall(self._encode(response, keep_alive))
        except OSError:
            keep_alive = False
        except Exception:
            log.exception("local api: answering %s failed", conn.peer)
            keep_alive = False
        if not keep_alive:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.sock.close()
        self._returned.put((conn, keep_alive))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _respond(self, head: _Head, body: bytes) -> Response:
        self.requests += 1
        try:
            route, request = self._route(head, body)
            result = route.handler(request)
            return result if isinstance(result, Response) else json_response(result)
        except ApiError as exc:
            return self._error_response(exc)
        except Exception:
            log.exception("local api: %s %s failed", head.method, head.target[:200])
            return self._error_response(ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the box log"))

    def _error_response(self, exc: ApiError) -> Response:
        self.errors += 1
        return json_response({"error": str(exc), "status": int(exc.status)}, exc.status, exc.headers)

    @staticmethod
    def _encode(response: Response, keep_alive: bool) -> bytes:
        status = HTTPStatus(response.status)
        headers = {
            "Content-Type": response.content_type,
            "Content-Length": str(len(response.body)),
            "Cache-Control": "no-store",
            **response.headers,
            "Connection": "keep-alive" if keep_alive else "close",
        }
        head = f"HTTP/1.1 {status.value} {status.phrase}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return (head + "\r\n").encode("latin-1") + response.body

    # -- routing and validation (worker threads) -------------------------------------------------

    def _route(self, head: _Head, body: bytes) -> tuple[Route, Request]:
        path, _, query = head.target.partition("?")
        segs: list[str] = []
        for raw in path.split("/"):
            if not raw:
                continue
            try:
                seg = unquote(raw, errors="strict")
            except UnicodeDecodeError:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"path segment {raw[:60]!r} is not percent-encoded UTF-8") from None
            if len(seg) > _MAX_SEGMENT:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"a path segment is {len(seg)} characters: at most {_MAX_SEGMENT} accepted")
            _printable(seg, "the path")
            segs.append(seg)
        allowed: list[str] = []
        for route in self._routes:
            args = route.match(segs)
            if args is None:
                continue
            if route.method != head.method:
                allowed.append(route.method)
                continue
            return route, Request(head.method, path, args, self._params(route, query), self._body(route, head, body),
                                  head.headers)
        if allowed:
            methods = ", ".join(sorted(set(allowed)))
            raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{head.method} is not allowed on {path[:100]}: use {methods}",
                           {"Allow": methods})
        known = ", ".join(sorted({f"{r.method} {r.path}" for r in self._routes}))
        raise ApiError(HTTPStatus.NOT_FOUND, f"no such path {path[:100]!r}: this box serves {known}")

    @staticmethod
    def _params(route: Route, query: str) -> dict[str, str | int | None]:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, errors="strict", max_num_fields=_MAX_FIELDS)
        except UnicodeDecodeError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "the query string is not percent-encoded UTF-8") from None
        except ValueError:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"the query string has more than {_MAX_FIELDS} parameters") from None
        declared = {p.name: p for p in route.params}
        raw: dict[str, str] = {}
        for name, given in pairs:
            if name not in declared:
                _printable(name, "a parameter name")
                expected = ", ".join(declared) or "none"
                raise ApiError(HTTPStatus.BAD_REQUEST, f"unknown parameter {name[:40]!r} for {route.path}: expected {expected}")
            if name in raw:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"parameter {name!r} is given twice: expected it once")
            raw[name] = given
        out: dict[str, str | int | None] = {}
        for p in route.params:
            value = raw.get(p.name)
            if value is None or (value == "" and not p.required):
                if p.required:
                    raise ApiError(HTTPStatus.BAD_REQUEST, f"parameter {p.name!r} is required for {route.path}")
                out[p.name] = p.default
                continue
            if p.kind == "int":
                if not _INT.fullmatch(value):
                    raise ApiError(HTTPStatus.BAD_REQUEST, f"parameter {p.name!r} is {value[:30]!r}: expected a whole number")
                number = int(value)
                if not p.lo <= number <= p.hi:
                    raise ApiError(HTTPStatus.BAD_REQUEST, f"parameter {p.name!r} is {number}: expected {p.lo}..{p.hi}")
                out[p.name] = number
            else:
                if len(value) > p.max_len:
                    raise ApiError(HTTPStatus.BAD_REQUEST,
                                   f"parameter {p.name!r} is {len(value)} characters long: at most {p.max_len} accepted")
                _printable(value, f"parameter {p.name!r}")
                if p.required and not value.strip():
                    raise ApiError(HTTPStatus.BAD_REQUEST, f"parameter {p.name!r} is empty: expected some text")
                out[p.name] = value
        return out

    @staticmethod
    def _body(route: Route, head: _Head, body: bytes) -> BaseModel | None:
        if route.body is None:
            if body:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"{route.method} {route.path} takes no body (got {len(body)} bytes)")
            return None
        ctype = head.headers.get("content-type", "")
        media, _, options = ctype.partition(";")
        charset = options.strip().lower().removeprefix("charset=") if options.strip() else "utf-8"
        if media.strip().lower() != "application/json" or charset not in ("utf-8", '"utf-8"'):
            raise ApiError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                           f"the body's Content-Type is {ctype[:60]!r}: expected application/json (UTF-8)")
        try:
            value = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
        except UnicodeDecodeError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "the body is not UTF-8") from None
        except RecursionError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "the body is nested too deeply") from None
        except ValueError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"the body is not JSON ({exc})") from None
        try:
            return route.body.model_validate(value)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(x) for x in err["loc"]) or "(body)"
            raise ApiError(HTTPStatus.BAD_REQUEST, f"body field '{where}': {err['msg']}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
