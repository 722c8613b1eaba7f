"""Shared fixtures: a private Mosquitto per test (own config, free port, temp dir) and databases."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import dynsec, topics
from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port

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
