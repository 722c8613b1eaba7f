"""The box config schema: a valid file loads; each kind of mistake names its file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_config import (
    PASSWORD_ENV,
    ConfigError,
    PrinterDevice,
    ScannerDevice,
    SimulatorDevice,
    Synchronous,
    config_hash,
    load_config,
)

VALID = """\
node_id: st1-k1
store_id: st1
broker:
  url: mqtts://bus.example.com
  password: s3cret
outbox:
  synchronous: NORMAL
devices:
  - kind: simulator
    burst: 10
  - kind: printer
    host: 10.0.0.9
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "box.yaml"
    path.write_text(text)
    return path


def test_valid_file_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, VALID))
    assert cfg.node_id == "st1-k1"
    assert cfg.broker.keepalive_s == 30 and cfg.broker.session_expiry_s == 7 * 24 * 3600
    assert cfg.outbox.synchronous is Synchronous.NORMAL and cfg.outbox.max_pending == 200_000
    assert cfg.outbox.path is None and cfg.telemetry_every_s == 60
    assert cfg.backoff.auth_failure_s == 300
    sim, printer = cfg.devices
    assert isinstance(sim, SimulatorDevice) and sim.burst == 10
    assert isinstance(printer, PrinterDevice) and printer.port == 9100


def test_profile_supplies_defaults_the_file_overrides(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, "profile: signage-player\n" + VALID.replace("  synchronous: NORMAL", "  retain_acked: 5"))
    )
    assert cfg.broker.keepalive_s == 60  # from the profile
    assert cfg.outbox.synchronous is Synchronous.NORMAL  # from the profile
    assert cfg.outbox.retain_acked == 5  # the file wins
    assert len(cfg.devices) == 2  # a list in the file replaces the profile's
    cfg = load_config(
        write(tmp_path, "node_id: a\nstore_id: s\nprofile: scan-station\nbroker: {url: 'mqtt://h', password: p}\n")
    )
    assert [type(d) for d in cfg.devices] == [ScannerDevice]
    assert cfg.outbox.max_pending == 500_000


NETWORK = """\
network:
  hostname: st1-k1
  wifi:
    ssid: Store Wi-Fi
    psk_file: wifi.psk
    country: GB
  ipv4: static
  address: 192.168.1.20/24
  gateway: 192.168.1.1
  dns: [192.168.1.1, 1.1.1.1]
  ntp: [ntp.example.com, 192.168.1.1]
"""


def test_a_network_section_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, VALID + NETWORK))
    net = cfg.network
    assert (net.hostname, net.ipv4, net.address, net.gateway, net.dns) == (
        "st1-k1", "static", "192.168.1.20/24", "192.168.1.1", ("192.168.1.1", "1.1.1.1"))
    assert net.wifi is not None and (net.wifi.ssid, net.wifi.psk_file, net.wifi.country) == ("Store Wi-Fi", Path("wifi.psk"), "GB")
    assert net.ntp == ("ntp.example.com", "192.168.1.1")
    # Without one: the image's network (wired, DHCP).
    default = load_config(write(tmp_path, VALID)).network
    assert (default.hostname, default.wifi, default.ipv4, default.ntp) == (None, None, "dhcp", ())


def test_every_role_has_a_profile_and_one_for_the_pi5() -> None:
    from cloud.fleet.enrolment import ROLE_PROFILES, profile_for
    from firmware_config import PROFILES, NodeConfig
    from firmware_config.profiles import HARDWARE_PROFILES

    assert set(PROFILES) == {*ROLE_PROFILES.values(), *(f"{r}-pi5" for r in ROLE_PROFILES.values())}
    for role, base in ROLE_PROFILES.items():
        assert profile_for(role, "pi5") == profile_for(role, "PI5") == f"{base}-pi5"
        assert profile_for(role, "cm4") == base  # hardware without its own profile: the role's
        pi5 = PROFILES[f"{base}-pi5"]
        assert pi5 != PROFILES[base]
        # The hardware profile is the role's with the hardware's keys over it.
        for key in PROFILES[base].keys() - HARDWARE_PROFILES["pi5"][base].keys():
            assert pi5[key] == PROFILES[base][key], (base, key)
        for name in (base, f"{base}-pi5"):
            NodeConfig.model_validate({**PROFILES[name], "node_id": "a", "store_id": "s", "broker": {"url": "mqtt://h"}})
    # The kiosk of a Pi 5 is the build the project has shipped all along.
    assert [d["kind"] for d in PROFILES["kiosk-pi5"]["devices"]] == ["scanner", "printer", "display"]


def test_config_hash_is_stable_and_leaves_secrets_out(tmp_path: Path) -> None:
    a = config_hash(load_config(write(tmp_path, VALID)))
    b = config_hash(load_config(write(tmp_path, VALID.replace("password: s3cret", "password: other"))))
    reordered = VALID.replace("node_id: st1-k1\nstore_id: st1\n", "store_id: st1\nnode_id: st1-k1\n")
    assert a == b == config_hash(load_config(write(tmp_path, reordered)))
    assert a != config_hash(load_config(write(tmp_path, VALID.replace("burst: 10", "burst: 11"))))
    assert a.startswith("sha256:") and len(a) == 7 + 64


def test_a_file_without_a_secret_leaves_it_to_the_environment(tmp_path: Path) -> None:
    # The password is read from OMNISHELF_EDGE_PASSWORD when the agent starts, never copied into the
    # config: a config written back out (or hashed) cannot leak it.
    cfg = load_config(write(tmp_path, VALID.replace("  password: s3cret\n", "")))
    assert cfg.broker.password is None and cfg.broker.password_file is None
    assert PASSWORD_ENV == "OMNISHELF_EDGE_PASSWORD"


PROBLEMS = [
    pytest.param(
        ("broker:\n", "broker:\n  usr: admin\n"),
        [
            "4: field 'broker.usr': unknown key (expected one of: url, password, password_file, keepalive_s, keepalive_check_slack_s, session_expiry_s, ca_file)"
        ],
        id="unknown-key",
    ),
    pytest.param(
        ("store_id: st1\n", "store_id: st1\ncolour: red\n"),
        [
            "3: field 'colour': unknown key (expected one of: node_id, store_id, profile, data_dir, telemetry_every_s, "
            "log_level, broker, outbox, backoff, devices, catalogue, orders, local_api, station, signage, clerks, kiosk, "
            "network)"
        ],
        id="unknown-top-level-key",
    ),
    pytest.param(
        ("store_id: st1\n", "store_id: st1\nlog_level: LOUD\n"),
        ["3: field 'log_level': Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR' (got 'LOUD')"],
        id="log-level",
    ),
    pytest.param(
        ("    burst: 10\n", "    burst: 10\n    speed: 3\n"),
        [
            "11: field 'devices[0].speed': unknown key (expected one of: kind, name, scans_per_s, orders_per_min, "
            "stock_every_s, burst)"
        ],
        id="unknown-device-key",
    ),
    pytest.param(
        ("    burst: 10\n", "    burst: lots\n"),
        [
            "10: field 'devices[0].burst': Input should be a valid integer, unable to parse string as an integer (got 'lots')"
        ],
        id="wrong-type",
    ),
    pytest.param(
        ("node_id: st1-k1\n", "node_id: St1_K1\n"),
        [
            "1: field 'node_id': 'St1_K1' is not a node id: expected 1-63 characters of a-z, 0-9 and '-', "
            "starting with a letter or digit"
        ],
        id="bad-node-id",
    ),
    pytest.param(
        ("url: mqtts://bus.example.com", "url: http://bus.example.com"),
        [
            "4: field 'broker.url': 'http://bus.example.com' is not a broker URL: expected mqtt://host[:port] or "
            "mqtts://host[:port]"
        ],
        id="bad-url-scheme",
    ),
    pytest.param(
        ("url: mqtts://bus.example.com", "url: mqtt://bus.example.com:99999"),
        ["4: field 'broker.url': 'mqtt://bus.example.com:99999' has a bad port: expected a number from 1 to 65535"],
        id="bad-url-port",
    ),
    pytest.param(
        ("  password: s3cret\n", "  password: s3cret\n  password_file: /etc/omnishelf/pw\n"),
        [
            "3: field 'broker': give at most one of 'password' and 'password_file' (got both); "
            "with neither, the password comes from OMNISHELF_EDGE_PASSWORD"
        ],
        id="both-secrets",
    ),
    pytest.param(
        ("store_id: st1\n", ""),
        ["1: field 'store_id': required but missing"],
        id="missing-field",
    ),
    pytest.param(
        ("  - kind: printer\n", "  - kind: toaster\n"),
        [
            "11: field 'devices[1].kind': unknown device kind 'toaster': expected one of 'simulator', 'scanner', "
            "'printer', 'display'"
        ],
        id="unknown-device-kind",
    ),
    pytest.param(
        ("    host: 10.0.0.9\n", "    port: 9100\n"),
        ["11: field 'devices[1]': a network printer needs 'host'"],
        id="missing-device-field",
    ),
    pytest.param(
        ("store_id: st1\n", "store_id: st1\nprofile: toaster\n"),
        ["3: field 'profile': unknown profile 'toaster': expected one of gateway, gateway-pi5, kiosk, kiosk-pi5, "
         "scan-station, scan-station-pi5, signage-player, signage-player-pi5"],
        id="unknown-profile",
    ),
    pytest.param(
        ("store_id: st1\n", "store_id: st1\nnetwork:\n  hostname: Kiosk_1\n"),
        ["4: field 'network.hostname': 'Kiosk_1' is not a host name: expected 1-63 characters of a-z, 0-9 and '-', "
         "not starting or ending with '-'"],
        id="network-hostname",
    ),
    pytest.param(
        ("store_id: st1\n", "store_id: st1\nnetwork:\n  ipv4: static\n  address: 192.168.1.20\n"),
        ["5: field 'network.address': '192.168.1.20' is not an address with its prefix length: expected e.g. 192.168.1.20/24"],
        id="network-address-without-prefix",
    ),
    pytest.param(
        ("store_id: st1\n", "store_id: st1\nnetwork:\n  ipv4: static\n  address: 192.168.1.20/24\n  gateway: 10.0.0.1\n"
                            "  dns: [192.168.1.1]\n"),
        ["6: field 'network.gateway': 10.0.0.1 is not another host of 192.168.1.0/24: expected the router's address there"],
        id="network-gateway-elsewhere",
    ),
    pytest.param(
        ("store_id: st1\n", "store_id: st1\nnetwork:\n  ipv4: static\n  address: 192.168.1.20/24\n"),
        ["3: field 'network': ipv4: static needs gateway, dns"],
        id="network-static-incomplete",
    ),
    pytest.param(
        ("store_id: st1\n", "store_id: st1\nnetwork:\n  gateway: 192.168.1.1\n"),
        ["3: field 'network': gateway given with ipv4: dhcp: expected ipv4: static, or none of them"],
        id="network-dhcp-with-gateway",
    ),
    pytest.param(
        ("store_id: st1\n", "store_id: st1\nnetwork:\n  wifi:\n    ssid: Store\n    country: uk\n"),
        ["4: field 'network.wifi.psk_file': required but missing",
         "6: field 'network.wifi.country': 'uk' is not a country code: expected two capital letters (ISO 3166), e.g. GB"],
        id="network-wifi",
    ),
    pytest.param(
        ("store_id: st1\n", "store_id: st1\nnetwork:\n  ntp: [ntp.example.com, 'ntp example']\n"),
        ["4: field 'network.ntp': 'ntp example' is not a time server: expected a host name or an IPv4 address"],
        id="network-ntp",
    ),
    pytest.param(
        ("store_id: st1\n", "store_id: st1\nnetwork:\n  wifi:\n    ssid: Store\n    psk: hunter22\n"),
        ["4: field 'network.wifi.psk_file': required but missing",
         "6: field 'network.wifi.psk': unknown key (expected one of: ssid, psk_file, country)"],
        id="network-wifi-passphrase-in-the-file",
    ),
    pytest.param(
        ("outbox:\n  synchronous: NORMAL\n", "outbox:\n  synchronous: OFF\n"),
        ["7: field 'outbox.synchronous': Input should be 'FULL' or 'NORMAL' (got False)"],
        id="yaml-1.1-boolean",
    ),
    pytest.param(
        ("store_id: st1\n", "store_id: st1\nstore_id: st2\n"),
        ["3: field 'store_id': duplicate key (first given on line 2)"],
        id="duplicate-key",
    ),
    pytest.param(
        ("  password: s3cret\n", "  password: [s3cret\n"),
        ["6: YAML syntax error: expected ',' or ']', but got ':' (while parsing a flow sequence started on line 5)"],
        id="yaml-syntax",
    ),
    pytest.param(
        ("broker:\n", "broker:\n\tx: 1\n"),
        ["4: YAML syntax error: found character '\\t' that cannot start any token"],
        id="yaml-tab",
    ),
]


@pytest.mark.parametrize(("edit", "expected"), PROBLEMS)
def test_problem_is_reported_with_file_line_and_field(
    tmp_path: Path, edit: tuple[str, str], expected: list[str]
) -> None:
    old, new = edit
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}:{line}" for line in expected]


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        VALID.replace("node_id: st1-k1", "node_id: X").replace("burst: 10", "burst: -1\n    nope: 1"),
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [p.split(": field ")[0] for p in info.value.problems] == [f"{path}:1", f"{path}:10", f"{path}:11"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "1: the file is empty: expected a mapping with node_id, store_id and broker"),
        ("- a\n- b\n", "1: the file holds a YAML list: expected a mapping of settings"),
    ],
)
def test_file_that_is_not_a_mapping(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}:{problem}"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file: No such file or directory"):
        load_config(tmp_path / "nope.yaml")


def test_the_shipped_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "edge" / "examples" / "kiosk.yaml"
    cfg = load_config(example)
    assert cfg.profile == "kiosk-pi5"
    assert [d.kind for d in cfg.devices] == ["simulator", "scanner", "printer", "display"]
    assert cfg.broker.password is None and cfg.broker.password_file is None  # no secret in the repository
