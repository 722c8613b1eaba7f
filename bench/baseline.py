"""The baseline every bus figure is compared with: bare paho, QoS 1, through the same Mosquitto.

Publisher and subscriber run in separate processes (as box and cloud do), both with TCP_NODELAY,
so that the ratio to our pipeline shows what our outbox, validation and database cost.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import statistics
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

PAYLOAD = b"x" * 200


def _client(user: str, password: str) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=paho.MQTTv5)
    c.username_pw_set(user, password)
    def nodelay(_c: Any, _u: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    c.on_socket_open = nodelay
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    return c


def _connect(c: paho.Client, port: int) -> None:
    c.connect("127.0.0.1", port)
    c.loop_start()
    deadline = time.monotonic() + 10
    while not c.is_connected():
        if time.monotonic() > deadline:
            raise RuntimeError("baseline client could not connect")
        time.sleep(0.01)


def _subscriber(port: int, user: str, password: str, sub_topic: str, echo_topic: str | None, n: int, out: Connection) -> None:
    """Counts `n` messages (or echoes each one to `echo_topic`) and reports first/last arrival."""
    c = _client(user, password)
    times: list[float] = []

    def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        times.append(time.perf_counter())
        if echo_topic is not None:
            c.publish(echo_topic, msg.payload, qos=1)

    c.on_message = on_message
    _connect(c, port)
    c.subscribe(sub_topic, qos=1)
    time.sleep(0.3)
    out.send("ready")
    deadline = time.monotonic() + 120
    while len(times) < n and time.monotonic() < deadline:
        time.sleep(0.005)
    out.send((len(times), times[0] if times else 0.0, times[-1] if times else 0.0))
    c.disconnect()
    c.loop_stop()


def bare_qos1(port: int, pub: tuple[str, str, str], sub: tuple[str, str, str], n: int = 20_000) -> dict[str, float]:
    """Throughput of `n` QoS 1 messages, publisher process → broker → subscriber process."""
    user, password, topic = pub
    parent, child = mp.Pipe()
    p = mp.get_context("spawn").Process(target=_subscriber, args=(port, sub[0], sub[1], sub[2], None, n, child))
    p.start()
    assert parent.poll(20) and parent.recv() == "ready"
    c = _client(user, password)
    _connect(c, port)
    start = time.perf_counter()
    infos = [c.publish(topic, PAYLOAD, qos=1) for _ in range(n)]
    for info in infos:
        info.wait_for_publish(60)
    got, _first, last = parent.recv() if parent.poll(120) else (0, 0.0, 0.0)
    p.join(10)
    c.disconnect()
    c.loop_stop()
    elapsed = last - start
    return {"messages": n, "received": got, "seconds": round(elapsed, 3), "msg_per_s": round(got / elapsed) if elapsed > 0 else 0}


def bare_round_trip(port: int, pub: tuple[str, str, str, str], echo: tuple[str, str, str, str], n: int = 1000) -> dict[str, float]:
    """Request/response over QoS 1: the publisher waits for each echo before sending the next."""
    user, password, req_topic, resp_topic = pub
    parent, child = mp.Pipe()
    p = mp.get_context("spawn").Process(target=_subscriber, args=(port, echo[0], echo[1], echo[2], echo[3], n, child))
    p.start()
    assert parent.poll(20) and parent.recv() == "ready"
    c = _client(user, password)
    arrived = threading.Event()
    c.on_message = lambda _c, _u, _m: arrived.set()
    _connect(c, port)
    c.subscribe(resp_topic, qos=1)
    time.sleep(0.3)
    rtts = []
    for _ in range(n):
        arrived.clear()
        t = time.perf_counter()
        c.publish(req_topic, PAYLOAD, qos=1)
        if arrived.wait(5):
            rtts.append(time.perf_counter() - t)
    parent.recv() if parent.poll(30) else None
    p.join(10)
    c.disconnect()
    c.loop_stop()
    return percentiles_ms(rtts) | {"round_trips": len(rtts)}


def percentiles_ms(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": round(q[49] * 1000, 3), "p99_ms": round(q[98] * 1000, 3), "max_ms": round(max(samples) * 1000, 3)}
