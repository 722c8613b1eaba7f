"""Every picture in docs/img/ is written by a test that `make screenshots` runs, so that the pictures
the docs show can be brought up to date with the code (`make test` writes them to var/screenshots/
only). Read from the Makefile and the tests' sources; nothing is run."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = sorted((ROOT / "docs" / "img").glob("*.png"))
DRIVERS = {"kiosk": "tests.kiosk.drive", "station": "tests.kiosk.station_drive"}
"""Pictures named <prefix>-<step>-<orientation>.png are written by these Xvfb drivers, which the
app tests start as `python -m <driver>` (tests/kiosk/drive.py, station_drive.py)."""


def sources_of_tests() -> dict[Path, str]:
    here = Path(__file__).resolve()
    return {p: p.read_text() for p in (ROOT / "tests").rglob("test_*.py") if p.resolve() != here}


# f"console-{name}.png": a literal start, then anything.
_NAMED = re.compile(r'f"([a-z][\w.-]*)\{[^"]*\.png"')


def producers(image: str, sources: dict[Path, str]) -> set[Path]:
    """The test files that write `image`: by its name, by an f-string that makes it, or by starting
    the driver that makes it."""
    found = {p for p, text in sources.items() if f'"{image}"' in text}
    found |= {p for p, text in sources.items() if any(image.startswith(start) for start in _NAMED.findall(text))}
    if found:
        return found
    driver = DRIVERS.get(image.split("-")[0])
    return {p for p, text in sources.items() if driver and f'"{driver}"' in text}


def screenshot_tests() -> set[Path]:
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", "--eval", "print-var: ; @echo $(SCREENSHOT_TESTS)", "print-var"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return {ROOT / word for word in done.stdout.split()}


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_every_picture_in_the_docs_has_its_test_in_make_screenshots() -> None:
    listed = screenshot_tests()
    assert listed and all(p.is_file() for p in listed), sorted(map(str, listed))
    sources = sources_of_tests()
    assert IMAGES
    missing = {}
    for image in IMAGES:
        found = producers(image.name, sources)
        assert found, f"docs/img/{image.name}: no test writes it (a picture nothing can update)"
        if not found & listed:
            missing[image.name] = sorted(str(p.relative_to(ROOT)) for p in found)
    assert not missing, f"pictures whose tests `make screenshots` does not run (add them to SCREENSHOT_TESTS): {missing}"


def test_the_producers_are_found() -> None:
    """The check above can fail: the Clerks page's picture is found in its own test, which another
    test's list would miss."""
    sources = sources_of_tests()
    assert producers("staff-clerks.png", sources) == {ROOT / "tests" / "staff" / "test_console_browser.py"}
    assert producers("kiosk-browse-portrait.png", sources) == {ROOT / "tests" / "kiosk" / "test_app.py"}
    assert producers("station-verify-idle-portrait.png", sources) == {ROOT / "tests" / "kiosk" / "test_station_app.py"}
    assert producers("console-audit.png", sources) == {ROOT / "tests" / "console" / "test_browser.py"}
