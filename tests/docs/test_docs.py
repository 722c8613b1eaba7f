"""Every command block of README.md and docs/*.md, run as a reader would (see tests/docs/runner.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.parsers.markdown import CodeBlockParser

from tests.docs.runner import REPO, World

PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.stop()


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_command_in_the_page_works_as_shown(page: Path, world: World) -> None:
    parsers = [CodeBlockParser(language=lang, evaluator=world.evaluate) for lang in ("console", "sh", "yaml", "json", "jsonl", "csv", "text", "ini")]
    document = Sybil(parsers=parsers).parse(page)
    for example in document.examples():
        example.evaluate()


RUNNABLE = {"console", "sh"}
KNOWN = RUNNABLE | {"yaml", "json", "jsonl", "csv", "text", "python", "ini", "systemd"}


@pytest.mark.parametrize("page", sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")]),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_every_code_block_says_what_it_is(page: Path) -> None:
    """A fence without a language would slip past the runner: commands go in `console` (with their
    output) or `sh` blocks, everything else names its format."""
    import re

    fences = re.findall(r"^ *```([^\n`]*)$", page.read_text(), re.M)
    openings = fences[0::2]
    bad = [f or "(none)" for f in openings if f.strip() not in KNOWN]
    assert not bad, f"{page.name}: code blocks without a known language: {bad} (use one of {sorted(KNOWN)})"
