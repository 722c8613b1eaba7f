"""The box's side of the `network` section: a push naming a Wi-Fi passphrase file the box does not
have (or that holds no passphrase) is rejected with the field named and nothing applied; one it can
use is applied; `check-config` checks the file and summarises the section."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

import edge.config_push as config_push
from broker.envelope import Envelope, MessageType
from broker.payloads import ConfigData
from broker.sealing import load_or_create_key
from edge.bus import CommandRefused
from edge.component import ComponentContext
from firmware_config import (
    BrokerConfig,
    NodeConfig,
    config_hash,
    load_config,
    parse_config,
    resolve_paths,
    write_config,
)
from omnishelf import cli

NETWORK: dict[str, Any] = {"hostname": "st0001-k1", "wifi": {"ssid": "Store Wi-Fi", "psk_file": "wifi.psk", "country": "CN"},
                           "ntp": ["ntp.aliyun.com"]}


def claimed(tmp_path: Path) -> Path:
    """A claimed box's config directory (what setup mode leaves): box.yaml and the box's key."""
    where = tmp_path / "etc"
    cfg = NodeConfig(node_id="st0001-k1", store_id="st0001", profile="kiosk-pi5",
                     broker=BrokerConfig(url="mqtt://127.0.0.1:1", password_file=Path("broker.secret")))
    write_config(cfg, where / "box.yaml")
    (where / "broker.secret").write_text("pw\n")
    load_or_create_key(where / "identity.key")
    return where


def component(where: Path, tmp_path: Path) -> config_push.ConfigPushComponent:
    cfg = load_config(where / "box.yaml")
    ctx = ComponentContext(config=cfg, paths=resolve_paths(cfg, {"OMNISHELF_DATA_DIR": str(tmp_path / "data")}),
                           publish=lambda *_: None)  # type: ignore[arg-type]
    found = config_push.config_push_component(ctx)
    assert isinstance(found, config_push.ConfigPushComponent)
    return found


def push(where: Path, version: int, network: dict[str, Any]) -> Envelope:
    cfg = load_config(where / "box.yaml")
    body = cfg.model_dump(mode="json", exclude_defaults=True) | {"profile": cfg.profile, "network": network}
    data = ConfigData(config_hash=config_hash(parse_config(yaml.safe_dump(body))), config=body, version=version)
    return Envelope(type=MessageType.CONFIG, node="st0001-k1", session=1, seq=1, data=data)


def test_a_wifi_push_needs_the_passphrase_file_on_the_box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    where = claimed(tmp_path)
    before = (where / "box.yaml").read_text()
    comp = component(where, tmp_path)
    with pytest.raises(CommandRefused) as refused:
        asyncio.run(comp._on_config(push(where, 1, NETWORK)))
    assert str(refused.value) == (
        f"rejected v1: field 'network.wifi.psk_file': cannot read {where}/wifi.psk: No such file or directory")
    (where / "wifi.psk").write_text("short\n")
    with pytest.raises(CommandRefused, match=r"field 'network\.wifi\.psk_file': .*/wifi\.psk does not hold a WPA passphrase"):
        asyncio.run(comp._on_config(push(where, 1, NETWORK)))
    assert (where / "box.yaml").read_text() == before  # nothing applied
    assert not (where / "box.yaml.good").exists()

    (where / "wifi.psk").write_text("correct horse battery\n")
    kills: list[int] = []
    monkeypatch.setattr(config_push, "RESTART_DELAY_S", 0.0)

    async def apply() -> str:
        restarted = asyncio.Event()

        def kill(_pid: int, sig: int) -> None:
            kills.append(sig)
            restarted.set()

        monkeypatch.setattr(os, "kill", kill)
        answer = await comp._on_config(push(where, 1, NETWORK))
        await asyncio.wait_for(restarted.wait(), 10)  # the agent restarts on the new config
        return answer

    assert asyncio.run(apply()) == "applied v1"
    assert kills == [signal.SIGTERM]
    cfg = load_config(where / "box.yaml")
    assert cfg.network.model_dump(mode="json", exclude_defaults=True) == NETWORK
    assert component(where, tmp_path).status()["network"] == "hostname st0001-k1, wifi 'Store Wi-Fi' (CN), dhcp, ntp ntp.aliyun.com"


def test_check_config_checks_the_passphrase_file_and_shows_the_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMNISHELF_DATA_DIR", str(tmp_path / "data"))
    where = claimed(tmp_path)
    assert cli.main(["edge", "check-config", str(where / "box.yaml")]) == 0
    assert "network" not in capsys.readouterr().out  # the image's network: nothing to say

    text = (where / "box.yaml").read_text() + yaml.safe_dump({"network": NETWORK | {
        "ipv4": "static", "address": "192.168.1.20/24", "gateway": "192.168.1.1", "dns": ["192.168.1.1"]}})
    (where / "box.yaml").write_text(text)
    assert cli.main(["edge", "check-config", str(where / "box.yaml")]) == 2
    assert capsys.readouterr().err == (
        f"omnishelf: error: {where}/box.yaml: field 'network.wifi.psk_file': cannot read {where}/wifi.psk: "
        "No such file or directory\n")
    (where / "wifi.psk").write_text("correct horse battery\n")
    assert cli.main(["edge", "check-config", str(where / "box.yaml")]) == 0
    assert ("  network    hostname st0001-k1, wifi 'Store Wi-Fi' (CN), static 192.168.1.20/24 via 192.168.1.1, "
            "dns 192.168.1.1, ntp ntp.aliyun.com\n") in capsys.readouterr().out
