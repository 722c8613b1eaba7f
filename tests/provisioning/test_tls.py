"""A box claimed for a TLS broker: the cloud hands it the deployment's CA with its config, the box
verifies the broker with it and comes online; with another CA in its place it refuses the broker
and says why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.mosquitto import TlsListener, free_port
from tests.broker.test_tls import HOST, Pki, make_pki
from tests.conftest import Broker
from tests.provisioning.conftest import BoxProc, Cloud, claim_box, start_box


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: nothing here depends on the database (the claim tests run on both)."""
    return f"sqlite:///{tmp_path / 'cloud.db'}"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_port() -> int:
    return free_port()


@pytest.fixture
def cloud_overrides(pki: Pki, tls_port: int) -> dict[str, Any]:
    return {"PROVISION_BROKER_URL": f"mqtts://{HOST}:{tls_port}", "PROVISION_CA_FILE": str(pki.ca)}


def _with_tls(broker: Broker, pki: Pki, port: int) -> None:
    """The broker gains its TLS listener (the plain one stays for the cloud and its admin)."""
    broker.process.stop()
    broker.layout.tls = TlsListener(pki.cert, pki.key, port)
    broker.process.start()


def test_claimed_box_trusts_only_the_deployment_ca(
    cloud: Cloud, cloud_overrides: dict[str, Any], pki: Pki, tls_port: int, boxes: list[BoxProc], tmp_path: Path
) -> None:
    _with_tls(cloud.broker, pki, tls_port)
    box = start_box(tmp_path, "SN-4000")
    boxes.append(box)
    node = claim_box(cloud, box)
    cfg = (box.config_dir / "box.yaml").read_text()
    assert f"url: {cloud_overrides['PROVISION_BROKER_URL']}" in cfg and "ca_file: ca.pem" in cfg
    assert (box.config_dir / "ca.pem").read_text() == Path(cloud_overrides["PROVISION_CA_FILE"]).read_text()
    box.stop()

    # The same box with another CA: the broker's certificate is refused, the box never logs in.
    (box.config_dir / "ca.pem").write_text(pki.other_ca.read_text())
    again = start_box(tmp_path, "SN-4000", then_run=True)
    boxes.append(again)
    wrong = again.wait_for("certificate verify failed", timeout=30)
    assert f"{node}: " in wrong and "check broker.ca_file" in wrong
