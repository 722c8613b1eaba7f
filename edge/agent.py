"""The store box agent: one outbox, one bus client, the box's components, devices and local API.

Construction checks everything that can be checked before running (paths, password, the outbox
lock, each component, the local API's port) so that a box that cannot start says why in one line;
`run()` then opens the outbox, connects, and runs until `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from broker.client import BrokerAddress, JitteredBackoff, TlsSetupError
from broker.envelope import Envelope, MessageType
from broker.payloads import CommandData, Payload, TelemetryData
from broker.runtime import freeze_startup_objects
from edge.bus import BusClient, CommandHandler, CommandRefused, software_version
from edge.component import Component, ComponentContext, ComponentError
from edge.components import COMPONENTS, ComponentFactory
from edge.devices import DeviceSet
from edge.drivers import DriverRegistry, default_drivers
from edge.localapi import LocalApi, Request, Route
from edge.lock import OutboxInUse, OutboxLock
from edge.outbox import Outbox, OutboxFull, Row
from edge.outbox_db import OutboxTooNew
from edge.sysinfo import CpuMeter, read_metrics
from firmware_config import PASSWORD_ENV, BoxPaths, NodeConfig, PathError, config_hash, resolve_paths

if TYPE_CHECKING:
    from edge.catalogue.component import CatalogueComponent

__all__ = [
    "AgentConfigError",
    "AgentStartError",
    "EdgeAgent",
    "OutboxInUse",
    "broker_address",
    "broker_password",
    "run_agent",
]

log = logging.getLogger(__name__)

_TASK_GRACE_S = 5.0
_TELEMETRY_MIN_GAP_S = 1.0
"""Device state changes send telemetry early, but not more often than this."""


class AgentStartError(RuntimeError):
    """The agent cannot start on this box; the message says why in one line."""


class AgentConfigError(AgentStartError, ValueError):
    """The config is valid but cannot be used on this box (e.g. the password file is unreadable)."""


def broker_password(cfg: NodeConfig, paths: BoxPaths, env: Mapping[str, str] | None = None) -> str:
    """The broker password: from the config, its `password_file`, or `OMNISHELF_EDGE_PASSWORD`."""
    if cfg.broker.password is not None:
        return cfg.broker.password
    if paths.password_file is not None:
        try:
            secret = paths.password_file.read_text().strip()
        except OSError as exc:
            raise AgentConfigError(f"cannot read broker.password_file {paths.password_file}: {exc.strerror}") from None
        if not secret:
            raise AgentConfigError(f"broker.password_file {paths.password_file} is empty")
        return secret
    secret = (env if env is not None else os.environ).get(PASSWORD_ENV, "")
    if not secret:
        raise AgentConfigError(f"no broker password: set broker.password or broker.password_file, or {PASSWORD_ENV}")
    return secret


def broker_address(cfg: NodeConfig, paths: BoxPaths) -> BrokerAddress:
    """Where the broker is and, for mqtts://, which CA to trust: `broker.ca_file` is read now, so a
    missing or wrong file stops the agent at start with one line instead of failing every connect."""
    address = BrokerAddress.from_url(cfg.broker.url, paths.ca_file)
    try:
        address.ssl_context()
    except TlsSetupError as exc:
        raise AgentConfigError(f"broker.ca_file {exc}") from None
    return address


class EdgeAgent:
    """Runs until `stop()`. Holds the outbox lock from construction until `run()` ends (or `close()`)."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        password: str | None = None,
        env: Mapping[str, str] | None = None,
        components: Sequence[ComponentFactory] = COMPONENTS,
        drivers: DriverRegistry | None = None,
    ) -> None:
        self.config = config
        try:
            self.paths = resolve_paths(config, env)
        except PathError as exc:
            raise AgentConfigError(str(exc)) from None
        self.password = password if password is not None else broker_password(config, self.paths, env)
        self.broker_address = broker_address(config, self.paths)
        self.config_hash = config_hash(config)
        self.software_version = software_version()
        self.outbox: Outbox | None = None
        self.bus: BusClient | None = None
        self.components: list[Component] = []
        self.api: LocalApi | None = None
        self.ready = asyncio.Event()
        """Set once the outbox is open, the bus client exists and the local API answers."""
        self._stop = asyncio.Event()
        self._telemetry_wake = asyncio.Event()
        self._lock = OutboxLock(self.paths.outbox_lock, self.paths.outbox)
        self._lock.acquire()
        try:
            ctx = ComponentContext(config=config, paths=self.paths, publish=self.publish,
                                   cloud_reachable=self._cloud_reachable, offer_password=self._offer_password,
                                   local_api_url=lambda: self.api.url if self.api is not None else None)
            for factory in components:
                try:
                    component = factory(ctx)
                except ComponentError as exc:
                    raise AgentConfigError(str(exc)) from None
                if component is not None:
                    self.components.append(component)
            registry = drivers or default_drivers()
            self._named: dict[str, CommandHandler] = {}
            for component in self.components:
                for kind, driver in component.drivers().items():
                    registry.register(kind, driver, replace=True)
                self._named.update(component.named_commands())
            self.devices = DeviceSet(
                config.devices,
                registry,
                node_id=config.node_id,
                publish=self.publish,
                backoff=lambda: JitteredBackoff(config.backoff.base_s, config.backoff.cap_s),
                on_change=self._telemetry_wake.set,
            )
            if config.local_api.enabled:
                self.api = self._build_api()
        except BaseException:
            self.close()
            raise

    # -- wiring ------------------------------------------------------------------------------------

    def _build_api(self) -> LocalApi:
        cfg = self.config.local_api
        routes = [Route("GET", "/status", self._status_route)]
        for component in self.components:
            routes.extend(component.routes())
        try:
            return LocalApi(cfg, routes)
        except OSError as exc:
            raise AgentConfigError(
                f"local_api: cannot listen on {cfg.host}:{cfg.port} ({exc.strerror or exc}); "
                "choose a free local_api.port or set local_api.enabled: false"
            ) from None

    def component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)

    @property
    def catalogue(self) -> CatalogueComponent | None:
        """The catalogue component (None on a box without one)."""
        from edge.catalogue.component import CatalogueComponent

        found = self.component("catalogue")
        return found if isinstance(found, CatalogueComponent) else None


    def _offer_password(self, password: str, adopted: Callable[[str], None]) -> None:
        if self.bus is None:
            raise RuntimeError("the agent is not running: no password can be offered yet")
        self.bus.offer_password(password, adopted)

    def _birth_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"commands": ("ping", *sorted(self._named))}
        for component in self.components:
            fields.update(component.birth())
        return fields

    def _cloud_reachable(self) -> bool:
        bus = self.bus
        return bus is not None and bus.connected.is_set() and bus.cloud_online

    async def publish(self, type: MessageType, data: Payload) -> Row:
        """Send a message through the outbox (for components and drivers)."""
        if self.bus is None:
            raise RuntimeError("the agent is not running: nothing can be published yet")
        return await self.bus.publish(type, data)

    # -- running -----------------------------------------------------------------------------------

    async def run(self) -> None:
        cfg = self.config
        tasks: dict[str, asyncio.Task[None]] = {}
        try:
            try:
                self.outbox = outbox = await Outbox.open(
                    self.paths.outbox,
                    max_pending=cfg.outbox.max_pending,
                    retain_acked=cfg.outbox.retain_acked,
                    synchronous=cfg.outbox.synchronous.value,
                )
            except OutboxTooNew as exc:
                raise AgentConfigError(str(exc)) from None
            # A restart is when credentials or ACLs get fixed: give refused messages one more go.
            if requeued := await outbox.requeue_refused():
                log.warning("%s: retrying %d message(s) the broker refused before", cfg.node_id, requeued)
            bus = self.bus = BusClient(
                outbox,
                node=cfg.node_id,
                store=cfg.store_id,
                address=self.broker_address,
                password=self.password,
                config_hash=self.config_hash,
                devices=self.devices.infos,
                birth_fields=self._birth_fields,
                keepalive=cfg.broker.keepalive_s,
                keepalive_check_slack_s=cfg.broker.keepalive_check_slack_s,
                session_expiry=cfg.broker.session_expiry_s,
                backoff=JitteredBackoff(cfg.backoff.base_s, cfg.backoff.cap_s),
                auth_failure_s=cfg.backoff.auth_failure_s,
            )
            bus.on_command(MessageType.COMMAND, self._on_command)
            for component in self.components:
                for kind, handler in component.commands().items():
                    bus.on_command(kind, handler)
            if self.api is not None:
                self.api.start()
            log.info(
                "%s: agent starting (store %s, outbox %s, %d pending, config %s, local API %s, components: %s)",
                cfg.node_id,
                cfg.store_id,
                outbox.path,
                outbox.pending,
                self.config_hash[:19],
                self.api.url if self.api else "off",
                ", ".join(c.name for c in self.components) or "none",
            )
            tasks["bus"] = asyncio.create_task(bus.run(), name="bus")
            tasks["devices"] = asyncio.create_task(self.devices.run(), name="devices")
            if cfg.telemetry_every_s > 0:
                tasks["telemetry"] = asyncio.create_task(self._telemetry(), name="telemetry")
            for component in self.components:
                for bg in component.tasks():
                    tasks[bg.name] = asyncio.create_task(self._guard(bg.name, bg.run), name=bg.name)
            self.ready.set()
            stop = asyncio.create_task(self._stop.wait())
            await asyncio.wait({tasks["bus"], stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            await self._shutdown(tasks)
        finally:
            for t in tasks.values():
                t.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            if self.api is not None:
                await asyncio.to_thread(self.api.stop)
                self.api = None
            if self.outbox is not None:
                await self.outbox.close()
            self.close()
            log.info("%s: agent stopped", cfg.node_id)

    async def _shutdown(self, tasks: dict[str, asyncio.Task[None]]) -> None:
        """Devices and telemetry first, then the API (nothing reads the components any more), then
        the components' tasks, then the bus (it says goodbye and lets command handlers finish)."""
        for name in ("devices", "telemetry"):
            if name in tasks:
                tasks[name].cancel()
        if self.api is not None:
            await asyncio.to_thread(self.api.stop)
            self.api = None
        for component in self.components:
            await component.stop()
        own = [t for n, t in tasks.items() if n not in ("bus", "devices", "telemetry")]
        if own:
            _done, late = await asyncio.wait(own, timeout=_TASK_GRACE_S)
            for t in late:
                log.warning("%s did not stop within %.0f s; cancelling it", t.get_name(), _TASK_GRACE_S)
                t.cancel()
        assert self.bus is not None
        await self.bus.stop()
        await tasks["bus"]

    async def _guard(self, name: str, run: Any) -> None:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            # A component's failure is its own: the rest of the box keeps serving.
            log.exception("%s: background task %s failed", self.config.node_id, name)

    def close(self) -> None:
        """Release what construction took (components, outbox lock); `run()` does this at its end."""
        for component in self.components:
            try:
                component.close()
            except Exception:
                log.exception("closing component %s failed", component.name)
        self.components = []
        if self.api is not None:
            self.api.stop()
            self.api = None
        self._lock.release()

    def request_stop(self) -> None:
        """Begin a clean stop (safe from a signal handler)."""
        self._stop.set()

    async def stop(self) -> None:
        self.request_stop()

    # -- the agent's own command, telemetry and status -----------------------------------------------

    async def _on_command(self, env: Envelope) -> str | None:
        assert isinstance(env.data, CommandData)
        if env.data.name == "ping":
            return "pong"
        if (handler := self._named.get(env.data.name)) is not None:
            return await handler(env)
        raise CommandRefused(f"command {env.data.name!r} is not supported by this box (software {self.software_version})")

    def telemetry(self, cpu: CpuMeter | None = None) -> TelemetryData:
        metrics = read_metrics(cpu)
        if self.outbox is not None:
            metrics["outbox_pending"] = float(self.outbox.pending)
        if self.bus is not None:
            stats = self.bus.stats
            metrics["bus_reconnects"] = float(stats.reconnects)
            metrics["outbox_refused_low_priority"] = float(stats.rejected_low_priority)
        return TelemetryData(metrics=metrics, devices=self.devices.infos())

    async def _telemetry(self) -> None:
        cpu = CpuMeter()
        cpu.percent()  # the first reading only sets the baseline
        every = self.config.telemetry_every_s
        last = time.monotonic()
        while True:
            # Every interval, and soon after a device changes state (the birth may predate a driver
            # that took a while to come up, or one that failed since).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._telemetry_wake.wait(), max(0.0, last + every - time.monotonic()))
            if self._telemetry_wake.is_set():
                self._telemetry_wake.clear()
                await asyncio.sleep(max(0.0, last + _TELEMETRY_MIN_GAP_S - time.monotonic()))
            last = time.monotonic()
            try:
                await self.publish(MessageType.TELEMETRY, self.telemetry(cpu))
            except OutboxFull as exc:
                log.debug("telemetry not queued: %s", exc)

    def status(self) -> dict[str, Any]:
        """What `/status` answers (runs on an API worker thread: reads, never waits for the loop)."""
        bus, outbox = self.bus, self.outbox
        components: dict[str, Any] = {}
        for c in self.components:
            try:
                components[c.name] = dict(c.status())
            except Exception as exc:
                log.exception("status of component %s failed", c.name)
                components[c.name] = {"error": f"{type(exc).__name__}: {exc}"}
        return {
            "node_id": self.config.node_id,
            "store_id": self.config.store_id,
            "software_version": self.software_version,
            "config_hash": self.config_hash,
            "bus": None if bus is None else {
                "connected": bus.connected.is_set(),
                "cloud_online": bus.cloud_online,
                "session": bus.session,
                "connected_for_s": None if bus.connected_since is None else round(time.monotonic() - bus.connected_since, 1),
                **dataclasses.asdict(bus.stats),
            },
            "outbox": None if outbox is None else {
                "path": str(outbox.path), "pending": outbox.pending, "last_seq": outbox.last_seq,
            },
            "local_api": None if self.api is None else self.api.stats(),
            "devices": [d.model_dump(mode="json") for d in self.devices.infos()],
            "components": components,
        }

    def _status_route(self, _req: Request) -> Any:
        return self.status()


def run_agent(config: NodeConfig) -> None:
    """Run the agent in the foreground until SIGTERM or SIGINT, then stop cleanly."""
    if config.log_level is not None:
        logging.getLogger().setLevel(config.log_level)

    async def main() -> None:
        agent = EdgeAgent(config)
        freeze_startup_objects()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, agent.request_stop)
        await agent.run()

    asyncio.run(main())
