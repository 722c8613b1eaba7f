"""Topic names of the omnishelf bus: the only place a topic string is spelled out.

Every row of the topic table in docs/architecture.md has a builder here, and `parse` turns any
topic the system uses back into a `Topic`. Node and host ids double as MQTT client ids and
usernames, so they are restricted to characters that are safe in all three roles.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = [
    "ROOT",
    "DownCommand",
    "Topic",
    "TopicError",
    "UpStream",
    "acl_patterns",
    "birth",
    "check_id",
    "cloud_ingest_filter",
    "death",
    "dn",
    "everything_filter",
    "host_state",
    "host_state_filter",
    "node_dn_filter",
    "node_up_filter",
    "parse",
    "up",
]

ROOT = "shelf/v1"

_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62})$")


class UpStream(enum.StrEnum):
    """The last level of a box → cloud topic."""

    BIRTH = "birth"
    DEATH = "death"
    SCAN = "scan"
    ORDER = "order"
    STOCK = "stock"
    POP = "pop"
    FULFIL = "fulfil"
    ACK = "ack"
    TELEMETRY = "telemetry"


class DownCommand(enum.StrEnum):
    """The last level of a cloud → box topic."""

    VERDICT = "verdict"
    ASSIGN = "assign"
    CONFIG = "config"
    SCHEDULE = "schedule"
    CATALOG = "catalog"
    COMMAND = "command"
    REBIRTH = "rebirth"


class TopicError(ValueError):
    """A topic or an id that is not part of the bus contract."""


def check_id(value: str, what: str = "node id") -> str:
    """Return `value` if it is a valid node/host id, else raise `TopicError` saying why."""
    if not _ID.match(value):
        raise TopicError(
            f"Invalid {what} {value!r}: expected 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit"
        )
    return value


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed bus topic."""

    direction: str
    """'up' (box → cloud), 'dn' (cloud → box) or 'host' (cloud state)."""
    node: str
    """The node id (for 'host' topics: the host id)."""
    name: str
    """The stream (`UpStream`), the command (`DownCommand`) or 'state'."""


def up(node: str, stream: UpStream | str) -> str:
    return f"{ROOT}/up/{check_id(node)}/{UpStream(stream).value}"


def birth(node: str) -> str:
    return up(node, UpStream.BIRTH)


def death(node: str) -> str:
    return up(node, UpStream.DEATH)


def dn(node: str, cmd: DownCommand | str) -> str:
    return f"{ROOT}/dn/{check_id(node)}/{DownCommand(cmd).value}"


def host_state(host: str) -> str:
    return f"{ROOT}/host/{check_id(host, 'host id')}/state"


def host_state_filter() -> str:
    """Every cloud host's state (what boxes subscribe to)."""
    return f"{ROOT}/host/+/state"


def node_up_filter(node: str) -> str:
    """Everything one node may publish (its ACL write pattern)."""
    return f"{ROOT}/up/{check_id(node)}/#"


def node_dn_filter(node: str) -> str:
    """Everything one node may receive (its subscription and ACL read pattern)."""
    return f"{ROOT}/dn/{check_id(node)}/#"


def everything_filter() -> str:
    """All bus traffic (what a monitor may read)."""
    return f"{ROOT}/#"


def cloud_ingest_filter(group: str = "cloud") -> str:
    """The shared subscription through which N cloud workers split all box traffic."""
    return f"$share/{check_id(group, 'share group')}/{ROOT}/up/+/#"


def acl_patterns() -> dict[str, list[str]]:
    """ACL templates with Mosquitto's `%u` (username = node id) placeholder, by access kind."""
    return {
        "write": [f"{ROOT}/up/%u/#"],
        "read": [f"{ROOT}/dn/%u/#", host_state_filter()],
    }


def parse(topic: str) -> Topic:
    """Parse a bus topic; raise `TopicError` naming the problem when it is not one of ours."""
    prefix = ROOT + "/"
    if not topic.startswith(prefix):
        raise TopicError(f"Topic {topic!r} is outside the bus namespace: expected it to start with {prefix!r}")
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 3:
        raise TopicError(f"Topic {topic!r} has {len(parts) + 2} levels: expected 5 ({prefix}<dir>/<id>/<name>)")
    direction, node, name = parts
    if direction == "up":
        kinds: tuple[str, ...] = tuple(s.value for s in UpStream)
    elif direction == "dn":
        kinds = tuple(c.value for c in DownCommand)
    elif direction == "host":
        kinds = ("state",)
    else:
        raise TopicError(f"Topic {topic!r} has direction {direction!r}: expected 'up', 'dn' or 'host'")
    check_id(node, "host id" if direction == "host" else "node id")
    if name not in kinds:
        raise TopicError(f"Topic {topic!r} ends in {name!r}: expected one of {', '.join(kinds)}")
    return Topic(direction, node, name)
