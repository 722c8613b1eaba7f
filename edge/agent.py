"""The store box agent: one outbox, one bus client and the configured devices, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from broker.client import BrokerAddress, JitteredBackoff
from broker.envelope import Envelope, MessageType
from broker.payloads import AckData, CommandData
from edge.bus import BusClient
from edge.devices import Device, build_devices
from edge.outbox import Outbox
from firmware_config import PASSWORD_ENV, NodeConfig, config_hash

if TYPE_CHECKING:
    from edge.catalogue.service import CatalogueService

__all__ = ["AgentConfigError", "EdgeAgent", "broker_password", "run_agent"]

log = logging.getLogger(__name__)


class AgentConfigError(ValueError):
    """The config is valid but cannot be used on this box (e.g. the password file is unreadable)."""


def broker_password(cfg: NodeConfig, env: Mapping[str, str] | None = None) -> str:
    """The broker password: from the file, its `password_file`, or `OMNISHELF_EDGE_PASSWORD`."""
    if cfg.broker.password is not None:
        return cfg.broker.password
    if cfg.broker.password_file is not None:
        try:
            secret = Path(cfg.broker.password_file).read_text().strip()
        except OSError as exc:
            raise AgentConfigError(
                f"cannot read broker.password_file {cfg.broker.password_file}: {exc.strerror}"
            ) from None
        if not secret:
            raise AgentConfigError(f"broker.password_file {cfg.broker.password_file} is empty")
        return secret
    secret = (env if env is not None else os.environ).get(PASSWORD_ENV, "")
    if not secret:
        raise AgentConfigError(f"no broker password: set broker.password, broker.password_file or {PASSWORD_ENV}")
    return secret


class EdgeAgent:
    """Runs until `stop()`; the outbox is open only while `run()` is."""

    def __init__(self, config: NodeConfig, *, password: str | None = None) -> None:
        self.config = config
        self.password = password if password is not None else broker_password(config)
        self.config_hash = config_hash(config)
        self.outbox: Outbox | None = None
        self.bus: BusClient | None = None
        self.devices: list[Device] = []
        self.catalogue: CatalogueService | None = None
        if config.catalogue.cloud_url:
            # Imported only when configured: a box without a catalogue does not pay for it in memory.
            from edge.catalogue.service import CatalogueService

            self.catalogue = CatalogueService(config)
        self.ready = asyncio.Event()
        """Set once the outbox is open and the bus client exists (not necessarily connected)."""
        self._stop = asyncio.Event()

    async def run(self) -> None:
        cfg = self.config
        self.outbox = outbox = await Outbox.open(
            cfg.outbox_path,
            max_pending=cfg.outbox.max_pending,
            retain_acked=cfg.outbox.retain_acked,
            synchronous=cfg.outbox.synchronous.value,
        )
        try:
            # A restart is when credentials or ACLs get fixed: give refused messages one more go.
            if requeued := await outbox.requeue_refused():
                log.warning("%s: retrying %d message(s) the broker refused before", cfg.node_id, requeued)
            bus = self.bus = BusClient(
                outbox,
                node=cfg.node_id,
                store=cfg.store_id,
                address=BrokerAddress.from_url(cfg.broker.url),
                password=self.password,
                config_hash=self.config_hash,
                keepalive=cfg.broker.keepalive_s,
                keepalive_check_slack_s=cfg.broker.keepalive_check_slack_s,
                session_expiry=cfg.broker.session_expiry_s,
                backoff=JitteredBackoff(cfg.backoff.base_s, cfg.backoff.cap_s),
                auth_failure_s=cfg.backoff.auth_failure_s,
            )
            bus.on_command(MessageType.COMMAND, self._on_command)
            catalogue_task: asyncio.Task[None] | None = None
            if self.catalogue is not None:
                bus.on_command(MessageType.CATALOG, self.catalogue.on_command)
                catalogue_task = asyncio.create_task(self.catalogue.run(), name="catalogue")
            self.devices = build_devices(cfg, bus)
            bus.devices = tuple(d.info for d in self.devices)
            log.info(
                "%s: agent starting (store %s, outbox %s, %d pending, config %s)",
                cfg.node_id,
                cfg.store_id,
                outbox.path,
                outbox.pending,
                self.config_hash[:19],
            )
            bus_task = asyncio.create_task(bus.run(), name="bus")
            device_tasks = [asyncio.create_task(d.run(), name=f"device-{i}") for i, d in enumerate(self.devices)]
            self.ready.set()
            stop_task = asyncio.create_task(self._stop.wait())
            await asyncio.wait({bus_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            for t in device_tasks:
                t.cancel()
            await asyncio.gather(*device_tasks, return_exceptions=True)
            await bus.stop()
            await bus_task
            if catalogue_task is not None and self.catalogue is not None:
                await self.catalogue.stop()
                await catalogue_task
            stop_task.cancel()
        finally:
            await outbox.close()
            log.info("%s: agent stopped", cfg.node_id)

    def request_stop(self) -> None:
        """Begin a clean stop (safe from a signal handler)."""
        self._stop.set()

    async def stop(self) -> None:
        self.request_stop()

    async def _on_command(self, env: Envelope) -> None:
        assert isinstance(env.data, CommandData) and self.bus is not None
        if env.data.name == "ping":
            ack = AckData(ok=True, detail="pong")
        else:
            ack = AckData(ok=False, detail=f"command {env.data.name!r} is not supported in this version")
        await self.bus.publish(MessageType.ACK, ack, corr=env.msg_id)


def run_agent(config: NodeConfig) -> None:
    """Run the agent in the foreground until SIGTERM or SIGINT, then stop cleanly."""

    async def main() -> None:
        agent = EdgeAgent(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, agent.request_stop)
        await agent.run()

    asyncio.run(main())
