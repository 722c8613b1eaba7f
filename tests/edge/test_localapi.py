"""The box's local API, attacked: bad parameters get clear 400s, idle and half-sent connections hold no
worker, and random requests never get a 5xx, a hang or a non-JSON error."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from edge.catalogue.api import catalogue_routes
from edge.catalogue.store import CatalogueStore
from edge.localapi import LocalApi, Request, Route
from firmware_config import LocalApiConfig
from tests.catalogue.test_box_store import CATALOGUE, lines


class Note(BaseModel):
    text: str
    qty: int = 1


def echo(req: Request) -> Any:
    assert isinstance(req.body, Note)
    return {"got": req.body.model_dump()}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalApi]:
    store = CatalogueStore(tmp_path_factory.mktemp("cat"))
    store.apply(lines("snapshot", 0, 1, [{"op": "put", "p": p} for p in CATALOGUE]), expect_from=0, expect_to=1, region="east")
    cfg = LocalApiConfig(port=0, workers=4, max_connections=64, idle_timeout_s=5, request_timeout_s=0.5, max_body_bytes=1024)
    server = LocalApi(cfg, [Route("GET", "/status", lambda _r: {"ok": True}), *catalogue_routes(store),
                            Route("POST", "/notes", echo, body=Note)])
    server.start()
    try:
        yield server
    finally:
        server.stop()
        store.close()


def call(api: LocalApi, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        assert resp.getheader("Content-Type", "").startswith("application/json"), (path, resp.getheader("Content-Type"))
        return resp.status, json.loads(data)
    finally:
        conn.close()


BAD_REQUESTS = [
    ("/search?q=%00abc", 400, "parameter 'q' holds control character U+0000 at position 0: expected printable text"),
    ("/search?q=ab%1bc", 400, "parameter 'q' holds control character U+001B at position 2: expected printable text"),
    ("/search", 400, "parameter 'q' is required for /search"),
    ("/search?q=%20%20", 400, "parameter 'q' is empty: expected some text"),
    ("/search?q=" + "x" * 201, 400, "parameter 'q' is 201 characters long: at most 200 accepted"),
    ("/search?q=tea&limit=abc", 400, "parameter 'limit' is 'abc': expected a whole number"),
    ("/search?q=tea&limit=1e3", 400, "parameter 'limit' is '1e3': expected a whole number"),
    ("/search?q=tea&limit=201", 400, "parameter 'limit' is 201: expected 1..200"),
    ("/search?q=tea&q=rice", 400, "parameter 'q' is given twice: expected it once"),
    ("/search?q=tea&sort=price", 400, "unknown parameter 'sort' for /search: expected q, limit"),
    ("/search?q=%ff", 400, "the query string is not percent-encoded UTF-8"),
    ("/products?offset=-1", 400, "parameter 'offset' is -1: expected 0..1000000000"),
    ("/products?limit=99999999999999999999", 400, "parameter 'limit' is '99999999999999999999': expected a whole number"),
    ("/products/A%00B", 400, "the path holds control character U+0000 at position 1: expected printable text"),
    ("/products/has%20space", 400, "'has space' is not a SKU: expected 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-', '/'"),
    ("/products/%c3%28", 400, "path segment '%c3%28' is not percent-encoded UTF-8"),
    ("/products/NOPE-1", 404, "no product with SKU 'NOPE-1' in this box's catalogue"),
    ("/images/xyz", 400, "'xyz' is not an image id: expected 64 lowercase hex digits"),
    ("/images/" + "a" * 64, 404, f"image {'a' * 64} is not on this box yet"),
]


@pytest.mark.parametrize(("path", "status", "error"), BAD_REQUESTS)
def test_every_parameter_is_validated_with_a_clear_message(api: LocalApi, path: str, status: int, error: str) -> None:
    assert call(api, "GET", path) == (status, {"error": error, "status": status})


def test_good_requests(api: LocalApi) -> None:
    status, found = call(api, "GET", "/search?q=" + quote("龙井") + "&limit=5")
    assert status == 200 and found[0]["sku"] == "TEA-LJ-250"
    assert call(api, "GET", "/products/TEA-LJ-250")[1]["price"] == "150.00"
    assert call(api, "GET", "/products?category=Food%20%3E%20Tea&limit=1")[1][0]["category"] == "Food > Tea"
    assert call(api, "GET", "/products?category=")[0] == 200  # an empty optional parameter is its default


def test_unknown_paths_and_methods(api: LocalApi) -> None:
    status, body = call(api, "GET", "/nope")
    assert status == 404 and body["error"].startswith("no such path '/nope': this box serves GET /categories, ")
    assert call(api, "DELETE", "/search?q=x") == (405, {"error": "DELETE is not allowed on /search: use GET", "status": 405})
    assert call(api, "GET", "/notes")[0] == 405


@pytest.mark.parametrize(
    ("body", "headers", "status", "error"),
    [
        (b'{"text": "hi"}', {"Content-Type": "application/json"}, 200, None),
        (b'{"text": "hi"}', {"Content-Type": "application/json; charset=utf-8"}, 200, None),
        (b'{"text": "hi"}', {"Content-Type": "text/plain"}, 415,
         "the body's Content-Type is 'text/plain': expected application/json (UTF-8)"),
        (b'{"text": "hi"}', {}, 415, "the body's Content-Type is '': expected application/json (UTF-8)"),
        (b'{"text": ', {"Content-Type": "application/json"}, 400,
         "the body is not JSON (Expecting value: line 1 column 10 (char 9))"),
        (b'{"text": NaN}', {"Content-Type": "application/json"}, 400, "the body is not JSON (NaN is not a JSON number)"),
        (b'\xff', {"Content-Type": "application/json"}, 400, "the body is not UTF-8"),
        (b'{"qty": 2}', {"Content-Type": "application/json"}, 400, "body field 'text': Field required"),
        (b'{"text": "' + b"x" * 2000 + b'"}', {"Content-Type": "application/json"}, 413,
         "the body is 2012 bytes: at most 1024 accepted"),
    ],
)
def test_post_bodies_are_json_size_limited_and_typed(
    api: LocalApi, body: bytes, headers: dict[str, str], status: int, error: str | None
) -> None:
    got_status, got = call(api, "POST", "/notes", body, headers)
    assert got_status == status
    assert got == ({"got": {"text": "hi", "qty": 1}} if error is None else {"error": error, "status": status})


def test_idle_connections_hold_no_worker_and_a_real_request_still_answers_quickly(api: LocalApi) -> None:
    idle = [socket.create_connection(("127.0.0.1", api.port)) for _ in range(20)]
    half = [socket.create_connection(("127.0.0.1", api.port)) for _ in range(4)]
    try:
        for s in half:
            s.sendall(b"GET /status HTTP/1.1\r\nHost: box\r\n")  # never finished
        took = []
        for _ in range(20):
            started = time.perf_counter()
            assert call(api, "GET", "/status") == (200, {"ok": True})
            took.append(time.perf_counter() - started)
        took.sort()
        print(f"local API /status with 20 idle + 4 half-sent connections: p50 {took[10] * 1000:.1f} ms, max {took[-1] * 1000:.1f} ms")
        assert took[-1] < 0.5
    finally:
        for s in idle + half:
            s.close()


def test_a_half_sent_request_is_answered_408_and_closed_after_the_request_timeout(api: LocalApi) -> None:
    with socket.create_connection(("127.0.0.1", api.port)) as s:
        s.settimeout(5)
        started = time.monotonic()
        s.sendall(b"GET /status HTTP/1.1\r\nHost: box\r\n")
        for _ in range(3):  # slow-loris: a byte now and then does not extend the deadline
            time.sleep(0.1)
            s.sendall(b"X")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        waited = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert json.loads(data.split(b"\r\n\r\n", 1)[1]) == {
        "error": "the request did not arrive whole within 0.5 s", "status": 408}
    assert 0.5 <= waited < 2.0


def test_keep_alive_and_pipelined_requests(api: LocalApi) -> None:
    with socket.create_connection(("127.0.0.1", api.port)) as s:
        s.settimeout(5)
        s.sendall(b"GET /status HTTP/1.1\r\nHost: b\r\n\r\nGET /categories HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 2 and b"Connection: close" in data


def test_past_the_connection_bound_the_longest_idle_is_closed(tmp_path: Path) -> None:
    server = LocalApi(LocalApiConfig(port=0, max_connections=3, idle_timeout_s=30), [Route("GET", "/status", lambda _r: {})])
    server.start()
    try:
        socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        time.sleep(0.2)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/status")
        assert conn.getresponse().status == 200
        conn.close()
        socks[0].settimeout(5)
        assert socks[0].recv(1) == b""  # the oldest idle one made room
        assert server.evicted >= 1
        for s in socks:
            s.close()
    finally:
        server.stop()


# -- fuzz ------------------------------------------------------------------------------------------

_methods = st.sampled_from(["GET"] * 6 + ["POST"] * 4 + ["PUT", "DELETE", "HEAD", "OPTIONS", "get", "GETT", "", "\x00"])
_segments = st.sampled_from(["status", "search", "products", "categories", "images", "notes", "TEA-LJ-250", "..", "%00",
                             "%ff", "%2F", "a" * 300, "龙井"])
_query_values = st.text(max_size=40) | st.sampled_from(["%00", "%ff%fe", "1e9", "-1", "99999999999", "%", "&&", "=="])
_queries = st.lists(st.tuples(st.sampled_from(["q", "limit", "offset", "category", "x", "", "q\x00"]), _query_values),
                    max_size=5)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    method = draw(_methods)
    path = "/" + "/".join(draw(st.lists(_segments, max_size=4)))
    query = "&".join(f"{quote(k, safe='%')}={quote(v, safe='%')}" for k, v in draw(_queries))
    target = path + ("?" + query if query else "")
    if draw(st.integers(0, 4)) == 0:
        target = draw(st.text(max_size=60))  # anything at all where the path goes
    body = draw(st.binary(max_size=200) | st.just(b'{"text": "x"}') | st.just(b"[" * 5000))
    length = draw(st.sampled_from([len(body)] * 4 + [0, len(body) + 1, 99999999]))
    headers = ["Host: box", f"Content-Length: {length}"]
    headers += draw(st.lists(st.sampled_from(["Content-Type: application/json"] * 4 + [
        "Content-Type: text/plain", "Transfer-Encoding: chunked", "Connection: close", "X: \x01", "Bad header"]), max_size=2))
    version = draw(st.sampled_from(["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/2", "http/1.1"]))
    head = f"{method} {target} {version}\r\n" + "\r\n".join(headers) + "\r\n\r\n"
    return head.encode("utf-8", "surrogateescape") + body


@pytest.fixture(scope="module")
def fuzz_api(api: LocalApi) -> Iterator[LocalApi]:
    """The same routes, with a short request timeout: a fuzzed request that promises more body than
    it sends is answered 408 quickly."""
    server = LocalApi(api.cfg.model_copy(update={"request_timeout_s": 0.2}), api._routes)
    server.start()
    yield server
    server.stop()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(request=raw_requests())
def test_fuzz_never_a_5xx_never_a_hang_always_a_json_error(fuzz_api: LocalApi, request: bytes) -> None:
    with socket.create_connection(("127.0.0.1", fuzz_api.port)) as s:
        s.settimeout(3)
        # A Content-Length longer than the body sent must not hang either: the request timeout answers.
        s.sendall(request)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
                if _complete(data):
                    break
        except TimeoutError:
            raise AssertionError(f"no answer within 3 s to {request[:200]!r}") from None
    assert data, f"closed without an answer: {request[:200]!r}"
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert status < 500, (request[:300], data[:300])
    if status >= 400:
        assert b"Content-Type: application/json" in head
        err = json.loads(body[: int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])])
        assert set(err) == {"error", "status"} and err["status"] == status and err["error"]


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False
