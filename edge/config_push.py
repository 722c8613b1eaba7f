"""Config pushes on the box: validate, apply, acknowledge; roll back by itself when the new config
cannot reach the cloud.

Only on a provisioned box (its config is `<config dir>/box.yaml`, as `omnishelf provision` writes
it), run under a supervisor that starts the agent again when it exits with a `.restart` marker
beside the config (`omnishelf provision setup-mode --then-run`; systemd's Restart= does the same).

A push (`config`, `broker.payloads.ConfigData`) is validated with the same firmware_config schema
the cloud used (a refusal names the field), must be for this node and match its hash. Applying it:
the running file is kept as `box.yaml.good`, the new one written, `config-state.json` records the
version and, with `rollback_after_s`, a deadline; the ack `applied vN` is queued and the agent
restarts on the new config. If the restarted box is not connected to a live cloud before the
deadline, it puts `box.yaml.good` back and restarts again; its next birth carries the old config's
hash, which the cloud reads as the rollback. `/status` shows the state under `components.config`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from broker.envelope import Envelope, MessageType
from broker.payloads import ConfigData, ConfigRollback
from broker.sealing import SealError, load_or_create_key, open_sealed
from edge.component import BackgroundTask, CommandHandler, CommandRefused, Component, ComponentContext
from edge.network import NetworkCheckError, check_network, network_summary
from firmware_config import ConfigError, PathError, config_hash, load_config, parse_config, resolve_paths, write_config

__all__ = ["CONFIG_NAME", "RESTART_MARKER", "ConfigPushComponent", "config_push_component"]

log = logging.getLogger(__name__)

CONFIG_NAME = "box.yaml"
GOOD_NAME = "box.yaml.good"
STATE_NAME = "config-state.json"
KEY_NAME = "identity.key"
"""The box's own X25519 key, made in setup mode (provisioning): rotated passwords are sealed to it."""
RESTART_MARKER = ".restart"
RESTART_DELAY_S = 2.0
"""Time for the ack to leave through the outbox before the agent restarts on the new config."""


def _problem(exc: ConfigError) -> str:
    # "pushed config:3: field 'x': why" → "field 'x': why" (the line of a generated file means nothing)
    first = exc.problems[0]
    return first.split(": ", 1)[1] if ": " in first else first


class ConfigPushComponent(Component):
    name = "config"

    def __init__(self, ctx: ComponentContext, config_file: Path) -> None:
        self.ctx = ctx
        self.file = config_file
        self.dir = config_file.parent
        self.state_path = self.dir / STATE_NAME
        self.state: dict[str, Any] = self._load_state()
        self._stopping = asyncio.Event()

    def _load_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text())
            return state if isinstance(state, dict) else {}
        except (FileNotFoundError, ValueError):
            return {}

    def _save_state(self) -> None:
        tmp = self.state_path.with_name(f".{STATE_NAME}.tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.state_path)

    def commands(self) -> Mapping[MessageType, CommandHandler]:
        return {MessageType.CONFIG: self._on_config}

    def tasks(self) -> list[BackgroundTask]:
        return [BackgroundTask("config-watch", self._watch)]

    def status(self) -> Mapping[str, Any]:
        return {"file": str(self.file), "version": self.state.get("version", 0),
                "confirmed": self.state.get("confirmed", True), "last_rollback": self.state.get("last_rollback"),
                "network": network_summary(self.ctx.config)}

    def birth(self) -> Mapping[str, Any]:
        last = self.state.get("last_rollback")
        if not last:
            return {}
        return {"config_rollback": ConfigRollback(version=int(last["version"]), reason=str(last["reason"])[:500],
                                                  at=datetime.fromtimestamp(float(last["at"]), UTC))}

    async def stop(self) -> None:
        self._stopping.set()

    async def _on_config(self, env: Envelope) -> str:
        data = env.data
        assert isinstance(data, ConfigData)
        current = int(self.state.get("version", 0))
        if data.version and data.version <= current:
            return f"already at v{current}"
        try:
            cfg = parse_config(yaml.safe_dump(data.config, sort_keys=False), "pushed config")
        except ConfigError as exc:
            raise CommandRefused(f"rejected v{data.version}: {_problem(exc)}") from None
        own = self.ctx.config.node_id
        if data.credential is not None:
            try:
                password = open_sealed(load_or_create_key(self.dir / KEY_NAME, create=False), data.credential).decode()
            except (SealError, UnicodeDecodeError) as exc:
                raise CommandRefused(f"rejected v{data.version}: field 'credential': {exc}") from None
            self._write_secret(self._next_secret, password)
            self.ctx.offer_password(password, self._adopt)
            if data.config_hash == config_hash(self.ctx.config):
                self.state["version"] = data.version
                self._save_state()
                log.info("%s: next broker password received (v%d); the bus switches at its next login", own, data.version)
                return f"credential received v{data.version}"
        if cfg.node_id != own:
            raise CommandRefused(f"rejected v{data.version}: field 'node_id': {cfg.node_id!r} is not this box ({own!r})")
        if config_hash(cfg) != data.config_hash:
            raise CommandRefused(f"rejected v{data.version}: field 'config_hash': does not match the config sent")
        # Its relative paths will be relative to this box's config directory, once written there.
        cfg._base_dir = self.dir
        try:
            check_network(cfg, resolve_paths(cfg))
        except NetworkCheckError as exc:
            raise CommandRefused(f"rejected v{data.version}: {exc}") from None
        except PathError as exc:
            raise CommandRefused(f"rejected v{data.version}: field 'data_dir': {exc}") from None
        shutil.copyfile(self.file, self.dir / GOOD_NAME)
        write_config(cfg, self.file, header=f"pushed v{data.version} by the cloud")
        self.state = {"version": data.version, "hash": data.config_hash, "applied_at": time.time(),
                      "rollback_after_s": data.rollback_after_s, "confirmed": data.rollback_after_s == 0,
                      "previous_version": current, "last_rollback": self.state.get("last_rollback")}
        self._save_state()
        log.info("%s: config v%d applied; restarting on it in %.0f s", own, data.version, RESTART_DELAY_S)
        asyncio.get_running_loop().call_later(RESTART_DELAY_S, self._restart)
        return f"applied v{data.version}"

    @property
    def _next_secret(self) -> Path:
        return self._secret.with_name(self._secret.name + ".next")

    @property
    def _secret(self) -> Path:
        path = self.ctx.paths.password_file
        return path if path is not None else self.dir / "broker.secret"

    def _write_secret(self, path: Path, password: str) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    def _adopt(self, password: str) -> None:
        """The bus logged in with the rotated password: it becomes the stored one."""
        self._write_secret(self._secret, password)
        self._next_secret.unlink(missing_ok=True)
        log.info("%s: rotated broker password in use and stored", self.ctx.config.node_id)

    def _restart(self) -> None:
        (self.dir / RESTART_MARKER).write_text("")
        os.kill(os.getpid(), signal.SIGTERM)

    async def _watch(self) -> None:
        if self._next_secret.exists():
            # A rotation that was under way when the agent restarted: offer the new password again.
            self.ctx.offer_password(self._next_secret.read_text().strip(), self._adopt)
        if self.state.get("confirmed", True):
            return
        # The config this agent runs. A newer one applied meanwhile (it restarts the agent in
        # RESTART_DELAY_S) is not this one to confirm: the restarted agent watches it.
        running = self.state["version"]
        deadline = float(self.state["applied_at"]) + float(self.state["rollback_after_s"])
        while time.time() < deadline and not self._stopping.is_set():
            if self.state.get("version") != running:
                return
            if self.ctx.cloud_reachable():
                self.state["confirmed"] = True
                self._save_state()
                (self.dir / GOOD_NAME).unlink(missing_ok=True)
                log.info("%s: config v%s confirmed (the cloud is reachable with it)", self.ctx.config.node_id, self.state["version"])
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.2)
        if self._stopping.is_set():
            return
        version = self.state["version"]
        reason = f"could not reach the cloud within {self.state['rollback_after_s']:.0f} s after applying v{version}"
        log.error("%s: %s: rolling back to v%s", self.ctx.config.node_id, reason, self.state.get("previous_version", 0))
        shutil.copyfile(self.dir / GOOD_NAME, self.file)
        self.state = {"version": self.state.get("previous_version", 0), "confirmed": True,
                      "last_rollback": {"version": version, "reason": reason, "at": time.time()}}
        self._save_state()
        self._restart()


def config_push_component(ctx: ComponentContext) -> Component | None:
    """The component on a provisioned box: its config is `box.yaml` beside its `identity.key`."""
    base = ctx.config.base_dir
    # Provisioned: claimed with `omnishelf provision` (its key is there) and run by its supervisor.
    if base is None or not (base / CONFIG_NAME).is_file() or not (base / KEY_NAME).is_file():
        return None
    try:
        if config_hash(load_config(base / CONFIG_NAME)) != config_hash(ctx.config):
            return None
    except ConfigError:
        return None
    return ConfigPushComponent(ctx, base / CONFIG_NAME)
