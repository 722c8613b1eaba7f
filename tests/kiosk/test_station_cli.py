"""`omnishelf station`: its options, and a wrong box URL refused in one line before any window opens."""

from __future__ import annotations

import pytest

from omnishelf.cli import main


def test_station_help_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["station", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(opt in out for opt in ("--windowed", "--box", "--size")), out


def test_a_wrong_box_url_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["station", "--box", "ftp://box"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("'ftp://box' is not a box URL: expected http://host:port (the box's local API) "
                        "(see 'omnishelf station --help')"), err
    assert "\n" not in err
