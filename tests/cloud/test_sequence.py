"""A node's sequence bookkeeping, batch by batch: `seq_contig` (everything up to it is stored) and
`seq_high`, whatever way the seqs are split into batches (fast path or general path)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select

from broker import topics
from broker.envelope import Envelope, encode
from broker.payloads import BirthData, ScanData
from cloud.bus.ledger import Incoming, store_batch
from cloud.models import Node

NODE = "st9-k1"


def scan(seq: int) -> Incoming:
    env = Envelope(type="scan", node=NODE, session=1, seq=seq, data=ScanData(code=f"c{seq}", station="s"))
    return Incoming(topics.up(NODE, "scan"), encode(env), datetime.now(UTC))


def birth(last_seq: int, pending: int) -> Incoming:
    data = BirthData(software_version="t", config_hash="h", store="s", last_seq=last_seq, pending=pending)
    env = Envelope(type="birth", node=NODE, session=1, seq=last_seq, data=data)
    return Incoming(topics.birth(NODE), encode(env), datetime.now(UTC))


def state(engine: Engine) -> tuple[int, int, bool]:
    with engine.connect() as c:
        row = c.execute(select(Node.seq_contig, Node.seq_high, Node.gap_since).where(Node.id == NODE)).one()
    return row[0], row[1], row[2] is not None


CASES = [
    ("in order, one by one", [[1], [2], [3]], [(1, 1, False), (2, 2, False), (3, 3, False)]),
    ("in order, in runs", [[1, 2, 3], [4, 5]], [(3, 3, False), (5, 5, False)]),
    ("a run with a hole", [[1, 2, 4]], [(2, 4, True)]),
    ("the hole filled later", [[1, 2, 4, 5], [3]], [(2, 5, True), (5, 5, False)]),
    ("a run filling a gap stops at the next gap", [[1, 5], [2, 3], [4]], [(1, 5, True), (3, 5, True), (5, 5, False)]),
    ("a run that ends before the stored top", [[1, 2], [6], [3, 4, 5]], [(2, 2, False), (2, 6, True), (6, 6, False)]),
    ("redelivered seqs change nothing", [[1, 2, 3], [2, 3], [4]], [(3, 3, False), (3, 3, False), (4, 4, False)]),
    ("out of order within a batch", [[3, 1, 2]], [(3, 3, False)]),
    # Batches of one: on PostgreSQL the ledger's INSERT tries the fast path in the same statement.
    ("an old seq alone", [[1], [2], [1], [3]], [(1, 1, False), (2, 2, False), (2, 2, False), (3, 3, False)]),
    ("a seq ahead alone, then the missing one alone", [[1], [3], [2]], [(1, 1, False), (1, 3, True), (3, 3, False)]),
    ("first message is not seq 1", [[2, 3]], [(0, 3, True)]),
]


@pytest.mark.parametrize(("batches", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_contiguous_seq_follows_what_is_stored(engine: Engine, batches: list[list[int]], expected: list[tuple[int, int, bool]]) -> None:
    for batch, want in zip(batches, expected, strict=True):
        store_batch(engine, [scan(s) for s in batch])
        assert state(engine) == want, f"after batch {batch}"


def test_birth_announcing_more_than_stored_opens_a_gap(engine: Engine) -> None:
    """A birth saying 5 messages reached the broker while the cloud has 3: a gap the next in-order
    message must not paper over."""
    store_batch(engine, [scan(1), scan(2), scan(3)])
    store_batch(engine, [birth(last_seq=6, pending=1)])
    assert state(engine) == (3, 5, True)
    store_batch(engine, [scan(6)])
    assert state(engine) == (3, 6, True)
    store_batch(engine, [scan(4), scan(5)])
    assert state(engine) == (6, 6, False)


def test_a_run_with_a_redelivered_message_moves_the_node_once_over_all_of_it(engine: Engine) -> None:
    """On PostgreSQL a run of one box's messages writes its rows and moves the node in one statement,
    only if every row was new: a run holding a redelivery goes the general way, to the same end."""
    first = [scan(1), scan(2)]
    store_batch(engine, first)
    out = store_batch(engine, [first[1], scan(3), scan(4)])
    assert (out.stored, out.duplicates) == (2, 1)
    assert state(engine) == (4, 4, False)
    out = store_batch(engine, [scan(5), scan(6)])
    assert out.stored == 2 and state(engine) == (6, 6, False)
