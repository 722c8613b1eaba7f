"""`omnishelf catalogue …` says which database and catalogue directory it uses, and suspects the
wrong database when no region is defined in it while the file prices for regions."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from cloud.catalogue.cli import _database_shown
from omnishelf.cli import main

PRICED = "sku,name_en,name_zh,list_price,price_east\nA,a,甲,1,2\n"


def _env(monkeypatch: pytest.MonkeyPatch, engine: Engine, catalogue: Path) -> str:
    url = engine.url.render_as_string(hide_password=False)
    monkeypatch.setenv("OMNISHELF_DATABASE_URL", url)
    monkeypatch.setenv("OMNISHELF_CATALOGUE_DIR", str(catalogue))
    return _database_shown(url)


@pytest.mark.parametrize("command", [["import", "{src}", "--no-progress"], ["history"], ["version"]])
def test_every_command_names_its_database_and_directory_first(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: list[str],
) -> None:
    shown = _env(monkeypatch, engine, tmp_path / "cat")
    src = tmp_path / "p.csv"
    src.write_text("sku,name_en,name_zh,list_price\nA,a,甲,1\n", encoding="utf-8")
    assert main(["catalogue", *[c.format(src=src) for c in command]]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"catalogue: database {shown}, catalogue directory {tmp_path / 'cat'}"


def test_a_database_without_regions_is_questioned(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    shown = _env(monkeypatch, engine, tmp_path / "cat")
    src = tmp_path / "p.csv"
    src.write_text(PRICED, encoding="utf-8")
    assert main(["catalogue", "import", str(src), "--no-progress"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"no regions are defined in {shown}: is this the database you meant?"
    report = (tmp_path / "cat" / "reports" / "import-1.csv").read_text(encoding="utf-8")
    assert "unknown region 'east' (known: none, no region is defined in this database)" in report


def test_a_database_with_regions_is_not_questioned(
    cat_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    _env(monkeypatch, cat_engine, tmp_path / "cat")
    src = tmp_path / "p.csv"
    src.write_text(PRICED.replace("price_east", "price_north"), encoding="utf-8")
    assert main(["catalogue", "import", str(src), "--no-progress"]) == 1
    assert "is this the database you meant?" not in capsys.readouterr().err


def test_a_relative_sqlite_path_is_shown_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMNISHELF_DATABASE_URL", "sqlite:///var/here.db")
    monkeypatch.setenv("OMNISHELF_CATALOGUE_DIR", "var/catalogue")
    assert main(["catalogue", "version"]) == 0
    out = capsys.readouterr()
    assert out.err.splitlines()[0] == (
        f"catalogue: database sqlite:///{tmp_path}/var/here.db, catalogue directory {tmp_path}/var/catalogue"
    )
    assert out.out == "the catalogue is empty (no version yet)\n"


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://shop:s3cret@db.example:5432/omni", "postgresql://shop:***@db.example:5432/omni"),
    ("sqlite:///:memory:", "sqlite:///:memory:"),
    ("sqlite:////srv/my shop/omnishelf.db", "sqlite:////srv/my shop/omnishelf.db"),
    ("not a url", "not a url"),
])
def test_passwords_are_never_shown(url: str, shown: str) -> None:
    assert _database_shown(url) == shown


def test_with_nothing_set_the_database_is_in_the_data_directory_whatever_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Run from another folder, a command once made a new empty ./omnishelf.db and refused every row."""
    for var in ("OMNISHELF_DATABASE_URL", "OMNISHELF_CATALOGUE_DIR", "OMNISHELF_DATA_DIR", "STATE_DIRECTORY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["catalogue", "version"]) == 0
    data = tmp_path / "home" / ".local" / "state" / "omnishelf"
    assert capsys.readouterr().err.splitlines()[0] == (
        f"catalogue: database sqlite:///{data / 'omnishelf.db'}, catalogue directory {data / 'catalogue'}")
    assert (data / "omnishelf.db").exists() and list(elsewhere.iterdir()) == []
