"""The box's local HTTP API as the kiosk sees it: blocking calls, run off the UI thread by `kiosk.work`.

Every failure is a `BoxError` whose message a shopper-facing banner can show as it is (the box's
own `{"error": ...}` text when it answered, else what went wrong with the connection).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["BoxClient", "BoxError"]


class BoxError(Exception):
    """The box did not answer, or answered with an error; `status` is None when it did not answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BoxClient:
    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers: dict[str, str] = {}
        """Sent with every request (the station's `X-Clerk-Session` once a clerk signed in)."""

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """Any route of the local API (the station's screens use many): the decoded JSON answer."""
        return self._call(method, path, body)

    def _send(self, method: str, path: str, body: Any = None) -> tuple[bytes, str]:
        """The answer's bytes and content type; every failure as a `BoxError` that says what."""
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        headers = {**self.headers, **({"Content-Type": "application/json"} if data is not None else {})}
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read(), resp.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            try:
                message = str(json.loads(exc.read())["error"])
            except (ValueError, KeyError, TypeError):
                message = f"the box answered {exc.code} to {method} {path}"
            raise BoxError(message, exc.code) from None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BoxError(f"the box at {self.base_url} does not answer ({reason})") from None

    def _call(self, method: str, path: str, body: Any = None, *, raw: bool = False) -> Any:
        payload, _type = self._send(method, path, body)
        if raw:
            return payload
        try:
            return json.loads(payload)
        except ValueError:
            raise BoxError(f"the box answered {method} {path} with something that is not JSON") from None

    def products(self, *, q: str = "", category: str | None = None, brand: str | None = None,
                 min_price: int | None = None, max_price: int | None = None, in_stock: bool = False,
                 limit: int = 40, offset: int = 0) -> dict[str, Any]:
        params: dict[str, str | int] = {"limit": limit, "offset": offset}
        for key, value in (("q", q.strip()), ("category", category), ("brand", brand)):
            if value:
                params[key] = value
        if min_price is not None:
            params["min_price"] = min_price
        if max_price is not None:
            params["max_price"] = max_price
        if in_stock:
            params["in_stock"] = 1
        out = self._call("GET", "/shelf/products?" + urllib.parse.urlencode(params))
        if not isinstance(out, dict) or not isinstance(out.get("items"), list):
            raise BoxError("the box's product list is malformed: expected {total, items}")
        return out

    def categories(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/shelf/categories"))

    def product(self, sku: str) -> dict[str, Any]:
        out = self._call("GET", "/products/" + urllib.parse.quote(sku, safe="/"))
        if not isinstance(out, dict):
            raise BoxError(f"the box's entry for {sku} is malformed")
        return out

    def availability(self, sku: str) -> dict[str, Any]:
        return dict(self._call("GET", "/shelf/availability/" + urllib.parse.quote(sku, safe="/")))

    def image(self, sha256: str) -> bytes:
        return bytes(self._call("GET", f"/images/{sha256}", raw=True))

    def place(self, order: dict[str, Any]) -> dict[str, Any]:
        return dict(self._call("POST", "/shelf/orders", order))

    def info(self) -> dict[str, Any]:
        return dict(self._call("GET", "/shelf/info"))

    def now_playing(self) -> dict[str, Any]:
        return dict(self._call("GET", "/signage/now"))

    def media(self, sha256: str) -> tuple[bytes, str]:
        """A signage file the box has verified, and its type (`image/png`, `video/mp4`, …)."""
        return self._send("GET", f"/signage/media/{urllib.parse.quote(sha256)}")
