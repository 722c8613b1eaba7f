from __future__ import annotations

import pytest

from broker import topics
from broker.topics import DownCommand, Topic, TopicError, UpStream


def test_builders() -> None:
    assert topics.up("st0042-k1", UpStream.SCAN) == "shelf/v1/up/st0042-k1/scan"
    assert topics.birth("st0042-k1") == "shelf/v1/up/st0042-k1/birth"
    assert topics.death("st0042-k1") == "shelf/v1/up/st0042-k1/death"
    assert topics.dn("st0042-k1", DownCommand.SCHEDULE) == "shelf/v1/dn/st0042-k1/schedule"
    assert topics.host_state("cloud-1") == "shelf/v1/host/cloud-1/state"
    assert topics.cloud_ingest_filter() == "$share/cloud/shelf/v1/up/+/#"
    assert topics.node_dn_filter("a1") == "shelf/v1/dn/a1/#"
    assert topics.everything_filter() == "shelf/v1/#"


@pytest.mark.parametrize("stream", list(UpStream))
def test_up_round_trip(stream: UpStream) -> None:
    assert topics.parse(topics.up("n1", stream)) == Topic("up", "n1", stream.value)


@pytest.mark.parametrize("cmd", list(DownCommand))
def test_dn_round_trip(cmd: DownCommand) -> None:
    assert topics.parse(topics.dn("n1", cmd)) == Topic("dn", "n1", cmd.value)


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
        topics.up(bad, UpStream.SCAN)


def test_unknown_stream_refused() -> None:
    with pytest.raises(ValueError):
        topics.up("n1", "teleport")
