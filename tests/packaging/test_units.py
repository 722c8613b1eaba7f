"""packaging/systemd, packaging/env, packaging/debian and packaging/box against the code they run.

`systemd-analyze verify` checks the units where systemd's tools are installed (they need no running
systemd); everything else is read here: each ExecStart is parsed by the `omnishelf` command's own
parser, each example env file is loaded into the settings it is meant for, and the Debian package
lists are compared with the Makefile and docs/install.md.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import edge.config_push as config_push
from broker.envelope import Envelope, MessageType
from broker.payloads import ConfigData
from broker.sealing import load_or_create_key, public_key_of, seal
from cloud.fleet.enrolment import first_config
from cloud.settings import Settings, load_settings
from edge.component import ComponentContext
from firmware_config import PASSWORD_ENV, config_hash, load_config, parse_config, render_config, resolve_paths
from firmware_config.profiles import PROFILES
from kiosk.cli import BOX_ENV, DEFAULT_BOX
from omnishelf import cli
from provisioning import crypto
from provisioning.setup_mode import SetupBox

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "packaging"
UNITS = sorted((PKG / "systemd").glob("*.service"))
OMNISHELF = "/opt/omnishelf/bin/omnishelf"
"""Where docs/install.md and packaging/box/setup-box.sh put the command."""
INSTANCES = {"omnishelf-worker@.service": ("cloud-1",), "omnishelf-ui@.service": ("kiosk", "station")}
"""The instances a template unit is run as (its first in the checks of one instance)."""


def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file, each a list of (key, value) in order (systemd keys repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if m := re.fullmatch(r"\[(\w+)\]", line):
            current = sections.setdefault(m.group(1), [])
            continue
        assert current is not None and "=" in line and not line.endswith("\\"), f"{path.name}:{number}: {raw!r}"
        key, value = line.split("=", 1)
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: Path, section: str, key: str) -> list[str]:
    return [v for k, v in read_unit(unit)[section] if k == key]


def value(unit: Path, section: str, key: str) -> str:
    (found,) = values(unit, section, key)
    return found


def unit(name: str) -> Path:
    return PKG / "systemd" / name


def test_the_units_exist() -> None:
    assert [u.name for u in UNITS] == [
        "omnishelf-broker.service",
        "omnishelf-cloud.service",
        "omnishelf-edge.service",
        "omnishelf-setup.service",
        "omnishelf-ui@.service",
        "omnishelf-worker@.service",
    ]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_verifies_the_units(tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists: point it at this environment's command.
    here = Path(sys.executable).parent / "omnishelf"
    assert here.exists()
    names = []
    for path in UNITS:
        for instance in INSTANCES.get(path.name, ("",)):
            name = path.name.replace("@.service", f"@{instance}.service")
            (tmp_path / name).write_text(path.read_text().replace(OMNISHELF, str(here)))
            names.append(f"./{name}")
    done = subprocess.run(["systemd-analyze", "verify", *names], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def exec_args(path: Path, key: str = "ExecStart", instance: str | None = None) -> list[str]:
    """The `omnishelf` arguments of a unit's command, with its specifiers filled in."""
    instance = instance or INSTANCES.get(path.name, ("",))[0]
    words = shlex.split(value(path, "Service", key).replace("%S", "/var/lib").replace("%i", instance))
    if words[0] == "/usr/bin/env":
        words = words[1:]
        while "=" in words[0]:
            words = words[1:]
    assert words[0] == OMNISHELF, path.name
    return words[1:]


@pytest.mark.parametrize(("path", "instance"), [(u, i) for u in UNITS for i in INSTANCES.get(u.name, ("",))],
                         ids=lambda x: x.name if isinstance(x, Path) else x)
def test_exec_start_is_an_omnishelf_command(path: Path, instance: str) -> None:
    args = exec_args(path, instance=instance)
    parsed = cli.build_parser(args).parse_args(args)
    assert callable(getattr(parsed, "func", None)), args


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_units_run_as_the_service_user_in_their_state_dir_and_log_to_the_journal(path: Path) -> None:
    service = dict(read_unit(path)["Service"])
    assert (service["User"], service["Group"]) == ("omnishelf", "omnishelf")
    assert service["WorkingDirectory"] == f"%S/{service['StateDirectory']}"
    assert service["Restart"] in ("on-failure", "always")
    for key, expected in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes", "ProtectHome": "yes"}.items():
        assert service[key] == expected, key
    # The journal, not files (a unit whose input is a terminal says so: its output would follow).
    assert service.get("StandardOutput", "journal") == service.get("StandardError", "journal") == "journal"
    assert read_unit(path)["Install"] == [("WantedBy", "multi-user.target")]


def test_broker_keeps_its_data_in_its_state_dir_and_reloads_with_sighup() -> None:
    broker = unit("omnishelf-broker.service")
    args = exec_args(broker)
    assert args[args.index("--data-dir") + 1] == f"/var/lib/{value(broker, 'Service', 'StateDirectory')}"
    assert value(broker, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert value(broker, "Service", "KillMode") == "mixed"  # omnishelf stops Mosquitto itself
    assert all("ExecReload" not in dict(read_unit(u)["Service"]) for u in UNITS if u != broker)


def test_cloud_units_share_the_data_dir_and_each_worker_has_its_own_username() -> None:
    api, worker = unit("omnishelf-cloud.service"), unit("omnishelf-worker@.service")
    assert value(api, "Service", "StateDirectory") == value(worker, "Service", "StateDirectory") == "omnishelf"
    assert "--no-worker" in exec_args(api)
    assert exec_args(worker) == ["cloud", "worker"]
    assert "OMNISHELF_BROKER_USERNAME=%i" in value(worker, "Service", "ExecStart")
    assert values(worker, "Service", "EnvironmentFile") == ["/etc/omnishelf/cloud.env", "/etc/omnishelf/worker-%i.env"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_edge_may_read_the_clock_sync_state() -> None:
    """edge/clock.py calls adjtimex(2); a seccomp filter without it would report every message
    as sent with an unsynchronised clock, silently."""
    edge = unit("omnishelf-edge.service")
    assert "ProtectClock" not in dict(read_unit(edge)["Service"])
    allowed: set[str] = set()
    for entry in " ".join(values(edge, "Service", "SystemCallFilter")).split():
        allowed |= syscalls(entry)
    assert "adjtimex" in allowed
    assert "clock_settime" not in allowed


def test_the_screen_unit_runs_a_touchscreen_app_on_the_display_for_the_box_agent() -> None:
    """omnishelf-ui@.service: `omnishelf kiosk` or `omnishelf station`, drawing with KMS/DRM (no X
    server on the box), reading the agent's local API, with the devices' groups."""
    ui = unit("omnishelf-ui@.service")
    assert [exec_args(ui, instance=i) for i in INSTANCES[ui.name]] == [["kiosk"], ["station"]]
    env = dict(e.split("=", 1) for e in values(ui, "Service", "Environment"))
    assert env["SDL_VIDEODRIVER"] == "kmsdrm" and env["KIVY_WINDOW"] == "sdl2"
    assert "DISPLAY" not in env
    assert env[BOX_ENV] == DEFAULT_BOX == "http://127.0.0.1:8480"  # the agent's default local API
    assert env["KIVY_HOME"] == f"%S/{value(ui, 'Service', 'StateDirectory')}"
    assert set(value(ui, "Service", "SupplementaryGroups").split()) == {"video", "render", "input"}
    assert "omnishelf-edge.service" in value(ui, "Unit", "Wants")
    assert any("omnishelf-edge.service" in v for v in values(ui, "Unit", "After"))
    assert value(ui, "Unit", "ConditionPathExists") == value(unit("omnishelf-edge.service"), "Unit", "ConditionPathExists")
    # The first console is the app's: what a keyboard-wedge scanner types must not reach a login prompt.
    assert value(ui, "Unit", "Conflicts") == "getty@tty1.service" and value(ui, "Service", "TTYPath") == "/dev/tty1"
    assert "PrivateDevices" not in dict(read_unit(ui)["Service"])
    # setup-box.sh installs it and enables the cloud shelf on the boxes with a screen.
    script = (PKG / "box" / "setup-box.sh").read_text()
    assert 'if [ "$extras" = edge,kiosk ]; then' in script and "systemctl enable omnishelf-ui@kiosk.service" in script


def syscalls(entry: str) -> set[str]:
    if not entry.startswith("@"):
        return {entry}
    out = subprocess.run(["systemd-analyze", "syscall-filter", entry], capture_output=True, text=True, check=True, timeout=60)
    found: set[str] = set()
    for line in out.stdout.splitlines()[1:]:
        word = line.strip()
        if word and not word.startswith("#"):
            found |= syscalls(word)
    return found


# -- what the box writes at run time, against its unit's sandbox -----------------------------------


def sandbox_access(path: str, service: list[tuple[str, str]]) -> str:
    """What the file-system sandbox of a unit's `[Service]` section lets its processes do at `path`:
    'rw', 'ro' or 'none' (permissions aside), as systemd sets it up: ProtectSystem= and ProtectHome=
    make the base, the *Directory= settings, PrivateTmp= and Read*Paths= open or close sub-trees,
    and the longest matching prefix decides."""
    settings: dict[str, list[str]] = {}
    for key, val in service:
        settings.setdefault(key, []).extend(val.split())
    rules: dict[str, str] = {"/": "rw"}
    protect = (settings.get("ProtectSystem") or ["no"])[-1]
    if protect == "strict":
        rules["/"] = "ro"
    elif protect in ("yes", "true", "full"):
        rules |= dict.fromkeys(["/usr", "/boot", "/efi"], "ro") | ({"/etc": "ro"} if protect == "full" else {})
    home = (settings.get("ProtectHome") or ["no"])[-1]
    if home in ("yes", "true", "tmpfs", "read-only"):
        rules |= dict.fromkeys(["/home", "/root", "/run/user"], "ro" if home == "read-only" else "none")
    if (settings.get("PrivateTmp") or ["no"])[-1] in ("yes", "true"):
        rules |= {"/tmp": "rw", "/var/tmp": "rw"}
    for key, base in {"StateDirectory": "/var/lib", "RuntimeDirectory": "/run", "CacheDirectory": "/var/cache",
                      "LogsDirectory": "/var/log", "ConfigurationDirectory": "/etc"}.items():
        rules |= {f"{base}/{name}": "rw" for name in settings.get(key, [])}
    for key, mode in {"ReadWritePaths": "rw", "ReadOnlyPaths": "ro", "InaccessiblePaths": "none"}.items():
        rules |= {entry.lstrip("-+"): mode for entry in settings.get(key, [])}
    matches = [prefix for prefix in rules if path == prefix or path.startswith(prefix.rstrip("/") + "/")]
    return rules[max(matches, key=len)]


def test_sandbox_access_reads_the_settings_as_systemd_does() -> None:
    strict = [("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("StateDirectory", "a b")]
    assert [sandbox_access(p, strict) for p in ("/etc/x", "/var/lib/a/f", "/var/lib/b", "/var/lib/ab", "/tmp/f", "/root/f")] == [
        "ro", "rw", "rw", "ro", "rw", "none"]
    opened = [*strict, ("ReadWritePaths", "-/etc/x"), ("ReadOnlyPaths", "/etc/x/ro")]
    assert [sandbox_access(p, opened) for p in ("/etc/x", "/etc/x/f", "/etc/xy", "/etc/x/ro/f")] == ["rw", "rw", "ro", "ro"]
    assert sandbox_access("/etc/x", [("ProtectSystem", "full")]) == "ro"
    assert sandbox_access("/etc/x", [("ProtectSystem", "yes")]) == "rw"


def changes(root: Path, before: dict[str, tuple[int, int]]) -> set[str]:
    """Files and directories under `root` created, replaced, changed or removed since `before` (a
    `snapshot`), as absolute paths on the box (`root` standing for `/`)."""
    after = snapshot(root)
    changed = {p for p in after.keys() | before.keys() if after.get(p) != before.get(p)}
    return {"/" + p for p in changed}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("*") if not p.is_dir()}


def claimed_box(root: Path, config_dir: str) -> tuple[Path, dict[str, tuple[int, int]]]:
    """A box claimed in setup mode (its real code, without the network) with its config directory
    at `root` + `config_dir`; the directory and a snapshot of `root` taken before the claim."""
    where = root / config_dir.lstrip("/")
    where.mkdir(parents=True)
    before = snapshot(root)
    box = SetupBox("SN-1", "pi5", where, screen=lambda _line: None)
    laptop = X25519PrivateKey.generate()
    info = box.info()
    key = crypto.pair_key(laptop, info["public_key"], info["nonce"], box.pairing_code)
    assert box.pair({"laptop_key": crypto.public_b64(laptop), "proof": crypto.proof(key, "laptop")})[0] == 200
    cfg, _ca = first_config(Settings(), "st0001-k1", "st0001", "kiosk-pi5")
    text, sealed = render_config(cfg), seal(info["public_key"], b"first password")
    done = box.finish({"config_yaml": text, "sealed_password": sealed, "ca_pem": None,
                       "mac": crypto.finish_mac(key, text, sealed, None)})
    assert done[0] == 200, done
    return where, before


async def push_rotate_and_roll_back(config_dir: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What edge/config_push.py does on a claimed box, for real: a credential rotation, a config
    push that is applied (the agent restarts on it), and its automatic rollback."""
    restarts = asyncio.Event()
    monkeypatch.setattr(config_push, "RESTART_DELAY_S", 0.0)
    monkeypatch.setattr(os, "kill", lambda pid, sig: restarts.set())

    def component(offered: list[tuple[str, Any]]) -> config_push.ConfigPushComponent:
        cfg = load_config(config_dir / "box.yaml")
        ctx = ComponentContext(config=cfg, paths=resolve_paths(cfg, {"STATE_DIRECTORY": str(state_dir)}),
                               publish=lambda *_: None,  # type: ignore[arg-type]
                               offer_password=lambda pw, adopt: offered.append((pw, adopt)))
        found = config_push.config_push_component(ctx)
        assert isinstance(found, config_push.ConfigPushComponent)
        return found

    def envelope(data: ConfigData) -> Envelope:
        return Envelope(type=MessageType.CONFIG, node="st0001-k1", session=1, seq=1, data=data)

    offered: list[tuple[str, Any]] = []
    comp = component(offered)
    cfg = load_config(config_dir / "box.yaml")
    public = public_key_of(load_or_create_key(config_dir / "identity.key", create=False))
    body = cfg.model_dump(mode="json", exclude_defaults=True) | {"profile": cfg.profile}
    rotation = ConfigData(config_hash=config_hash(cfg), config=body, version=1, credential=seal(public, b"next password"))
    assert await comp._on_config(envelope(rotation)) == "credential received v1"
    ((password, adopt),) = offered
    adopt(password)  # the bus logged in with it

    pushed = body | {"telemetry_every_s": 30.0}
    push = ConfigData(config_hash=config_hash(parse_config(yaml.safe_dump(pushed))), config=pushed, version=2,
                      rollback_after_s=0.05)
    assert await comp._on_config(envelope(push)) == "applied v2"
    await asyncio.wait_for(restarts.wait(), 10)
    restarts.clear()
    # Restarted on v2, it does not reach the cloud in time: back to v1 by itself.
    await asyncio.wait_for(component([])._watch(), 10)
    assert restarts.is_set()
    assert "telemetry_every_s" not in (config_dir / "box.yaml").read_text()


def test_the_edge_unit_may_write_what_the_agent_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claimed box's agent writes its config directory (config pushes, their rollback, the .restart
    marker, credential rotation) and its state directory; under ProtectSystem=strict each of those
    must be opened by the unit, and the directory must belong to the unit's user."""
    edge = unit("omnishelf-edge.service")
    service = read_unit(edge)["Service"]
    args = exec_args(edge)
    config_dir = str(Path(args[args.index("--config") + 1]).parent)
    state_dir = f"/var/lib/{value(edge, 'Service', 'StateDirectory')}"
    root = tmp_path / "root"
    where, _ = claimed_box(root, config_dir)
    before = snapshot(root)
    asyncio.run(push_rotate_and_roll_back(where, root / state_dir.lstrip("/"), monkeypatch))
    written = changes(root, before)
    assert {f"{config_dir}/{name}" for name in ("box.yaml", "box.yaml.good", "config-state.json", ".restart", "broker.secret")} <= written
    # The agent's own files, where its config puts them under the unit (STATE_DIRECTORY).
    paths = resolve_paths(load_config(where / "box.yaml"), {"STATE_DIRECTORY": state_dir})
    written |= {str(p) for p in (paths.outbox, paths.outbox_lock, paths.catalogue, paths.station, paths.clerks, paths.node_dir)}
    refused = sorted(p for p in written if sandbox_access(p, service) != "rw")
    assert refused == [], f"{edge.name} does not let the agent write these"
    # The directory is the agent's (setup-box.sh makes it), not root's.
    script = (PKG / "box" / "setup-box.sh").read_text()
    made = re.search(rf"^install -d -o (\S+) -g (\S+) -m (\d+) {re.escape(config_dir)}$", script, re.M)
    assert made, f"setup-box.sh no longer creates {config_dir} with install -d"
    assert (made.group(1), int(made.group(3), 8) & 0o200) == (value(edge, "Service", "User"), 0o200)


def test_a_box_without_a_config_runs_setup_mode_and_then_the_agent() -> None:
    """omnishelf-setup.service runs exactly while the edge unit's config is missing, writes it where
    the edge unit reads it, and starts the edge unit once it exits after a claim."""
    edge, setup = unit("omnishelf-edge.service"), unit("omnishelf-setup.service")
    config = exec_args(edge)[exec_args(edge).index("--config") + 1]
    assert values(edge, "Unit", "ConditionPathExists") == [config]
    assert values(setup, "Unit", "ConditionPathExists") == [f"!{config}"]
    args = exec_args(setup)
    assert args[:2] == ["provision", "setup-mode"]
    assert Path(args[args.index("--config-dir") + 1]) / "box.yaml" == Path(config)
    # No --then-run: the agent is the edge unit's (one agent, one journal); the serial and model are
    # read from the hardware.
    assert not {"--then-run", "--serial", "--model"} & set(args)
    assert value(setup, "Unit", "OnSuccess") == edge.name
    assert "2" in value(setup, "Service", "RestartPreventExitStatus").split()  # omnishelf's user errors
    script = (PKG / "box" / "setup-box.sh").read_text()
    assert re.search(r"^systemctl enable (.*)$", script, re.M).group(1).split() == [edge.name, setup.name]  # type: ignore[union-attr]


def test_the_setup_unit_may_write_what_setup_mode_writes(tmp_path: Path) -> None:
    setup = unit("omnishelf-setup.service")
    args = exec_args(setup)
    config_dir = args[args.index("--config-dir") + 1]
    root = tmp_path / "root"
    _where, before = claimed_box(root, config_dir)
    written = changes(root, before)
    assert {f"{config_dir}/{name}" for name in ("box.yaml", "broker.secret", "identity.key")} <= written
    refused = sorted(p for p in written if sandbox_access(p, read_unit(setup)["Service"]) != "rw")
    assert refused == [], f"{setup.name} does not let setup mode write these"


# -- example env files --------------------------------------------------------------------------


def env_file(name: str) -> dict[str, str]:
    pairs = {}
    for line in (PKG / "env" / name).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, val = line.partition("=")
            assert key.startswith("OMNISHELF_"), (name, line)
            pairs[key] = val
    return pairs


def test_every_env_file_a_unit_reads_has_an_example() -> None:
    examples = {p.name for p in (PKG / "env").glob("*.env")}
    for path in UNITS:
        for entry in values(path, "Service", "EnvironmentFile"):
            name = entry.removeprefix("-").removeprefix("/etc/omnishelf/").replace("%i", "cloud-1")
            assert name in examples, (path.name, entry)


def test_cloud_env_files_set_only_cloud_settings_and_load_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    known = {f"OMNISHELF_{name}" for name in Settings.model_fields}
    api = env_file("cloud.env")
    worker = {**api, **env_file("worker-cloud-1.env")}
    assert set(worker) <= known
    assert "OMNISHELF_BROKER_USERNAME" not in worker  # the unit's instance name is the username
    for env in (api, {**worker, "OMNISHELF_BROKER_USERNAME": "cloud-1"}):
        with monkeypatch.context() as m:
            for key, val in env.items():
                m.setenv(key, val)
            settings = load_settings()
        assert settings.ENV == "production"
        assert settings.DATA_DIR == "/var/lib/omnishelf"


def test_edge_env_file_sets_only_what_the_agent_reads() -> None:
    assert set(env_file("edge.env")) == {PASSWORD_ENV}


# -- Debian packages ------------------------------------------------------------------------------


def debian(name: str) -> list[str]:
    text = (PKG / "debian" / f"{name}.txt").read_text()
    return [word for line in text.splitlines() for word in line.partition("#")[0].split()]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(("variable", "lists"), [("SYSTEM_PKGS", ["broker"]), ("TEST_PKGS", ["test"])])
def test_the_makefile_installs_the_lists(variable: str, lists: list[str]) -> None:
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", "--eval", f"print-var: ; @echo $({variable})", "print-var"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.split() == [p for name in lists for p in debian(name)]


def test_install_guide_installs_exactly_the_lists() -> None:
    guide = (ROOT / "docs" / "install.md").read_text()
    commands = re.findall(r"apt-get install --no-install-recommends ([^\n`]+)", guide)
    expected = {
        " ".join(debian("base") + debian("broker")),
        " ".join(debian("base") + debian("cloud")),
        " ".join(debian("base")),
        " ".join(debian("base") + debian("kiosk")),
    }
    assert {c.strip().removesuffix("\\").strip() for c in commands} == expected
    assert "apt-get install" not in re.sub(r"apt-get install --no-install-recommends", "", guide)


# -- the box image ------------------------------------------------------------------------------


def test_box_script_knows_every_profile() -> None:
    script = (PKG / "box" / "setup-box.sh").read_text()
    case = re.findall(r"^\s+([\w| -]+)\) extras=(\S+) lists=\"([^\"]+)\"", script, re.M)
    covered = {name.strip(): (extras, lists.split()) for names, extras, lists in case for name in names.split("|")}
    assert set(covered) == set(PROFILES)
    for profile, (extras, lists) in covered.items():
        has_screen = any(d.get("kind") == "display" for d in PROFILES[profile].get("devices", []))
        assert (extras, lists) == (("edge,kiosk", ["base", "kiosk"]) if has_screen else ("edge", ["base"])), profile
    assert "omnishelf-edge.service" in script


def test_box_script_refuses_an_unknown_profile() -> None:
    done = subprocess.run(["sh", str(PKG / "box" / "setup-box.sh"), "kiosk-pi4"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "setup-box.sh: unknown profile 'kiosk-pi4': expected one of kiosk, kiosk-pi5, scan-station, scan-station-pi5, "
        "signage-player, signage-player-pi5, gateway or gateway-pi5\n"
    )


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_box_config_template_is_valid_for_every_profile(profile: str) -> None:
    text = (PKG / "box" / "box.yaml").read_text()
    text = re.sub(r"^profile: .*$", f"profile: {profile}", text, flags=re.M)
    config = parse_config(text, "box.yaml")
    assert config.profile == profile
    # Every file of the box under /var/lib/omnishelf/edge/<node_id>/ (docs/technician.md), by hand too.
    assert config.data_dir == Path("/var/lib/omnishelf")
    assert config.outbox.path is None and config.catalogue.path is None
    assert config.broker.password_file == Path("/etc/omnishelf/box.secret")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_verifies_the_cloud_units_with_the_shared_catalogue_drop_in(tmp_path: Path) -> None:
    """docs/multi-host.md's drop-in (the NFS mount the units must wait for and may write to), as the
    guide writes it, appended to each cloud unit (a section may appear twice, as in a drop-in)."""
    guide = (ROOT / "docs" / "multi-host.md").read_text()
    found = re.search(r"printf '(\[Unit\][^']*)'", guide)
    assert found, "docs/multi-host.md no longer writes the drop-in with printf"
    drop_in = found.group(1).replace("\\n", "\n")
    assert "RequiresMountsFor=/srv/omnishelf/catalogue" in drop_in and "ReadWritePaths=/srv/omnishelf/catalogue" in drop_in
    here = Path(sys.executable).parent / "omnishelf"
    names = []
    for unit in ("omnishelf-cloud.service", "omnishelf-worker@.service"):
        name = unit.replace("@.service", "@cloud-1.service")
        (tmp_path / name).write_text((PKG / "systemd" / unit).read_text().replace(OMNISHELF, str(here)) + drop_in)
        names.append(f"./{name}")
    done = subprocess.run(["systemd-analyze", "verify", *names], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def _tls_drop_in() -> str:
    """docs/multi-host.md's `systemctl edit omnishelf-broker` for TLS: the ```ini block after it."""
    guide = (ROOT / "docs" / "multi-host.md").read_text()
    found = re.search(r"then `systemctl edit omnishelf-broker`:\n\n```ini\n(.*?)```", guide, re.S)
    assert found, "docs/multi-host.md: no ```ini block after `systemctl edit omnishelf-broker`"
    return found.group(1)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_verifies_the_broker_unit_with_the_tls_drop_in(tmp_path: Path) -> None:
    """docs/multi-host.md's TLS drop-in, as the guide writes it, appended to the broker's unit (a
    section may appear twice, as in a drop-in; `ExecStart=` empties the unit's own first)."""
    drop_in = _tls_drop_in()
    here = Path(sys.executable).parent / "omnishelf"
    name = "omnishelf-broker.service"
    (tmp_path / name).write_text((unit(name).read_text() + drop_in).replace(OMNISHELF, str(here)))
    done = subprocess.run(["systemd-analyze", "verify", f"./{name}"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_the_tls_drop_in_runs_the_broker_with_tls_only_in_its_state_dir(tmp_path: Path) -> None:
    """What the drop-in's ExecStart asks of `omnishelf broker`: its own parser reads it, the data
    directory is still the unit's, the listener is TLS only (no --plain), and the unit's own comment
    shows the same line."""
    sections = tmp_path / "drop-in.conf"
    sections.write_text(_tls_drop_in())
    starts = values(sections, "Service", "ExecStart")
    assert starts[0] == "", "the drop-in must empty the unit's ExecStart before giving its own"
    (command,) = starts[1:]
    words = shlex.split(command.replace("%S", "/var/lib"))
    assert words[0] == OMNISHELF
    args = cli.build_parser(words[1:]).parse_args(words[1:])
    broker = unit("omnishelf-broker.service")
    assert args.data_dir == Path(f"/var/lib/{value(broker, 'Service', 'StateDirectory')}")
    assert (args.tls_cert, args.tls_key) == (Path("/etc/omnishelf/broker.pem"), Path("/etc/omnishelf/broker.key"))
    assert args.plain is None and args.tls_port == 8883  # TLS only, on the usual port
    assert f"#   ExecStart={command}" in broker.read_text().splitlines()
