"""One MQTT 5 connection driven by the asyncio event loop, plus jittered reconnect backoff.

paho runs without its own thread here: its socket is registered with the event loop (the way
aiomqtt does it), so every paho callback runs on the loop thread and may touch the caller's state
directly, and nothing ever blocks inside a callback. Each `MqttConnection` is one network
connection; reconnecting means making a new one, so paho's in-memory resend queue never competes
with the caller's durable outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import select
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

__all__ = [
    "BrokerAddress",
    "BrokerCertificateError",
    "BusAuthError",
    "BusError",
    "BusNotConnected",
    "JitteredBackoff",
    "MqttConnection",
    "PublishRefused",
    "TlsSetupError",
    "Will",
    "keepalive_for_deadline",
]

log = logging.getLogger(__name__)

_READS_PER_WAKEUP = 200
NOT_AUTHORIZED = 135
BAD_CREDENTIALS = 134
ADMINISTRATIVE_ACTION = 152
"""The reason code of a DISCONNECT the broker sends when an admin changed the client's credential
(Mosquitto's dynamic security: a new password, disabled, deleted); it sends no will then."""


class BusError(Exception):
    """Base of every bus error."""


class BusNotConnected(BusError):
    """The connection is down (or was never up); retry after reconnecting."""


class BusAuthError(BusError):
    """The broker refused our credentials or rights: retrying the same ones will not help."""


class PublishRefused(BusError):
    """The broker answered a publish with a failure reason code (MQTT 5), e.g. 135 Not authorized."""

    def __init__(self, topic: str, reason: ReasonCode) -> None:
        super().__init__(f"broker refused publish to {topic!r}: {reason.getName()} ({reason.value})")
        self.topic = topic
        self.reason = reason


class TlsSetupError(BusError, ValueError):
    """The TLS settings cannot be used: the CA file is missing, unreadable or holds no certificate.
    Retrying will not help; the message names the file and the problem."""


class BrokerCertificateError(BusNotConnected):
    """The broker's certificate did not verify against the trusted CAs, or names another host: the
    connection was refused by us, before any credential was sent."""

    def __init__(self, address: BrokerAddress, reason: str) -> None:
        trusted = f"CA file {address.ca_file}" if address.ca_file else "the system's CA store"
        super().__init__(f"certificate verify failed for broker {address}: {reason} (trusted: {trusted})")
        self.address = address
        self.reason = reason


_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL)


def read_certificates(path: str | os.PathLike[str]) -> list[str]:
    """The PEM certificates in `path`, in file order; `TlsSetupError` naming the file otherwise."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise TlsSetupError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    found = _PEM_CERT.findall(text)
    if not found:
        raise TlsSetupError(f"{path}: expected PEM certificates ('-----BEGIN CERTIFICATE-----'), found none")
    try:
        ssl.create_default_context(cadata="\n".join(found))
    except ssl.SSLError as exc:
        raise TlsSetupError(f"{path}: a certificate in it cannot be parsed ({exc.reason or exc})") from None
    return found


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    ca_file: str | None = None
    """mqtts:// only: a PEM file of the CAs that may sign the broker's certificate (then only those are
    trusted); None trusts the system's CA store. The host name is checked either way."""
    pinned: bool = False
    """`ca_file` holds the broker's own certificate (its first one): trust exactly that certificate,
    under whatever name it was reached. For the broker's own admin client on loopback, which dials
    127.0.0.1 while the certificate names the host's public name."""

    @classmethod
    def from_url(cls, url: str, ca_file: str | os.PathLike[str] | None = None) -> BrokerAddress:
        """`mqtt://host:port` or `mqtts://host:port` (ports default to 1883 / 8883); `ca_file` only
        with mqtts:// (a CA given for a plain-text URL would silently not be used)."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"Invalid broker URL {url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ValueError(f"Invalid broker URL {url!r}: the port is not a number from 1 to 65535") from None
        if ca_file is not None and not tls:
            raise ValueError(
                f"a CA file ({ca_file}) was given for the plain-text broker URL {url!r}: expected mqtts://host[:port]"
            )
        return cls(parts.hostname, port, tls, None if ca_file is None else os.fspath(ca_file))

    def ssl_context(self) -> ssl.SSLContext | None:
        """How to verify the broker (None for mqtt://); reads `ca_file` now. Raises `TlsSetupError`."""
        if not self.tls:
            return None
        if self.ca_file is None:
            return ssl.create_default_context()
        certs = read_certificates(self.ca_file)
        if not self.pinned:
            # With cadata, the system store is not loaded: a private CA is the only one trusted.
            return ssl.create_default_context(cadata="\n".join(certs))
        ctx = ssl.create_default_context(cadata=certs[0])
        # The pinned certificate itself is the trust anchor (it need not be self-signed), so no
        # other certificate passes, and no name needs to match.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        ctx.check_hostname = False
        return ctx

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = False


class JitteredBackoff:
    """Exponential backoff with 'equal jitter': each delay is uniform in [d/2, d], d doubling up to
    `cap`. The jitter spreads a fleet's reconnects after a cloud restart; the floor of d/2 keeps a
    single box from hammering a broker that refuses it."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        if not 0 < base <= cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={base}, cap={cap}")
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 62)
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


MOSQUITTO_2_0_KEEPALIVE_SLACK_S = 6.5
"""How late Mosquitto 2.0.x may act on an expired keep alive. It sweeps keepalives about every 5 s,
so the will of a silent client comes up to ~6 s after the 1.5 x keep alive deadline (measured here
on 2.0.11: keep alive 2 s -> will after 5.9 s, 5 s -> 11.9 s, 8 s -> 17.9 s)."""


def keepalive_for_deadline(deadline_s: float, broker_slack_s: float = MOSQUITTO_2_0_KEEPALIVE_SLACK_S) -> int:
    """The MQTT keep alive to ask for so that the broker publishes our will within `deadline_s`
    of our going silent: it must hold that 1.5 x keep alive + the broker's sweep slack <= deadline."""
    if deadline_s <= 0:
        raise ValueError(f"the offline-detection deadline must be positive, got {deadline_s}")
    return max(1, int((deadline_s - broker_slack_s) / 1.5))


class MqttConnection:
    """A single MQTT 5 connection on the running event loop.

    `on_message` is called on the loop thread for every incoming PUBLISH and must not block; with
    `manual_ack=True` the caller acknowledges with `ack(mid)` once the message is safe.
    """

    def __init__(
        self,
        address: BrokerAddress,
        username: str,
        password: str,
        *,
        clean_start: bool = True,
        session_expiry: int = 0,
        keepalive: int = 30,
        will: Will | None = None,
        manual_ack: bool = False,
        max_inflight: int = 100,
        on_message: Callable[[paho.MQTTMessage], None] | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.address = address
        self.username = username
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self._clean_start = clean_start
        self._session_expiry = session_expiry
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._connack: asyncio.Future[bool] = self._loop.create_future()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        """Resolves with a description of why the connection ended."""
        self.disconnect_reason: int | None = None
        """The reason code of the broker's DISCONNECT, when it sent one (MQTT 5)."""
        self._pubs: dict[int, tuple[str, asyncio.Future[ReasonCode]]] = {}
        self._subs: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._misc: asyncio.Task[None] | None = None
        self._fd: int | None = None

        c = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=username,
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
        )
        c.username_pw_set(username, password)
        tls = address.ssl_context()
        if tls is not None:
            c.tls_set_context(tls)
        if will is not None:
            c.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        c.max_inflight_messages_set(max_inflight)
        c.max_queued_messages_set(0)
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_subscribe
        if on_message is not None:
            c.on_message = lambda _c, _u, msg: on_message(msg)
        self._client = c

    # -- lifecycle ---------------------------------------------------------------------------------

    async def connect(self) -> bool:
        """Open the connection; return the broker's `session_present` flag.

        Raises `BusAuthError` when the broker refuses the credentials, `BusNotConnected` otherwise.
        """
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry
        try:
            # paho's connect() does a blocking TCP connect; keep it off the event loop.
            rc = await asyncio.wait_for(
                self._loop.run_in_executor(
                    None,
                    lambda: self._client.connect(
                        self.address.host,
                        self.address.port,
                        keepalive=self.keepalive,
                        clean_start=self._clean_start,
                        properties=props,
                    ),
                ),
                self.connect_timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            err: BusNotConnected = BrokerCertificateError(self.address, exc.verify_message or str(exc))
            self._shutdown(str(err))
            raise err from None
        except (ssl.SSLError, ConnectionResetError) as exc:
            if not self.address.tls:
                raise self._unreachable(exc) from None
            # A plain listener resets the connection or answers garbage to a TLS ClientHello.
            reason = exc.reason if isinstance(exc, ssl.SSLError) else exc.strerror
            err = BusNotConnected(
                f"TLS handshake with broker {self.address} failed: {reason or exc} (is that port a TLS listener?)"
            )
            self._shutdown(str(err))
            raise err from None
        except (OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from None
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._shutdown(f"connect failed: {paho.error_string(rc)}")
            raise BusNotConnected(f"cannot connect to {self.address}: {paho.error_string(rc)}")
        try:
            return await asyncio.wait_for(asyncio.shield(self._connack), self.connect_timeout)
        except TimeoutError:
            self._client.disconnect()
            self._shutdown("no CONNACK")
            raise BusNotConnected(
                f"broker {self.address} sent no CONNACK within {self.connect_timeout:.0f} s"
            ) from None

    def _unreachable(self, exc: BaseException) -> BusNotConnected:
        why = f"cannot reach broker {self.address}: {exc or type(exc).__name__}"
        self._shutdown(why)
        return BusNotConnected(why)

    async def disconnect(self, timeout: float = 5.0, *, end_session: bool = False) -> None:
        """Clean disconnect (the broker does not publish the will). With `end_session`, the broker
        also discards this client's persistent session (MQTT 5: session expiry 0 in DISCONNECT), so
        nothing more is queued for it: what a worker leaving a shared subscription for good needs."""
        if self.closed.done():
            return
        props = None
        if end_session and self._session_expiry:
            props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 0
        self._client.disconnect(properties=props)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        self._shutdown("disconnected by us")

    def abort(self) -> None:
        """Drop the TCP connection without DISCONNECT (the broker publishes the will)."""
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._shutdown("aborted")

    @property
    def dropped_by_admin(self) -> bool:
        """The broker ended this connection because an admin changed the client's credential."""
        return self.disconnect_reason == ADMINISTRATIVE_ACTION

    @property
    def is_connected(self) -> bool:
        return self._connack.done() and not self._connack.exception() and not self.closed.done()

    # -- traffic -----------------------------------------------------------------------------------

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, expiry_s: int | None = None
    ) -> asyncio.Future[ReasonCode]:
        """Send one message. The future resolves with the broker's PUBACK reason code (QoS 1),
        raises `PublishRefused` on a failure code and `BusNotConnected` if the link drops first.

        `expiry_s` (MQTT 5 message expiry): the broker discards the message if it has not been
        delivered by then, from a queued session and from the retained store alike."""
        fut: asyncio.Future[ReasonCode] = self._loop.create_future()
        if not self.is_connected:
            fut.set_exception(BusNotConnected("not connected"))
            return fut
        props = None
        if expiry_s is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.MessageExpiryInterval = max(1, int(expiry_s))
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            fut.set_exception(BusNotConnected(f"publish failed: {paho.error_string(info.rc)}"))
        elif qos == 0:
            fut.set_result(ReasonCode(PacketTypes.PUBACK, identifier=0))
        else:
            self._pubs[info.mid] = (topic, fut)
        return fut

    async def subscribe(self, filters: Sequence[str], qos: int = 1) -> list[ReasonCode]:
        if not self.is_connected:
            raise BusNotConnected("not connected")
        fut: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        rc, mid = self._client.subscribe([(f, SubscribeOptions(qos=qos)) for f in filters])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise BusNotConnected(f"subscribe failed: {paho.error_string(rc)}")
        self._subs[mid] = fut
        codes = await asyncio.wait_for(fut, self.connect_timeout)
        refused = [(f, c) for f, c in zip(filters, codes, strict=False) if c.is_failure]
        if refused:
            raise BusAuthError("; ".join(f"subscription to {f!r} refused: {c.getName()} ({c.value})" for f, c in refused))
        return codes

    async def unsubscribe(self, filters: Sequence[str]) -> None:
        """Stop new deliveries on `filters` (returns at the broker's UNSUBACK)."""
        if not self.is_connected:
            raise BusNotConnected("not connected")
        fut: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        rc, mid = self._client.unsubscribe(list(filters))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise BusNotConnected(f"unsubscribe failed: {paho.error_string(rc)}")
        self._subs[mid] = fut
        await asyncio.wait_for(fut, self.connect_timeout)

    def ack(self, mid: int, qos: int = 1) -> None:
        """Acknowledge an incoming message (with `manual_ack=True`)."""
        if not self.closed.done():
            self._client.ack(mid, qos)

    # -- paho callbacks (all on the loop thread, except socket open during connect) ----------------

    def _call_on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._loop.is_closed():
            return  # e.g. paho's __del__ closing the socket after the loop ended: nothing to unregister
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: paho.Client, _u: Any, sock: Any) -> None:
        # paho leaves Nagle on; with it a QoS 1 round trip on loopback costs ~44 ms instead of 0.3 ms.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Registered by number: paho may close the socket object before it tells us.
        self._fd = sock.fileno()
        self._call_on_loop(self._opened, self._fd)

    def _opened(self, fd: int) -> None:
        if not self.closed.done():
            self._loop.add_reader(fd, self._read)
            self._start_misc()

    def _on_socket_close(self, _c: paho.Client, _u: Any, _sock: Any) -> None:
        self._call_on_loop(self._unregister)

    def _on_register_write(self, _c: paho.Client, _u: Any, _sock: Any) -> None:
        self._call_on_loop(self._want_write, True)

    def _on_unregister_write(self, _c: paho.Client, _u: Any, _sock: Any) -> None:
        self._call_on_loop(self._want_write, False)

    def _want_write(self, on: bool) -> None:
        if self._fd is None:
            return
        if on and not self.closed.done():
            self._loop.add_writer(self._fd, self._write)
        else:
            self._loop.remove_writer(self._fd)

    def _unregister(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._fd = None

    def _read(self) -> None:
        # paho reads one packet per call; keep reading while the socket has more, so a burst costs
        # one event-loop wake-up instead of one per message (bounded, so writes still get a turn).
        fd = self._fd
        for _ in range(_READS_PER_WAKEUP):
            if self._client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or fd is None or self._fd != fd:
                return
            if not self._tls_pending() and not select.select([fd], [], [], 0)[0]:
                return
        if self._tls_pending():
            # Bytes already decrypted wait inside the TLS layer, where the event loop cannot see
            # them: without this they would wait for the next packet to arrive (up to a keep alive).
            self._loop.call_soon(self._read)

    def _tls_pending(self) -> bool:
        sock = self._client.socket()
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def _write(self) -> None:
        self._client.loop_write()

    def _start_misc(self) -> None:
        if self._misc is None:
            self._misc = self._loop.create_task(self._misc_loop())

    async def _misc_loop(self) -> None:
        while not self.closed.done():
            await asyncio.sleep(1.0)
            if self._client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._shutdown("connection lost (keepalive)")
                return

    def _on_connect(self, _c: paho.Client, _u: Any, flags: Any, reason: ReasonCode, _p: Any) -> None:
        if self._connack.done():
            return
        if reason.is_failure:
            err: BusError = (
                BusAuthError(f"broker {self.address} refused {self.username!r}: {reason.getName()}")
                if reason.value in (NOT_AUTHORIZED, BAD_CREDENTIALS)
                else BusNotConnected(f"broker {self.address} refused the connection: {reason.getName()}")
            )
            self._connack.set_exception(err)
            self._shutdown(str(err))
        else:
            self._connack.set_result(bool(flags.session_present))

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        why = reason.getName() if isinstance(reason, ReasonCode) else str(reason)
        if isinstance(reason, ReasonCode) and self._connack.done() and not self.closed.done():
            self.disconnect_reason = reason.value
        if not self._connack.done() and not self.address.tls:
            # A TLS listener drops a plain-text CONNECT without a word: say what it most likely is.
            why += f" before any CONNACK (is {self.address.host}:{self.address.port} a TLS listener? then use mqtts://)"
        self._shutdown(f"disconnected: {why}")

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        entry = self._pubs.pop(mid, None)
        if entry is None:
            return
        topic, fut = entry
        if fut.done():
            return
        if reason.is_failure:
            fut.set_exception(PublishRefused(topic, reason))
        else:
            fut.set_result(reason)

    def _on_subscribe(self, _c: paho.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
        fut = self._subs.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(codes)

    def _shutdown(self, why: str) -> None:
        """Resolve everything that waits on this connection; safe to call more than once."""
        if not self.closed.done():
            self.closed.set_result(why)
            log.debug("%s: %s", self.username, why)
        if not self._connack.done():
            self._connack.set_exception(BusNotConnected(why))
            self._connack.exception()  # mark retrieved: nobody may be waiting any more
        for _topic, fut in self._pubs.values():
            if not fut.done():
                fut.set_exception(BusNotConnected(why))
                fut.exception()
        self._pubs.clear()
        for sfut in self._subs.values():
            if not sfut.done():
                sfut.set_exception(BusNotConnected(why))
        self._subs.clear()
        self._unregister()
        sock = self._client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        # This connection is over: whatever paho does with its socket later (including in __del__,
        # possibly after the event loop has closed) must not reach back into the loop.
        c = self._client
        c.on_socket_open = c.on_socket_close = c.on_socket_register_write = c.on_socket_unregister_write = None
        if self._misc is not None and asyncio.current_task() is not self._misc:
            self._misc.cancel()
