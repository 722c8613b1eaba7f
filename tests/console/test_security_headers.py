"""Security headers on every kind of answer, HSTS only over TLS, and templates with nothing inline.

The browser side (pages really work under the policy, no violation reported) is in
test_csp_browser.py; this file checks the HTTP answers and the template sources.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.api import create_app
from cloud.api.security import CONTENT_SECURITY_POLICY
from cloud.settings import Settings
from tests.access.conftest import World, behind_proxy


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """SQLite only: the headers do not depend on the database."""
    yield f"sqlite:///{tmp_path / 'cloud.db'}"


EXPECTED = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
# One of each kind: console page, redirect, static file, API JSON, API error, docs, 404, validation error.
PATHS = [("/console/login", 200), ("/console/fleet", 303), ("/", None), ("/console/static/console.css", 200),
         ("/health", 200), ("/nodes", 401), ("/openapi.json", 200), ("/docs", 200), ("/docs/swagger-init.js", 200),
         ("/no/such/page", 404), ("/catalogue/files/nothex", 400)]


def test_the_policy_is_the_one_specified() -> None:
    assert EXPECTED["content-security-policy"] == CONTENT_SECURITY_POLICY


@pytest.mark.parametrize(("path", "code"), PATHS)
def test_every_answer_carries_the_headers_and_no_hsts_over_http(world: World, path: str, code: int | None) -> None:
    with world.app_client() as client:
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == code if code else answer.is_redirect, answer.text
        assert {k: answer.headers.get(k) for k in EXPECTED} == EXPECTED
        assert "strict-transport-security" not in answer.headers


def test_hsts_only_when_the_request_came_over_tls(world: World) -> None:
    with world.app_client(base_url="https://cloud.example") as client:
        assert client.get("/console/login").headers["strict-transport-security"] == "max-age=31536000"
    # Behind a TLS-terminating proxy: uvicorn's proxy-headers middleware (on by default, trusting the
    # addresses in --forwarded-allow-ips) turns X-Forwarded-Proto into the request's scheme.
    with world.app_client() as client:
        proxied = behind_proxy(client.app)
        assert proxied.get("/health", headers={"X-Forwarded-Proto": "https"}).headers["strict-transport-security"]
        untrusted = behind_proxy(client.app, trusted="10.0.0.1")
        assert "strict-transport-security" not in untrusted.get("/health", headers={"X-Forwarded-Proto": "https"}).headers


def test_docs_page_has_no_inline_script_and_loads_nothing_from_outside(world: World) -> None:
    with world.app_client() as client:
        page = client.get("/docs").text
        assert re.findall(r"<script(?![^>]*\bsrc=)", page) == []
        for url in re.findall(r"""(?:src|href)=["']([^"']+)["']""", page):
            assert url.startswith("/"), url
            assert client.get(url).status_code == 200, url
        # ReDoc needs inline styles, a blob: worker and a CDN logo: its address leads to /docs.
        redoc = client.get("/redoc", follow_redirects=False)
        assert redoc.status_code == 307 and redoc.headers["location"] == "/docs"
        assert client.get("/docs/oauth2-redirect").status_code == 404


INLINE = [
    (re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I), "inline <script>"),
    (re.compile(r"<style\b", re.I), "<style> element"),
    (re.compile(r"\sstyle\s*=", re.I), "style= attribute"),
    (re.compile(r"\son[a-z]+\s*=", re.I), "inline event handler"),
    (re.compile(r"javascript:", re.I), "javascript: URL"),
]


def template_dirs() -> list[Path]:
    """Every folder the console renders from: its own and each engine's."""
    from jinja2 import ChoiceLoader, FileSystemLoader

    from cloud.console import pages

    app = create_app(Settings(DATABASE_URL="sqlite:///:memory:"), run_worker=False)  # engines register theirs
    # The app's own template set where the console keeps one per app, else the module's.
    templates: Any = getattr(app.state, "templates", None) or getattr(pages, "templates", None)
    assert templates is not None, "no console template set found"
    pending = [templates.env.loader]
    found: list[Path] = []
    while pending:
        loader = pending.pop()
        if isinstance(loader, ChoiceLoader):
            pending.extend(loader.loaders)
        elif isinstance(loader, FileSystemLoader):
            found.extend(Path(p) for p in loader.searchpath)
    return sorted(set(found))


def test_no_template_needs_inline_script_or_style() -> None:
    root = Path(__file__).resolve().parents[2]
    folders = template_dirs()
    assert {root / "cloud/console/templates", root / "cloud/catalogue/templates"} <= set(folders)
    found = [
        f"{path}:{n}: {what}: {line.strip()}"
        for folder in folders for path in sorted(folder.glob("*.html"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        for rx, what in INLINE if rx.search(line)
    ]
    assert found == []
    # The check itself finds each kind.
    sample = '<script>x()</script><style></style><b style="x"><a onclick="y" href="javascript:z">'
    assert [what for rx, what in INLINE if rx.search(sample)] == [what for _, what in INLINE]
