"""TLS on the broker listener, with certificates made by `openssl` for each test run: the broker
command's checks of its files, a TLS-only broker (plain text refused, the admin still at work), the
clients' verification of the broker (CA and host name), the box's and the cloud's settings, and a
real box and worker over TLS, end to end."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker import topics
from broker.client import BrokerAddress, BrokerCertificateError, BusNotConnected, MqttConnection
from broker.mosquitto import TlsListener, free_port
from cloud.settings import SettingsError, load_settings
from firmware_config import BrokerConfig, ConfigError, NodeConfig, load_config, parse_config, write_config
from omnishelf.cli import main
from tests.conftest import Broker
from tests.system.harness import System, wait_for

HOST = "localhost"
"""The only name on the broker's certificate: 127.0.0.1 is not on it, so dialling that is refused."""


@dataclass(frozen=True)
class Pki:
    ca: Path
    """The CA that signed the broker's certificate."""
    cert: Path
    """The broker's certificate, for DNS:localhost only."""
    key: Path
    other_ca: Path
    """A CA that signed nothing here: trusting it alone must fail."""
    other_key: Path
    """The private key of another certificate."""
    encrypted_key: Path
    """`key` under a passphrase."""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _ca(name: str, cwd: Path) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=omnishelf test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=cwd)


def make_pki(folder: Path, names: tuple[str, ...] = (HOST,)) -> Pki:
    """A CA, a broker certificate for `names` (DNS names) signed by it, and the wrong things a test needs."""
    folder.mkdir(parents=True, exist_ok=True)
    _ca("ca", folder)
    _ca("other-ca", folder)
    (folder / "server.ext").write_text(
        f"subjectAltName={','.join(f'DNS:{n}' for n in names)}\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "broker.key",
             "-out", "broker.csr", "-subj", f"/CN={names[0]}", cwd=folder)
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "broker.pem", "-days", "2", "-extfile", "server.ext", cwd=folder)
    _openssl("pkey", "-in", "broker.key", "-aes256", "-passout", "pass:secret", "-out", "encrypted.key", cwd=folder)
    return Pki(folder / "ca.pem", folder / "broker.pem", folder / "broker.key", folder / "other-ca.pem",
               folder / "other-ca.key", folder / "encrypted.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[Broker]:
    """A private Mosquitto that listens with TLS only (what `omnishelf broker --tls-cert …` does by default)."""
    b = Broker(tmp_path)
    b.layout.tls = TlsListener(pki.cert, pki.key, free_port())
    b.layout.plain = False
    b.process.start()
    try:
        yield b
    finally:
        b.process.kill()


def tls_url(b: Broker) -> str:
    assert b.layout.tls is not None
    return f"mqtts://{HOST}:{b.layout.tls.port}"


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# -- the broker command's own checks ---------------------------------------------------------------

BAD_FILES = [
    # (what, --tls-cert, --tls-key, the one line expected after "omnishelf: error: ")
    ("missing certificate", "missing.pem", "broker.key",
     "TLS certificate {d}/missing.pem: cannot read it (No such file or directory)"),
    ("certificate is a folder", ".", "broker.key", "TLS certificate {d}: cannot read it (Is a directory)"),
    ("key given as certificate", "broker.key", "broker.key",
     "TLS certificate {d}/broker.key: expected PEM certificates ('-----BEGIN CERTIFICATE-----'), found none"),
    ("missing key", "broker.pem", "missing.key", "TLS key {d}/missing.key: cannot read it (No such file or directory)"),
    ("certificate given as key", "broker.pem", "ca.pem",
     "TLS key {d}/ca.pem: expected a PEM private key ('-----BEGIN … PRIVATE KEY-----'), found none"),
    ("key of another certificate", "broker.pem", "other-ca.key",
     "TLS key {d}/other-ca.key does not match the certificate in {d}/broker.pem: expected the private key of "
     "that certificate (the first one in the file)"),
    ("encrypted key", "broker.pem", "encrypted.key",
     "TLS key {d}/encrypted.key: expected an unencrypted private key, found one protected by a passphrase "
     "(Mosquitto cannot ask for it; 'openssl pkey -in KEY -out NEW' removes it)"),
]


@pytest.mark.parametrize(("what", "cert", "key", "expected"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_broker_command_refuses_unusable_tls_files_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pki: Pki, what: str, cert: str, key: str, expected: str
) -> None:
    creds = tmp_path / "c.json"
    creds.write_text("{}")
    d = pki.cert.parent
    code = main(["broker", "--credentials", str(creds), "--data-dir", str(tmp_path / "b"),
                 "--tls-cert", str(d / cert), "--tls-key", str(d / key)])
    out, err = capsys.readouterr()
    assert (code, out, err) == (2, "", f"omnishelf: error: {expected.format(d=d)}\n")
    assert not (tmp_path / "b").exists(), "nothing is written before the files are checked"


BAD_FLAGS = [
    (["--tls-cert", "{d}/broker.pem"], "--tls-cert needs --tls-key too: expected the certificate and its private key, found only one"),
    (["--tls-key", "{d}/broker.key"], "--tls-key needs --tls-cert too: expected the certificate and its private key, found only one"),
    (["--no-plain"], "--no-plain without --tls-cert/--tls-key leaves no listener: expected TLS files or --plain"),
    (["--tls-cert", "{d}/broker.pem", "--tls-key", "{d}/broker.key", "--plain", "--port", "8883"],
     "--tls-port 8883 is also --port: expected two different ports"),
    (["--tls-cert", "{d}/broker.pem", "--tls-key", "{d}/broker.key", "--tls-port", "0"],
     "--tls-port 0 is not a TCP port (1-65535)"),
]


@pytest.mark.parametrize(("flags", "expected"), BAD_FLAGS, ids=[e.split(":")[0] for _, e in BAD_FLAGS])
def test_broker_command_refuses_inconsistent_listener_flags(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pki: Pki, flags: list[str], expected: str
) -> None:
    creds = tmp_path / "c.json"
    creds.write_text("{}")
    d = pki.cert.parent
    code = main(["broker", "--credentials", str(creds), "--data-dir", str(tmp_path / "b"),
                 *(f.format(d=d) for f in flags)])
    assert (code, capsys.readouterr().err) == (2, f"omnishelf: error: {expected}\n")


def _broker_command(tmp_path: Path, pki: Pki, *extra: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    creds = tmp_path / "c.json"
    creds.write_text(json.dumps({"nodes": {"n1": "pw1"}}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnishelf.cli", "broker", "--credentials", str(creds), "--data-dir", str(tmp_path / "b"),
         "--tls-cert", str(pki.cert), "--tls-key", str(pki.key), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    started: dict[str, object] = json.loads(line)
    return proc, started


async def _connects(address: BrokerAddress, user: str = "n1", password: str = "pw1") -> bool:
    conn = MqttConnection(address, user, password, connect_timeout=5)
    try:
        await conn.connect()
    except BusNotConnected:
        return False
    await conn.disconnect()
    return True


def test_broker_command_with_tls_drops_the_plain_listener_unless_asked(tmp_path: Path, pki: Pki) -> None:
    """Default with TLS: the TLS listener only. `--plain` keeps the plain one beside it (a migration)."""
    tls_port, plain_port = free_port(), free_port()
    proc, started = _broker_command(tmp_path, pki, "--tls-port", str(tls_port), "--port", str(plain_port))
    try:
        assert started["broker"] == f"mqtts://127.0.0.1:{tls_port}"
        assert started["listeners"] == [f"mqtts://127.0.0.1:{tls_port}"]
        assert refused(plain_port)
        assert asyncio.run(_connects(BrokerAddress.from_url(f"mqtts://{HOST}:{tls_port}", pki.ca)))
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
    proc, started = _broker_command(tmp_path, pki, "--tls-port", str(tls_port), "--port", str(plain_port), "--plain")
    try:
        assert started["listeners"] == [f"mqtts://127.0.0.1:{tls_port}", f"mqtt://127.0.0.1:{plain_port}"]
        assert asyncio.run(_connects(BrokerAddress.from_url(f"mqtts://{HOST}:{tls_port}", pki.ca)))
        assert asyncio.run(_connects(BrokerAddress("127.0.0.1", plain_port)))
    finally:
        proc.terminate()
        assert proc.wait(15) == 0


# -- the client side: what it trusts, and what it is refused -----------------------------------------


def test_client_verifies_the_broker_and_names_the_problem(tls_broker: Broker, pki: Pki) -> None:
    port = tls_broker.layout.tls.port if tls_broker.layout.tls else 0
    password = tls_broker.add_node("n1")

    async def body() -> None:
        good = MqttConnection(BrokerAddress.from_url(tls_url(tls_broker), pki.ca), "n1", password)
        await good.connect()
        assert (await good.publish(topics.up("n1", "scan"), b"over tls")).value == 16
        await good.disconnect()

        cases = [
            (BrokerAddress.from_url(tls_url(tls_broker), pki.other_ca),
             f"certificate verify failed for broker mqtts://{HOST}:{port}: unable to get local issuer certificate "
             f"(trusted: CA file {pki.other_ca})"),
            (BrokerAddress.from_url(f"mqtts://127.0.0.1:{port}", pki.ca),
             f"certificate verify failed for broker mqtts://127.0.0.1:{port}: IP address mismatch, certificate is "
             f"not valid for '127.0.0.1'. (trusted: CA file {pki.ca})"),
            (BrokerAddress.from_url(tls_url(tls_broker)),
             f"certificate verify failed for broker mqtts://{HOST}:{port}: unable to get local issuer certificate "
             "(trusted: the system's CA store)"),
        ]
        for address, message in cases:
            conn = MqttConnection(address, "n1", password)
            with pytest.raises(BrokerCertificateError) as err:
                await conn.connect()
            assert str(err.value) == message

        # Plain text on the TLS port: the broker drops it before any CONNACK, and the client says why.
        plain = MqttConnection(BrokerAddress(HOST, port), "n1", password)
        with pytest.raises(BusNotConnected) as dropped:
            await plain.connect()
        assert str(dropped.value) == (
            f"disconnected: Unspecified error before any CONNACK (is {HOST}:{port} a TLS listener? then use mqtts://)"
        )

    asyncio.run(body())
    assert refused(tls_broker.layout.port), "no plain listener beside the TLS one"
    # The broker saw a CONNECT where a TLS ClientHello belongs, and no credential was checked.
    assert "SSL routines::wrong version number" in tls_broker.layout.log_path.read_text()


def test_tls_only_broker_still_applies_credential_changes(tls_broker: Broker, pki: Pki) -> None:
    """The internal admin reaches a TLS-only broker on loopback, trusting exactly its certificate."""
    address = tls_broker.layout.local_address
    assert (address.tls, address.pinned, address.port) == (True, True, tls_broker.layout.tls.port if tls_broker.layout.tls else 0)
    password = tls_broker.add_node("late")  # applied through $CONTROL over TLS
    assert asyncio.run(_connects(BrokerAddress.from_url(tls_url(tls_broker), pki.ca), "late", password))


def test_tls_client_on_a_plain_listener_is_told_so(broker: Broker, pki: Pki) -> None:
    conn_address = BrokerAddress.from_url(f"mqtts://{HOST}:{broker.port}", pki.ca)

    async def body() -> None:
        with pytest.raises(BusNotConnected) as err:
            await MqttConnection(conn_address, "n1", "x").connect()
        assert str(err.value).startswith(f"TLS handshake with broker mqtts://{HOST}:{broker.port} failed: ")
        assert str(err.value).endswith("(is that port a TLS listener?)")

    asyncio.run(body())


# -- the box's and the cloud's settings -------------------------------------------------------------


def test_box_config_ca_file_needs_mqtts_and_resolves_against_the_config_file(tmp_path: Path, pki: Pki) -> None:
    text = "node_id: st1-k1\nstore_id: st1\nbroker:\n  url: mqtt://broker.example:1883\n  ca_file: ca.pem\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, "box.yaml")
    assert err.value.problems == [
        "box.yaml:5: field 'broker.ca_file': a CA file is given but broker.url 'mqtt://broker.example:1883' is "
        "plain MQTT: expected an mqtts:// URL (or no ca_file)"
    ]
    etc = tmp_path / "etc"
    cfg = NodeConfig(node_id="st1-k1", store_id="st1", data_dir=tmp_path / "state",
                     broker=BrokerConfig(url=f"mqtts://{HOST}:8883", password="pw", ca_file=Path("tls/ca.pem")))
    config = write_config(cfg, etc / "box.yaml")
    res = subprocess.run([sys.executable, "-m", "omnishelf.cli", "edge", "check-config", "etc/box.yaml"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert (res.returncode, res.stderr) == (
        2, f"omnishelf: error: etc/box.yaml: broker.ca_file {etc}/tls/ca.pem: cannot read it (No such file or directory)\n"
    )
    (etc / "tls").mkdir()
    (etc / "tls" / "ca.pem").write_bytes(pki.cert.read_bytes().replace(b"CERTIFICATE", b"CERTIFICAT"))
    res = subprocess.run([sys.executable, "-m", "omnishelf.cli", "edge", "check-config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert res.stderr == (
        f"omnishelf: error: {config}: broker.ca_file {etc}/tls/ca.pem: expected PEM certificates "
        "('-----BEGIN CERTIFICATE-----'), found none\n"
    )
    (etc / "tls" / "ca.pem").write_bytes(pki.ca.read_bytes())
    res = subprocess.run([sys.executable, "-m", "omnishelf.cli", "edge", "check-config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert f"  ca_file    {etc}/tls/ca.pem" in res.stdout.splitlines()
    assert load_config(config).broker.ca_file == Path("tls/ca.pem")


def test_cloud_ca_file_setting(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(BROKER_URL="mqtt://broker.example:1883", BROKER_CA_FILE=str(pki.ca), DATA_DIR=str(tmp_path))
    assert str(err.value) == (
        "OMNISHELF_BROKER_CA_FILE: a CA file is set but OMNISHELF_BROKER_URL 'mqtt://broker.example:1883' is plain "
        "MQTT: expected an mqtts:// URL"
    )
    with pytest.raises(SettingsError) as err:
        load_settings(BROKER_URL="mqtts://broker.example", BROKER_CA_FILE=str(tmp_path / "no.pem"), DATA_DIR=str(tmp_path))
    assert str(err.value) == f"OMNISHELF_BROKER_CA_FILE: {tmp_path}/no.pem: cannot read it (No such file or directory)"
    s = load_settings(BROKER_URL="mqtts://broker.example", BROKER_CA_FILE=str(pki.ca), DATA_DIR=str(tmp_path))
    assert s.broker_address == BrokerAddress("broker.example", 8883, True, str(pki.ca))


# -- real processes: a box and a worker over TLS -----------------------------------------------------


@pytest.fixture
def tls_system(tmp_path: Path, tls_broker: Broker, pki: Pki) -> Iterator[System]:
    s = System(tmp_path, tls_broker, f"sqlite:///{tmp_path / 'cloud.db'}", broker_url=tls_url(tls_broker), ca_file=pki.ca)
    s.migrate()
    try:
        yield s
    finally:
        s.close()


def test_box_and_worker_over_tls_end_to_end(tls_system: System) -> None:
    """The box names its CA relative to its config file, the worker by OMNISHELF_BROKER_CA_FILE."""
    tls_system.worker()
    box = tls_system.box("st-tls", burst=300)
    wait_for(lambda: len(tls_system.ledger("st-tls")) >= 300, 60, "300 messages over TLS in the ledger")
    assert tls_system.online("st-tls") is True
    box.stop()
    wait_for(lambda: tls_system.online("st-tls") is False, 20, "the box's clean death over TLS")
    tls_system.assert_complete("st-tls", 300)
    assert "-ca.pem" in (tls_system.tmp / "st-tls.yaml").read_text()


def test_a_wrong_ca_is_refused_and_said_so_on_every_try(tls_system: System, pki: Pki) -> None:
    box = tls_system.box("st-wrong", ca_file=pki.other_ca)
    worker = tls_system.worker("cloud-9", OMNISHELF_BROKER_CA_FILE=str(pki.other_ca))
    hint = "check broker.ca_file: it must hold the CA that signed the broker's certificate; reconnecting in"
    wait_for(lambda: box.log.read_text().count(hint) >= 2, 30, "two refused attempts, each logged")
    line = next(x for x in box.log.read_text().splitlines() if hint in x)
    assert "st-wrong: certificate verify failed for broker mqtts://localhost:" in line
    assert "unable to get local issuer certificate (trusted: CA file " in line
    assert box.alive, "a refused certificate is a connect failure with backoff, not an exit"
    wait_for(lambda: "check OMNISHELF_BROKER_CA_FILE" in worker.log.read_text(), 30, "the worker's refusal logged")
    assert "cloud-9: certificate verify failed for broker mqtts://localhost:" in worker.log.read_text()
    assert tls_system.online("st-wrong") is None, "the box never reached the cloud"
