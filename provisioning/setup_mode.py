"""The box's setup mode: advertise on the LAN, show a pairing code, take a claim, write the config.

A fresh box (no config file yet) runs this instead of the agent. It makes its own X25519 key pair,
advertises `_omnishelf-setup._tcp` with its serial and model in the TXT record, and serves a tiny
HTTP API the technician's laptop talks to:

- `GET /setup`: serial, model, public key, the nonce of the current pairing code, since when.
- `POST /setup/pair`: the laptop's ephemeral key and its proof of the pairing code; the answer is
  the box's proof (see `provisioning.crypto`). Wrong codes: at most MAX_TRIES, then a new code.
- `POST /setup/finish`: the config the cloud made, the password sealed to the box's key and the CA,
  MAC'd with the pairing key. The box validates the config (firmware_config), opens the password,
  writes config, password and CA beside each other and leaves setup mode.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from firmware_config import ConfigError, parse_config
from provisioning import crypto, lan

__all__ = ["CONFIG_NAME", "MAX_TRIES", "SetupBox"]

log = logging.getLogger(__name__)

CONFIG_NAME = "box.yaml"
SECRET_NAME = "broker.secret"
CA_NAME = "ca.pem"
KEY_NAME = "setup.key"
CODE_NAME = "pairing-code"
IDENTITY_KEY_NAME = "identity.key"
MAX_TRIES = 5
_MAX_BODY = 256 * 1024


@dataclass
class _Pairing:
    code: str
    nonce: str
    tries: int = 0
    key: bytes | None = None


@dataclass
class SetupBox:
    """One box in setup mode: `start()` advertises and serves; `claimed` is set once enrolled."""

    serial: str
    model: str
    config_dir: Path
    interface: str | None = None
    """The IPv4 address to serve and advertise on (None: all interfaces)."""
    port: int = 0
    claimed: threading.Event = field(default_factory=threading.Event)
    screen: Callable[[str], None] = field(default=lambda line: print(line, flush=True))
    """Where the box shows its pairing code (its console; the setup-mode service's journal)."""
    node_id: str | None = None
    since: float = field(default_factory=time.time)
    lockout_s: float = 30.0
    """After MAX_TRIES wrong codes, no pairing at all for this long (then a new code): 5 guesses per
    30 s make guessing a 6-digit code a matter of months, not hours."""

    def __post_init__(self) -> None:
        self.key = crypto.BoxKey.load_or_create(self.config_dir / KEY_NAME)
        self._lock = threading.Lock()
        self._locked_until = 0.0
        self._pairing = self._new_pairing()
        self._server: ThreadingHTTPServer | None = None
        self._zc_cm: Any = None
        self._ad: lan.Advertisement | None = None

    @property
    def config_path(self) -> Path:
        return self.config_dir / CONFIG_NAME

    @property
    def pairing_code(self) -> str:
        return self._pairing.code

    def _new_pairing(self) -> _Pairing:
        pairing = _Pairing(crypto.new_pairing_code(), secrets.token_hex(16))
        # Also on the box's disk (0600): a headless box's "screen" for whoever has its console.
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self._write(CODE_NAME, pairing.code.encode() + b"\n")
        # The box's "screen": the console / journal of the setup-mode service.
        self.screen(f"SETUP MODE  serial {self.serial}  model {self.model}  pairing code {pairing.code}")
        return pairing

    # -- HTTP --------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {"v": 1, "serial": self.serial, "model": self.model, "public_key": self.key.public,
                "nonce": self._pairing.nonce, "since": self.since, "claimed": self.claimed.is_set()}

    def pair(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        laptop_key, their_proof = body.get("laptop_key"), body.get("proof")
        if not isinstance(laptop_key, str) or not isinstance(their_proof, str):
            return 400, {"error": "expected laptop_key and proof"}
        with self._lock:
            if self.claimed.is_set():
                return 409, {"error": f"box {self.serial} is already claimed (node {self.node_id})"}
            wait = self._locked_until - time.monotonic()
            if wait > 0:
                return 429, {"error": f"too many wrong pairing codes: try again in {wait:.0f} s, with the code the box shows then"}
            p = self._pairing
            try:
                key = self.key.pair_key(laptop_key, p.nonce, p.code)
            except crypto.SealError as exc:
                return 400, {"error": str(exc)}
            if not hmac.compare_digest(crypto.proof(key, "laptop"), their_proof):
                p.tries += 1
                left = MAX_TRIES - p.tries
                log.warning("wrong pairing code tried (%d left)", left)
                if left <= 0:
                    self._locked_until = time.monotonic() + self.lockout_s
                    self._pairing = self._new_pairing()
                    return 403, {"error": f"pairing code does not match; too many tries: the box shows a new code, usable in {self.lockout_s:.0f} s"}
                return 403, {"error": f"pairing code does not match the one the box shows ({left} tries left)"}
            p.key = key
            return 200, {"box_proof": crypto.proof(key, "box")}

    def finish(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        config_yaml, sealed, ca_pem, mac = (body.get(k) for k in ("config_yaml", "sealed_password", "ca_pem", "mac"))
        if not isinstance(config_yaml, str) or not isinstance(sealed, str) or not isinstance(mac, str) or not (
            ca_pem is None or isinstance(ca_pem, str)
        ):
            return 400, {"error": "expected config_yaml, sealed_password, ca_pem and mac"}
        with self._lock:
            if self.claimed.is_set():
                return 409, {"error": f"box {self.serial} is already claimed (node {self.node_id})"}
            key = self._pairing.key
            if key is None:
                return 403, {"error": "not paired: confirm the pairing code first"}
            if not hmac.compare_digest(crypto.finish_mac(key, config_yaml, sealed, ca_pem), mac):
                return 403, {"error": "the claim is not from the laptop that confirmed the pairing code"}
            try:
                cfg = parse_config(config_yaml, CONFIG_NAME)
            except ConfigError as exc:
                return 422, {"error": f"the cloud's config is not valid here: {exc.problems[0]}"}
            try:
                password = self.key.open(sealed)
            except crypto.SealError as exc:
                return 422, {"error": str(exc)}
            self._write(SECRET_NAME, password + b"\n")
            if ca_pem:
                self._write(CA_NAME, ca_pem.encode())
            # The key stays with the box: rotated passwords are sealed to it too.
            (self.config_dir / KEY_NAME).replace(self.config_dir / IDENTITY_KEY_NAME)
            (self.config_dir / CODE_NAME).unlink(missing_ok=True)
            # Last: box.yaml is what makes the box claimed (the agent's unit starts on it, setup mode
            # is skipped), so it appears only once everything it needs is in place.
            self._write(CONFIG_NAME, config_yaml.encode())
            self.node_id = cfg.node_id
            self.claimed.set()
        log.info("claimed as %s (store %s)", cfg.node_id, cfg.store_id)
        self.screen(f"CLAIMED  serial {self.serial}  node {cfg.node_id}  store {cfg.store_id}")
        return 200, {"node_id": cfg.node_id, "status": "enrolled", "config_sha256": hashlib.sha256(config_yaml.encode()).hexdigest()}

    def _write(self, name: str, data: bytes) -> None:
        path = self.config_dir / name
        tmp = path.with_name(f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        box = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                log.debug("setup api: " + format, *args)

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/setup":
                    self._send(200, box.info())
                else:
                    self._send(404, {"error": f"no {self.path!r} here: expected /setup"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > _MAX_BODY:
                    self._send(413, {"error": f"body of {length} bytes: expected at most {_MAX_BODY}"})
                    return
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                    if not isinstance(body, dict):
                        raise ValueError
                except ValueError:
                    self._send(400, {"error": "expected a JSON object"})
                    return
                if self.path == "/setup/pair":
                    self._send(*box.pair(body))
                elif self.path == "/setup/finish":
                    self._send(*box.finish(body))
                else:
                    self._send(404, {"error": f"no {self.path!r} here"})

        return Handler

    # -- life --------------------------------------------------------------------------------------

    def start(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self._server = ThreadingHTTPServer((self.interface or "0.0.0.0", self.port), self._handler())
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="setup-api", daemon=True).start()
        self._zc_cm = lan.zeroconf(self.interface)
        zc = self._zc_cm.__enter__()
        self._ad = lan.advertise(
            zc, lan.SETUP_TYPE, f"omnishelf-{self.serial}".lower()[:60], self.port,
            {"v": "1", "serial": self.serial, "model": self.model, "since": str(int(self.since))}, self.interface,
        )
        log.info("setup mode: advertising %s on port %d", lan.SETUP_TYPE, self.port)

    def stop(self) -> None:
        if self._ad is not None:
            try:
                self._ad.close()
            finally:
                self._ad = None
        if self._zc_cm is not None:
            self._zc_cm.__exit__(None, None, None)
            self._zc_cm = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
