"""`omnishelf demo` (what `make demo` runs) as a user runs it: the banner is the one docs/operator.md
shows, its URLs and credentials work, every box comes online, a box serves the synced catalogue, and
stopping leaves nothing running."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil

from tests.docs.runner import REPO, matches
from tests.system.harness import wait_for

OPERATOR_GUIDE = REPO / "docs" / "operator.md"


def _get(url: str, key: str | None = None) -> object:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def iter_queue(q: queue.Queue[str]) -> list[str]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


def _ok(fn: object) -> bool:
    try:
        return bool(fn())  # type: ignore[operator]
    except OSError:
        return False


def _helper_process(p: psutil.Process) -> bool:
    try:
        return any("multiprocessing" in a for a in p.cmdline())
    except psutil.NoSuchProcess:
        return True  # a short-lived helper that ended meanwhile


def documented_banner() -> list[str]:
    """The banner as the operator guide shows it: the `text` block after its `make demo`."""
    page = OPERATOR_GUIDE.read_text()
    demo = page.find("```sh\nmake demo\n```\n")
    start = page.find("```text\n", demo)
    assert demo >= 0 and start >= 0, f"{OPERATOR_GUIDE}: no ```text block (the demo's banner) after `make demo`"
    # The first block after the command, not a later one.
    assert page.count("```", demo + len("```sh\nmake demo\n```\n"), start) == 0, f"{OPERATOR_GUIDE}: the block after `make demo` is not ```text"
    start += len("```text\n")
    return page[start:page.index("```", start)].splitlines()


def as_documented(banner: list[str]) -> list[str]:
    """The banner with this run's free ports in place of the defaults the guide shows (1883, 8000)."""
    text = "\n".join(banner)
    mqtt = re.search(r"broker\s+mqtt://127\.0\.0\.1:(\d+)\s", text)
    http = re.search(r"cloud core\s+http://127\.0\.0\.1:(\d+)\s", text)
    assert mqtt and http, text
    out = []
    for line in banner:
        line = re.sub(rf"127\.0\.0\.1:{http[1]}\b", "127.0.0.1:8000", line)
        line = re.sub(rf"127\.0\.0\.1:{mqtt[1]}\b", "127.0.0.1:1883", line)
        out.append(re.sub(rf" -p {mqtt[1]} ", " -p 1883 ", line))
    return out


def test_the_documented_banner_is_read_from_the_guide() -> None:
    """The comparison below can fail: the guide's block is found, and a banner line it does not
    show (the key-less curl the guide once printed) does not match it."""
    shown = documented_banner()
    assert shown[0] == "omnishelf demo is running:" and shown[-1] == "Ctrl-C stops everything."
    keyless = [line.replace("-H 'Authorization: Bearer osk_…' ", "") for line in shown]
    assert keyless != shown
    actual = [line.replace("osk_…", "osk_abc").replace("…", "x") for line in shown]
    assert matches(shown, actual) and not matches(keyless, actual)


def test_demo_runs_the_whole_system_and_stops_cleanly(tmp_path: Path) -> None:
    # As `make demo` runs it, with its default data directory relative to where it starts, so that
    # the banner's paths read as the guide shows them.
    proc = subprocess.Popen(
        [sys.executable, "-m", "omnishelf.cli", "demo", "--data-dir", "var/demo", "--mqtt-port", "0", "--http-port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    banner: list[str] = []
    lines: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout
    assert stdout is not None
    # A thread reads, because select() on the pipe misses lines already in Python's read buffer.
    def read() -> None:
        for line in stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while not banner or banner[-1] != "Ctrl-C stops everything.":
            assert proc.poll() is None, f"the demo exited early (code {proc.returncode}):\n" + "\n".join(banner)
            try:
                banner.append(lines.get(timeout=max(0.1, deadline - time.monotonic())).rstrip("\n"))
            except queue.Empty:
                raise AssertionError("no banner within 90 s:\n" + "\n".join(banner)) from None
        text = "\n".join(banner)
        assert matches(documented_banner(), as_documented(banner)), (
            f"the demo's banner is not the one {OPERATOR_GUIDE.relative_to(REPO)} shows after `make demo`; it printed:\n{text}")
        key, nodes_url = re.search(r"Bearer (osk_\S+)' (http://\S+/nodes)", text).groups()  # type: ignore[union-attr]
        search_url = re.search(r"curl -s '(http://\S+/search)\?q=tea'", text).group(1)  # type: ignore[union-attr]
        assert re.search(r"sign in as admin / \S+\)", text)
        console = re.search(r"HQ console:\s+(http://\S+/console/)\s", text).group(1)  # type: ignore[union-attr]
        with urllib.request.urlopen(console, timeout=10) as resp:  # follows the redirect to the sign-in page
            assert resp.status == 200 and resp.url.endswith("/console/login")
        box_status = re.search(r"local API .*: (http://\S+/status)", text).group(1)  # type: ignore[union-attr]
        assert "mosquitto_sub -h 127.0.0.1" in text

        def all_online() -> bool:
            nodes = _get(nodes_url, key)
            # The three demo boxes and the one claimed from setup mode (omnishelf.demo._provision_demo_box);
            # the traceability demo's scanning station, st0003-k2, came and went.
            boxes = [n for n in nodes if n["id"] != "st0003-k2"] if isinstance(nodes, list) else []
            return len(boxes) == 4 and all(n["online"] for n in boxes)

        assert re.search(r"a box claimed from setup mode .*: DEMO-0001 -> st0001-k2 \(online, claimed in ", text), text
        wait_for(lambda: _ok(all_online), 60, "all four demo boxes online")
        status = _get(box_status)
        assert isinstance(status, dict) and status["bus"]["connected"] and "catalogue" in status["components"]
        wait_for(lambda: _ok(lambda: any(p["sku"] == "TEA-LJ-250" for p in _get(f"{search_url}?q=tea"))), 60,  # type: ignore[attr-defined]
                 "the catalogue on the first box")
        # The catalogue announcement went through the durable downlink and the box acknowledged it.
        commands_url = re.search(r"Bearer osk_\S+' (http://\S+/commands)", text).group(1)  # type: ignore[union-attr]
        wait_for(lambda: _ok(lambda: any(c["type"] == "catalog" and c["status"] == "delivered"
                                         for c in _get(commands_url, key))), 60,  # type: ignore[attr-defined]
                 "the catalogue announcement acknowledged by the first box")
        assert re.search(r"http://\S+/console/bus/failed", text)
        # Traceability: the demo's scanning station got a verdict over the bus for each of its scans.
        assert "D0002: genuine (commissioned_unit)" in text and "D0001: cloned (impossible_travel)" in text, text
        # The first box's camera station reads the generated video; the cloud knows those units
        # (received at its store), so the final verdicts of the first pass are genuine sales.
        verdicts_url = re.search(r"curl -s '(http://\S+/station/verdicts)\?limit=5'", text).group(1)  # type: ignore[union-attr]

        def a_final_genuine_sale() -> bool:
            scans = _get(f"{verdicts_url}?limit=20")["scans"]  # type: ignore[index]
            return any(s["verdict"] and s["verdict"]["verdict"] == "genuine" and not s["verdict"]["provisional"]
                       and s["code"].endswith("DEMO0001") for s in scans)

        wait_for(lambda: _ok(a_final_genuine_sale), 60, "the camera station's first unit verified genuine by the cloud")
        # The cloud shelf's box side on the first box: pinyin initials find the Longjing tea.
        shelf = re.search(r"curl -s '(http://\S+/shelf/products\?q=lj)'", text)
        assert shelf, text
        wait_for(lambda: _ok(lambda: any(p["sku"] == "TEA-LJ-250" for p in _get(shelf[1])["items"])), 60,  # type: ignore[index]
                 "the kiosk index on the first box")
        # Where the tea is: the box asks the cloud's stock figures (the kiosk's own API key, its store's).
        where = re.search(r"curl -s '(http://\S+/shelf/availability/TEA-LJ-250)'", text)
        assert where, text
        wait_for(lambda: _ok(lambda: _get(where[1])["source"] == "cloud"), 60,  # type: ignore[index]
                 "the kiosk box's availability from the cloud")
        # The clerk's station app: the banner names the box it would open on, whose station API answers.
        station = re.search(r"omnishelf station --windowed --size \S+ --box (http://\S+)", text)
        assert station and "PIN 2580" in text, text
        wait_for(lambda: _ok(lambda: "printers" in _get(f"{station[1]}/station")), 60,  # type: ignore[operator]
                 "the station's box API on the first box")
        # Clerks: the first store's roster reached its station box; the demo clerk signs in with the PIN.
        sign_in = re.search(r"curl -s -X POST -d '(\{[^']+\})' (http://\S+/clerks/sign-in)", text)
        assert sign_in, text

        def signed_in() -> bool:
            req = urllib.request.Request(sign_in[2], data=sign_in[1].encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                return bool(json.loads(resp.read())["clerk"]["name"] == "Demo Clerk")

        wait_for(lambda: _ok(signed_in), 60, "the demo clerk signed in at the first box")
        children = psutil.Process(proc.pid).children(recursive=True)
        # broker, cloud, three boxes, the claimed box's supervisor and its agent (the kiosk box's
        # pinyin indexer runs in a spawned helper, with multiprocessing's tracker: not counted, but
        # they must be gone at the end like the rest)
        main = [c for c in children if not _helper_process(c)]
        assert len(main) == 7, [c.cmdline() for c in children]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(10)
    out = "\n".join(banner) + "".join(iter_queue(lines))
    assert proc.returncode == 0, out
    assert "stopped: boxes, cloud core, broker." in out
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [c.pid for c in alive]
