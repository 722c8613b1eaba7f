from __future__ import annotations

import pytest

from broker import topics
from broker.topics import DOWN, LIFECYCLE, UP, MessageType, Topic, TopicError


def test_builders() -> None:
    assert topics.up("st0042-k1", MessageType.SCAN) == "shelf/v1/up/st0042-k1/scan"
    assert topics.birth("st0042-k1") == "shelf/v1/up/st0042-k1/birth"
    assert topics.death("st0042-k1") == "shelf/v1/up/st0042-k1/death"
    assert topics.dn("st0042-k1", MessageType.SCHEDULE) == "shelf/v1/dn/st0042-k1/schedule"
    assert topics.host_state("cloud-1") == "shelf/v1/host/cloud-1/state"
    assert topics.cloud_ingest_filters() == [
        f"$share/cloud/shelf/v1/up/+/{t}" for t in ("ack", "fulfil", "order", "pop", "scan", "stock", "telemetry")
    ]
    assert topics.cloud_lifecycle_filters() == ["shelf/v1/up/+/birth", "shelf/v1/up/+/death"]
    assert topics.node_dn_filter("a1") == "shelf/v1/dn/a1/#"
    assert topics.everything_filter() == "shelf/v1/#"


def test_every_type_has_one_direction() -> None:
    assert UP | DOWN | {MessageType.STATE} == set(MessageType)
    assert not UP & DOWN and LIFECYCLE <= UP


@pytest.mark.parametrize("kind", sorted(UP))
def test_up_round_trip(kind: MessageType) -> None:
    assert topics.parse(topics.up("n1", kind)) == Topic("up", "n1", kind.value)


@pytest.mark.parametrize("kind", sorted(DOWN))
def test_dn_round_trip(kind: MessageType) -> None:
    assert topics.parse(topics.dn("n1", kind)) == Topic("dn", "n1", kind.value)


@pytest.mark.parametrize(
    ("builder", "kind", "message"),
    [
        (topics.up, MessageType.VERDICT, "'verdict' is not a box → cloud message type"),
        (topics.dn, MessageType.SCAN, "'scan' is not a cloud → box message type"),
        (topics.dn, "teleport", "'teleport' is not a cloud → box message type: expected one of assign, catalog"),
    ],
)
def test_builders_refuse_the_wrong_direction(builder, kind, message) -> None:
    with pytest.raises(TopicError, match=message):
        builder("n1", kind)


def test_host_round_trip() -> None:
    assert topics.parse(topics.host_state("cloud-2")) == Topic("host", "cloud-2", "state")


BAD = [
    ("shelf/v2/up/n1/scan", "outside the bus namespace"),
    ("shelf/v1/up/n1", "has 4 levels: expected 5"),
    ("shelf/v1/side/n1/scan", "direction 'side'"),
    ("shelf/v1/up/N1/scan", "Invalid node id 'N1'"),
    ("shelf/v1/up/+/scan", "Invalid node id '+'"),
    ("shelf/v1/up/n1/verdict", "ends in 'verdict': expected one of birth, death"),
    ("shelf/v1/dn/n1/scan", "ends in 'scan': expected one of verdict"),
]


@pytest.mark.parametrize(("topic", "message"), BAD)
def test_parse_rejects(topic: str, message: str) -> None:
    with pytest.raises(TopicError, match=message.replace("+", r"\+")):
        topics.parse(topic)


@pytest.mark.parametrize("bad", ["", "-a", "a" * 64, "a/b", "a#", "A", "a b", "a+"])
def test_ids_refused_by_builders(bad: str) -> None:
    with pytest.raises(TopicError):
        topics.up(bad, MessageType.SCAN)


def test_unknown_stream_refused() -> None:
    with pytest.raises(ValueError):
        topics.up("n1", "teleport")
