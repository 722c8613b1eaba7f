"""Shared fixtures: a private Mosquitto per test (own config, free port, temp dir) and databases."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from broker import dynsec, topics
from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port

# Argon2 at its cheapest for the suite's hundreds of users and sign-ins, in this process and in the
# `omnishelf` processes the tests start (they inherit the environment): what is hashed and checked
# is under test, not the hash's strength. tests/access/test_password_cost.py checks the default.
os.environ.setdefault("OMNISHELF_PASSWORD_HASH", "test-only-cheapest")

PG_URL = os.environ.get("OMNISHELF_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


class Broker:
    """A running private Mosquitto and the credentials it knows."""

    def __init__(self, tmp: Path) -> None:
        self.layout = BrokerLayout(data_dir=tmp / "mosquitto", port=free_port())
        self.process = MosquittoProcess(self.layout)

    @property
    def url(self) -> str:
        return self.layout.url

    @property
    def host(self) -> str:
        return self.layout.bind

    @property
    def port(self) -> int:
        return self.layout.port

    def add_node(self, node: str) -> str:
        """A new node (or a new password for an existing one), live on the broker when this returns."""
        password = secrets.token_urlsafe(12)
        self.layout.node_users[node] = password
        if self.process.running:
            self.process.reload()
        return password

    def remove_node(self, node: str) -> None:
        """Take a node's credential away; the broker drops its live connection before this returns."""
        del self.layout.node_users[node]
        if self.process.running:
            self.process.reload()

    def narrow_node_publish(self, node: str, allowed: list[str]) -> None:
        """Let a running node publish only on `allowed` topics (instead of its whole `up/` subtree) until
        the next credential change: the next reload puts the generated role back."""
        role = dynsec.node_role(node)
        self.process.control(
            [
                {"command": "removeRoleACL", "rolename": role, "acltype": "publishClientSend", "topic": topics.node_up_filter(node)},
                *({"command": "addRoleACL", "rolename": role, "acltype": "publishClientSend", "topic": t, "allow": True} for t in allowed),
            ]
        )

    def add_cloud(self, user: str) -> str:
        password = secrets.token_urlsafe(12)
        self.layout.cloud_users[user] = password
        if self.process.running:
            self.process.reload()
        return password


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.process.start()
    try:
        yield b
    finally:
        b.process.kill()


# -- spreading the suite over xdist's workers -----------------------------------------------------
# `make test` hands whole files to its workers (a file's fixtures and brokers are set up once). Two
# things kept the workers from finishing together: the documentation pages are one file, so a single
# worker ran every page one after another (about 400 s); and the longest files came last, in name
# order. Each page is now a unit of its own, and the longest units start first (the figures are the
# durations `make test` printed, at 2 and 3 workers; a unit not listed goes after them, in name order).

_SPLIT_BY_TEST = ("tests/docs/test_docs.py::test_every_command_in_the_page_works_as_shown",)
_ZEROCONF = (
    "tests/provisioning/",  # boxes in setup mode, claimed by serial
    "tests/kiosk/test_discovery.py",
    "tests/system/test_demo.py",
    "tests/docs/test_docs.py::test_every_command_in_the_page_works_as_shown[docs/technician.md]",
)
"""Tests that advertise or browse zeroconf services on loopback, which every process on the machine
shares: run at once on two workers, one test's boxes in setup mode showed in another's discovery
(and a claim found the other test's box of the same serial). They run one after another, in one unit."""
_LONGEST_FIRST = (
    "tests/provisioning/",  # the zeroconf unit, about 220 s in all
    "tests/docs/test_docs.py::test_every_command_in_the_page_works_as_shown[docs/install.md]",  # 115-210 s
    "tests/system/test_multi_host.py",  # 40-70 s
    "tests/docs/test_docs.py::test_every_command_in_the_page_works_as_shown[docs/hq.md]",
    "tests/docs/test_docs.py::test_every_command_in_the_page_works_as_shown[docs/operator.md]",
    "tests/kiosk/test_station_app.py",  # about 110 s
    "tests/docs/test_docs.py::test_every_command_in_the_page_works_as_shown[docs/catalogue.md]",
    "tests/catalogue/test_import.py",
    "tests/docs/test_docs.py::test_every_command_in_the_page_works_as_shown[docs/signage.md]",
    "tests/docs/test_docs.py::test_every_command_in_the_page_works_as_shown[docs/trace.md]",
    "tests/kiosk/test_app.py",
    "tests/packaging/test_install.py",
    "tests/system/test_end_to_end.py",
    "tests/console/test_browser.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        for i, prefix in enumerate(_LONGEST_FIRST):
            if item.nodeid == prefix or item.nodeid.startswith(prefix if prefix.endswith("/") else prefix + "::"):
                return i
        return len(_LONGEST_FIRST)

    # Stable: the tests of one file keep their order.
    items[:] = sorted(items, key=rank)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling  # type: ignore[import-untyped]

    scheduler = LoadFileScheduling(config, log)
    by_file = scheduler._split_scope

    def split_scope(nodeid: str) -> str:
        if nodeid.startswith(_ZEROCONF):
            return "zeroconf"
        return nodeid if nodeid.startswith(_SPLIT_BY_TEST) else str(by_file(nodeid))

    scheduler._split_scope = split_scope
    # Collection order is the order units start in: the longest first (see above), not xdist's
    # own reordering by the number of tests in a unit.
    config.option.loadscopereorder = False
    return cast(object, scheduler)
