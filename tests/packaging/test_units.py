"""packaging/systemd, packaging/env, packaging/debian and packaging/box against the code they run.

`systemd-analyze verify` checks the units where systemd's tools are installed (they need no running
systemd); everything else is read here: each ExecStart is parsed by the `omnishelf` command's own
parser, each example env file is loaded into the settings it is meant for, and the Debian package
lists are compared with the Makefile and docs/install.md.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cloud.settings import Settings, load_settings
from firmware_config import PASSWORD_ENV, parse_config
from firmware_config.profiles import PROFILES
from kiosk.cli import BOX_ENV, DEFAULT_BOX
from omnishelf import cli

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


def test_the_five_units_exist() -> None:
    assert [u.name for u in UNITS] == [
        "omnishelf-broker.service",
        "omnishelf-cloud.service",
        "omnishelf-edge.service",
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
        "setup-box.sh: unknown profile 'kiosk-pi4': expected kiosk-pi5, scan-station, signage-player or gateway\n"
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
