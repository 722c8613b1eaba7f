"""`omnishelf pki`: the deployment's own CA and the broker's certificate, used by a real TLS
Mosquitto; a client trusting this CA connects, one trusting another CA is refused."""

from __future__ import annotations

import asyncio
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.client import BrokerAddress, BrokerCertificateError, MqttConnection
from broker.mosquitto import TlsListener, free_port
from broker.pki import PkiError, make_ca, make_server_cert
from omnishelf.cli import main
from tests.conftest import Broker


@pytest.fixture
def pki(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    folder = tmp_path / "pki"
    assert main(["pki", "ca", str(folder)]) == 0
    assert main(["pki", "cert", str(folder), "--name", "localhost", "--ip", "127.0.0.1"]) == 0
    out = capsys.readouterr().out
    assert f"omnishelf broker --tls-cert {folder / 'localhost.pem'} --tls-key {folder / 'localhost.key'}" in out
    return folder


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.layout.tls = TlsListener(pki / "localhost.pem", pki / "localhost.key", free_port())
    b.layout.plain = False
    b.process.start()
    try:
        yield b
    finally:
        b.process.kill()


def test_files_and_their_modes(pki: Path) -> None:
    assert stat.S_IMODE((pki / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((pki / "localhost.key").stat().st_mode) == 0o600
    # What any TLS client checks: the chain, the names, the purpose.
    done = subprocess.run(["openssl", "verify", "-CAfile", str(pki / "ca.pem"), "-purpose", "sslserver",
                           "-verify_hostname", "localhost", "-verify_ip", "127.0.0.1", str(pki / "localhost.pem")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip().endswith(": OK"), done.stdout + done.stderr


def test_a_client_trusting_the_deployment_ca_connects_and_another_ca_is_refused(
        tls_broker: Broker, pki: Path, tmp_path: Path) -> None:
    assert tls_broker.layout.tls is not None
    port = tls_broker.layout.tls.port
    password = tls_broker.add_node("n1")
    other, _ = make_ca(tmp_path / "other")

    async def body() -> None:
        for host in ("localhost", "127.0.0.1"):  # both names are on the certificate
            conn = MqttConnection(BrokerAddress.from_url(f"mqtts://{host}:{port}", pki / "ca.pem"), "n1", password)
            await conn.connect()
            await conn.disconnect()
        wrong = MqttConnection(BrokerAddress.from_url(f"mqtts://localhost:{port}", other), "n1", password)
        with pytest.raises(BrokerCertificateError) as err:
            await wrong.connect()
        assert "certificate verify failed" in str(err.value) and str(other) in str(err.value)

    asyncio.run(body())


def test_nothing_is_overwritten_and_mistakes_are_named(pki: Path, tmp_path: Path) -> None:
    before = (pki / "ca.pem").read_bytes()
    with pytest.raises(PkiError, match=r"ca\.pem exists; nothing was overwritten"):
        make_ca(pki)
    assert (pki / "ca.pem").read_bytes() == before
    with pytest.raises(PkiError, match=r"localhost\.pem or .*localhost\.key exists"):
        make_server_cert(pki, ["localhost"])
    with pytest.raises(PkiError, match=r"--ip '10\.0\.0\.300' is not an IPv4 or IPv6 address"):
        make_server_cert(pki, ["b"], ["10.0.0.300"])
    with pytest.raises(PkiError, match=r"make the CA first with 'omnishelf pki ca "):
        make_server_cert(tmp_path / "empty", ["b"])
    with pytest.raises(PkiError, match="give at least one --name"):
        make_server_cert(pki, [])
    assert main(["pki", "cert", str(pki), "--name", "localhost"]) == 2  # one line on stderr, exit 2
