"""The doc-test runner: every command block in README.md and docs/*.md runs against a real broker
and a real cloud started for the purpose, in a scratch directory, and what a block shows as output
is compared with what the command printed.

How a Markdown file speaks to the runner:

- ```` ```console ```` blocks: `$ command` lines (a line ending in `\\` continues; a heredoc runs to
  its terminator), each followed by the output it prints (stdout and stderr, as in a terminal).
  `…` in an output line matches any text; a line that is only `…` matches any number of lines. A
  command must exit 0, or 2 when its output shows `omnishelf: error:` (a user error).
- ```` ```sh ```` blocks: run as one bash script that must exit 0.
- An HTML comment right before a block steers it:
  `<!-- doctest: skip — why -->` (the reason is required), `<!-- doctest: file=PATH -->` (write the
  block to PATH instead of running it: an example config is then used by the next commands),
  `<!-- doctest: background -->` (start the block's command and leave it running until the page
  ends, once its output shows what the block shows), `<!-- doctest: exit=N -->`,
  `<!-- doctest: requires=postgresql -->` (run only where the test PostgreSQL answers).

Placeholders are declared once, in `World.placeholders`: the addresses, keys and paths the docs
show (`http://127.0.0.1:8000`, `osk_…`, `/etc/omnishelf`, `/opt/omnishelf`, …) are replaced in
commands, files and expected output by the live ones. The system paths a host install writes to
(`/etc/systemd/system`, `/etc/logrotate.d`, `/usr/local/sbin`, on the PATH) are directories of the
world too, and the service account `omnishelf` that a test machine does not have is the test's own
user and group (`-g omnishelf`, `chgrp omnishelf`; `runuser -u omnishelf --` runs as the test).
The scratch directory is a copy of the checkout's files (what `git ls-files` lists, untracked
ones included), so that a page can build the wheel from it as a reader does from a release.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from sybil import Example

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
COMMAND_TIMEOUT_S = 120.0
_DIRECTIVE = re.compile(r"<!--\s*doctest:\s*(.*?)\s*-->$", re.S)
_HEREDOC = re.compile(r"<<-?\s*['\"]?([A-Za-z_]+)['\"]?")


class DocFailure(AssertionError):
    pass


@dataclass
class Command:
    text: str
    expected: list[str]
    line: int


def parse_console(block: str, first_line: int) -> list[Command]:
    """`$ cmd` lines with their output, continuation lines and heredocs folded into the command."""
    lines = block.splitlines()
    out: list[Command] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            if out:
                out[-1].expected.append(line)
            elif line.strip():
                raise DocFailure(f"line {first_line + i}: output before any '$ ' command: {line!r}")
            i += 1
            continue
        start = i
        cmd = [line[2:]]
        while cmd[-1].endswith("\\") and i + 1 < len(lines):
            i += 1
            cmd.append(lines[i][2:] if lines[i].startswith("> ") else lines[i])
        heredoc = _HEREDOC.search("\n".join(cmd))
        if heredoc:
            end = heredoc.group(1)
            while i + 1 < len(lines):
                i += 1
                cmd.append(lines[i])
                if lines[i].strip() == end:
                    break
        out.append(Command("\n".join(cmd), [], first_line + start))
        i += 1
    for c in out:
        while c.expected and not c.expected[-1].strip():
            c.expected.pop()
    return out


def _squeeze(line: str) -> str:
    # Runs of spaces are layout (aligned columns, padded log levels), not content.
    return re.sub(r"[ \t]+", " ", line.rstrip())


def matches(expected: list[str], actual: list[str]) -> bool:
    """Lines equal up to runs of spaces; `…` within a line is any text; a lone `…` is any lines."""
    pattern = []
    for line in expected:
        squeezed = _squeeze(line)
        if squeezed.strip() == "…":
            pattern.append(r"(?:[^\n]*\n)*?")
        else:
            pattern.append(".*".join(re.escape(part) for part in squeezed.split("…")) + r"\n")
    text = "".join(_squeeze(line) + "\n" for line in actual)
    return re.fullmatch("".join(pattern), text, re.S) is not None


def directive(example: Example) -> dict[str, str]:
    """The `<!-- doctest: … -->` comment right before this block, as {key: value} (or {})."""
    before = example.document.text[: example.region.start].rstrip()
    # The last comment only: the one of a block shortly before must not reach over to this one.
    match = _DIRECTIVE.match(before[before.rfind("<!--", max(len(before) - 400, 0)):]) if before.endswith("-->") else None
    if not match:
        return {}
    body = match.group(1).strip()
    if body.startswith("skip"):
        reason = body[4:].strip(" —-:")
        if not reason:
            raise DocFailure(f"line {example.line}: a skipped block must say why (<!-- doctest: skip — reason -->)")
        return {"skip": reason}
    out: dict[str, str] = {}
    for part in shlex.split(body):
        key, _, value = part.partition("=")
        out[key] = value
    return out


SYSTEM_DIRS = ("etc/systemd/system", "etc/logrotate.d", "usr/local/sbin")
"""Where a host install writes besides /etc/omnishelf, /var/lib/omnishelf and /opt/omnishelf: directories of
the world too."""


INDEX_ACCESS = ("PIP_CERT", "PIP_INDEX_URL", "PIP_DEFAULT_TIMEOUT", "SSL_CERT_FILE", "SSL_CERT_DIR",
                "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy")
"""Environment variables passed to the pages' commands from the test's own: how pip and Python's TLS
reach PyPI on this machine (a page's `pip install` and packaging/check_wheels.py need it)."""


def checkout_files() -> list[str]:
    """The checkout's files as git lists them: tracked ones and untracked ones that are not ignored."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise DocFailure(f"the docs' scratch directory is a copy of the checkout, listed by git: {exc}") from None
    return [name for name in out.decode().split("\0") if name and (REPO / name).is_file()]


def postgres_problem() -> str | None:
    from tests.cloud.conftest import _pg_unreachable

    return _pg_unreachable()


@dataclass
class World:
    """A broker, a cloud (API, console and bus) with the demo data, an admin and an API key."""

    tmp: Path
    scratch: Path = field(init=False)
    env: dict[str, str] = field(init=False)
    placeholders: dict[str, str] = field(init=False)
    secrets: dict[str, str] = field(init=False)
    background: list[subprocess.Popen[str]] = field(default_factory=list)
    api: str = ""
    key: str = ""

    def __post_init__(self) -> None:
        self.scratch = self.tmp / "scratch"
        for d in ("scratch", "home", "etc/omnishelf", "var/lib/omnishelf", *SYSTEM_DIRS):
            (self.tmp / d).mkdir(parents=True, exist_ok=True)
        # What a reader's checkout has: the example configs and packaging files the docs name, and
        # the source a wheel is built from. A copy, so that nothing a page does reaches the checkout.
        for rel in checkout_files():
            (self.scratch / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, self.scratch / rel)

    def start(self) -> None:
        from broker.mosquitto import BrokerLayout, MosquittoProcess, free_port

        pw = {u: secrets.token_urlsafe(12) for u in ("cloud-1", "ops", "st0001-k1", "st0002-k1", "st0003-k1")}
        self.passwords = pw
        self.layout = BrokerLayout(
            self.tmp / "broker", free_port(), cloud_users={"cloud-1": pw["cloud-1"]},
            node_users={n: pw[n] for n in ("st0001-k1", "st0002-k1", "st0003-k1")}, monitor_users={"ops": pw["ops"]},
        )
        self.broker = MosquittoProcess(self.layout)
        self.broker.start()
        http, box_api, broker2, http2, tls = (free_port() for _ in range(5))
        self.api = f"http://127.0.0.1:{http}"
        self.env = {
            "PATH": f"{VENV_BIN}:{self.tmp / 'usr/local/sbin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.tmp / "home"),
            "LANG": "C.UTF-8",
            # As in a terminal, where stdout is line-buffered: output and errors keep their order.
            "PYTHONUNBUFFERED": "1",
            "OMNISHELF_BROKER_URL": self.layout.url,
            "OMNISHELF_BROKER_USERNAME": "cloud-1",
            "OMNISHELF_BROKER_PASSWORD": pw["cloud-1"],
            "OMNISHELF_CATALOGUE_POLL_S": "0.5",
            # As for the rest of the suite (tests/conftest.py): the pages' sign-ins and users, cheaply.
            "OMNISHELF_PASSWORD_HASH": "test-only-cheapest",
            # docs/technician.md claims a box: the cloud grants credentials as the broker's admin,
            # zeroconf stays on loopback (never multicast on this machine's network), and the
            # claimed box's local API takes a free port.
            "OMNISHELF_BROKER_ADMIN_SECRET_FILE": str(self.layout.admin_secret_path),
            "OMNISHELF_ZEROCONF_INTERFACE": "127.0.0.1",
            "OMNISHELF_PROVISION_LOCAL_API_PORT": "0",
            # A page's `pip install` skips compiling every module to bytecode (half of its CPU time;
            # the modules run all the same). Not PIP_NO_COMPILE=1: pip gives a boolean variable's value
            # to the option's destination, and PIP_NO_COMPILE=1 sets `compile` to true.
            "PIP_COMPILE": "0",
            # How this machine reaches the package index (a page may build and install the wheel).
            **{k: v for k, v in os.environ.items() if k in INDEX_ACCESS},
            # The code under test when it is not the virtualenv's own install (a git worktree run
            # with the main checkout's venv and PYTHONPATH=<worktree>): the pages run it, not the other.
            **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
        }
        self.run_checked("omnishelf cloud seed")
        self.key = self.run_checked("omnishelf users api-key create --name docs --role hq").strip().split()[-1]
        user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
        self.placeholders = {
            "http://127.0.0.1:8000": self.api,
            "mqtt://127.0.0.1:1883": self.layout.url,
            "-p 1883": f"-p {self.layout.port}",
            # A broker or cloud the docs start themselves, beside the world's own.
            "--port 1883": f"--port {broker2}",
            "--port 8000": f"--port {http2}",
            # The TLS broker of docs/multi-host.md, by the name on its certificate.
            "--tls-port 8883": f"--tls-port {tls}",
            "-connect broker.example.com:8883": f"-connect 127.0.0.1:{tls}",
            "/etc/omnishelf": str(self.tmp / "etc/omnishelf"),
            "/var/lib/omnishelf": str(self.tmp / "var/lib/omnishelf"),
            "/var/backups/omnishelf": str(self.tmp / "var/backups/omnishelf"),
            "/home/tech": str(self.tmp / "home"),
            "mqtts://mqtt.example.com:8883": self.layout.url,
            "https://cloud.example.com": self.api,
            "THE-PASSWORD-FROM-THE-OPERATOR": pw["st0001-k1"],
            "/opt/omnishelf": str(self.tmp / "opt/omnishelf"),
            **{f"/{d}": str(self.tmp / d) for d in SYSTEM_DIRS},
            # The service account: a test machine has no user `omnishelf`, and adding one is root's.
            "-o root -g omnishelf": f"-o {user} -g {group}",
            "-o omnishelf -g omnishelf": f"-o {user} -g {group}",
            "-g omnishelf": f"-g {group}",
            "chgrp omnishelf": f"chgrp {group}",
            "runuser -u omnishelf -- ": "",
        }
        # Secrets the docs elide with `…`: filled in where a command uses them; in output, `…`
        # stays the wildcard it is.
        # The PostgreSQL the docs move to: its own database on the test server, dropped at the end.
        pg = os.environ.get("OMNISHELF_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
        self.pg_name = f"omnishelf_docs_{secrets.token_hex(4)}"
        pg_user = pg.split("://", 1)[1].split("@", 1)[0] or "postgres"
        pg_host, pg_port = pg.rsplit("@", 1)[1].split("/", 1)[0].partition(":")[::2]
        self.pg_base = pg.rsplit("/", 1)[0]
        self.placeholders |= {
            "postgresql+psycopg://omnishelf@db1/omnishelf": f"{self.pg_base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{self.pg_name}",
            "postgresql://omnishelf@db1/omnishelf": f"{self.pg_base}/{self.pg_name}",
            "-h db1 -U omnishelf omnishelf": f"-h {pg_host} -p {pg_port or 5432} -U {pg_user} {self.pg_name}",
        }
        self.secrets = {
            "osk_…": self.key,
            "-P '…'": f"-P '{pw['ops']}'",
            # The docs' box listens on the default port; here on a free one (other tests, other
            # checkouts may hold 8480). Output showing it says `127.0.0.1:…`.
            "127.0.0.1:8480": f"127.0.0.1:{box_api}",
            "port: 8480": f"port: {box_api}",
        }
        cloud = subprocess.Popen(
            ["omnishelf", "cloud", "serve", "--port", str(http)], cwd=self.scratch, env=self.env, text=True,
            stdout=(self.tmp / "cloud.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.background.append(cloud)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.api}/health", timeout=2):
                    break
            except OSError:
                if cloud.poll() is not None or time.monotonic() > deadline:
                    raise DocFailure(f"the docs' cloud did not start: {(self.tmp / 'cloud.log').read_text()[-2000:]}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        for p in reversed(self.background):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        if hasattr(self, "broker"):
            self.broker.stop()
        if hasattr(self, "pg_name") and postgres_problem() is None:
            import psycopg

            with psycopg.connect(f"{self.pg_base}/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')

    def live(self, text: str, *, command: bool = True) -> str:
        """`text` with the docs' placeholders replaced by the live values (secrets only in commands)."""
        for shown, real in (self.placeholders | self.secrets if command else self.placeholders).items():
            text = text.replace(shown, real)
        return text

    def run_checked(self, command: str) -> str:
        done = subprocess.run(["bash", "-c", command], cwd=self.scratch, env=self.env, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S)
        if done.returncode != 0:
            raise DocFailure(f"setting up the docs' world: {command!r} failed: {done.stdout}{done.stderr}")
        return done.stdout

    # -- evaluating the blocks of a page ---------------------------------------------------------------

    def evaluate(self, example: Example) -> None:
        how = directive(example)
        if "skip" in how:
            return
        if how.get("requires") == "postgresql" and postgres_problem() is not None:
            return  # the PostgreSQL tests skip too, saying why (tests/cloud/conftest.py)
        if not self.api:
            self.start()  # only for pages with something to run
        where = f"{Path(example.path).relative_to(REPO)}:{example.line}"
        if "file" in how:
            path = Path(self.live(how["file"]))
            path = path if path.is_absolute() else self.scratch / path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.live(example.parsed, command=True))
            return
        language = example.region.lexemes.get("arguments", "")
        if language == "sh":
            self._script(example.parsed, where)
        elif language == "console":
            for cmd in parse_console(example.parsed, example.line + 1):
                self._command(cmd, f"{where} (line {cmd.line})", how)

    def _script(self, script: str, where: str) -> None:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", self.live(script)], cwd=self.scratch, env=self.env,
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        if done.returncode != 0:
            raise DocFailure(f"{where}: this block failed with exit code {done.returncode}:\n{script}\n--- it printed:\n"
                             f"{done.stdout}{done.stderr}")

    def _command(self, cmd: Command, where: str, how: dict[str, str]) -> None:
        expected = [self.live(line, command=False) for line in cmd.expected]
        if "background" in how:
            self._background(cmd, expected, where)
            return
        done = subprocess.run(["bash", "-o", "pipefail", "-c", self.live(cmd.text)], cwd=self.scratch, env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=COMMAND_TIMEOUT_S)
        want = int(how.get("exit", 2 if any("omnishelf: error:" in line for line in expected) else 0))
        actual = done.stdout.splitlines()
        if done.returncode != want:
            raise DocFailure(f"{where}: `{cmd.text}` exited {done.returncode}, the doc implies {want}; it printed:\n{done.stdout}")
        if expected and not matches(expected, actual):
            raise DocFailure(f"{where}: `{cmd.text}` printed something else than the doc shows.\n--- the doc:\n"
                             + "\n".join(expected) + "\n--- the command:\n" + done.stdout)

    def _background(self, cmd: Command, expected: list[str], where: str) -> None:
        log = self.tmp / f"bg-{len(self.background)}.log"
        proc = subprocess.Popen(["bash", "-c", "exec " + self.live(cmd.text)], cwd=self.scratch, env=self.env, text=True,
                                stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.background.append(proc)
        deadline = time.monotonic() + 60
        while True:
            lines = log.read_text().splitlines()
            if matches([*expected, "…"], lines):
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                raise DocFailure(f"{where}: `{cmd.text}` did not print what the doc shows within 60 s.\n--- the doc:\n"
                                 + "\n".join(expected) + "\n--- the command:\n" + "\n".join(lines))
            time.sleep(0.2)
