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
    "DOWN",
    "LIFECYCLE",
    "ROOT",
    "UP",
    "MessageType",
    "Topic",
    "TopicError",
    "birth",
    "check_id",
    "cloud_ingest_filters",
    "cloud_lifecycle_filters",
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


class MessageType(enum.StrEnum):
    """Every kind of bus message. The last level of an `up` or `dn` topic is the type of the
    message it carries; `UP` and `DOWN` say which types travel which way."""

    # box → cloud
    BIRTH = "birth"
    DEATH = "death"
    SCAN = "scan"
    ORDER = "order"
    STOCK = "stock"
    POP = "pop"
    FULFIL = "fulfil"
    ACK = "ack"
    TELEMETRY = "telemetry"
    # cloud → box
    VERDICT = "verdict"
    ASSIGN = "assign"
    CONFIG = "config"
    SCHEDULE = "schedule"
    CATALOG = "catalog"
    COMMAND = "command"
    REBIRTH = "rebirth"
    # cloud host lifecycle (`host/{host}/state`)
    STATE = "state"


UP: frozenset[MessageType] = frozenset(
    {
        MessageType.BIRTH,
        MessageType.DEATH,
        MessageType.SCAN,
        MessageType.ORDER,
        MessageType.STOCK,
        MessageType.POP,
        MessageType.FULFIL,
        MessageType.ACK,
        MessageType.TELEMETRY,
    }
)
"""Types a box publishes (`up/{node}/{type}`)."""
DOWN: frozenset[MessageType] = frozenset(MessageType) - UP - {MessageType.STATE}
"""Types the cloud sends a box (`dn/{node}/{type}`)."""
LIFECYCLE: frozenset[MessageType] = frozenset({MessageType.BIRTH, MessageType.DEATH})
"""A box's birth and death: every cloud worker must see them (liveness may not depend on one worker)."""


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
    """The message type carried (an `UP` or `DOWN` `MessageType`), or 'state'."""


def _kind(value: MessageType | str, allowed: frozenset[MessageType], what: str) -> MessageType:
    try:
        kind = MessageType(value)
    except ValueError:
        kind = None
    if kind not in allowed:
        names = ", ".join(sorted(k.value for k in allowed))
        raise TopicError(f"{str(value)!r} is not a {what} message type: expected one of {names}")
    return kind


def up(node: str, kind: MessageType | str) -> str:
    return f"{ROOT}/up/{check_id(node)}/{_kind(kind, UP, 'box → cloud').value}"


def birth(node: str) -> str:
    return up(node, MessageType.BIRTH)


def death(node: str) -> str:
    return up(node, MessageType.DEATH)


def dn(node: str, kind: MessageType | str) -> str:
    return f"{ROOT}/dn/{check_id(node)}/{_kind(kind, DOWN, 'cloud → box').value}"


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


def cloud_ingest_filters(group: str = "cloud") -> list[str]:
    """The shared subscriptions through which N cloud workers split the boxes' data messages:
    one per type, so that none overlaps the lifecycle subscriptions (overlapping subscriptions
    would deliver a birth twice to the same worker)."""
    g = check_id(group, "share group")
    return [f"$share/{g}/{ROOT}/up/+/{k.value}" for k in sorted(UP - LIFECYCLE)]


def cloud_lifecycle_filters() -> list[str]:
    """Births and deaths, subscribed by every cloud worker on its own (not shared): a death queued in
    the session of a worker that is down would otherwise hide a dead box until that worker returns."""
    return [f"{ROOT}/up/+/{k.value}" for k in sorted(LIFECYCLE)]


_NAMES: dict[str, tuple[str, ...]] = {
    "up": tuple(m.value for m in MessageType if m in UP),
    "dn": tuple(m.value for m in MessageType if m in DOWN),
    "host": ("state",),
}
"""The last levels each direction allows, in declaration order (computed once: parse runs per message)."""


def parse(topic: str) -> Topic:
    """Parse a bus topic; raise `TopicError` naming the problem when it is not one of ours."""
    prefix = ROOT + "/"
    if not topic.startswith(prefix):
        raise TopicError(f"Topic {topic!r} is outside the bus namespace: expected it to start with {prefix!r}")
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 3:
        raise TopicError(f"Topic {topic!r} has {len(parts) + 2} levels: expected 5 ({prefix}<dir>/<id>/<name>)")
    direction, node, name = parts
    kinds = _NAMES.get(direction)
    if kinds is None:
        raise TopicError(f"Topic {topic!r} has direction {direction!r}: expected 'up', 'dn' or 'host'")
    check_id(node, "host id" if direction == "host" else "node id")
    if name not in kinds:
        raise TopicError(f"Topic {topic!r} ends in {name!r}: expected one of {', '.join(kinds)}")
    return Topic(direction, node, name)
