"""`POST /epcis/capture` streams: the body is spooled to a file as it arrives and read event by
event, so a document far larger than memory would allow is captured; past the limit it is refused
(413) with what to do instead; an invalid one is still refused naming the event and the field; the
spool file never outlives the request or its capture job."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud.trace import api
from cloud.trace.models import Event
from tests.access.conftest import World
from tests.system.harness import wait_for

HEAD = b'{"@context": ["https://ref.gs1.org/standards/epcis/epcis-context.jsonld"], "type": "EPCISDocument", ' \
       b'"schemaVersion": "2.0", "creationDate": "2026-11-20T08:00:00Z", "epcisBody": {"eventList": ['


def _event(i: int, action: str = "OBSERVE") -> dict[str, Any]:
    return {"type": "ObjectEvent", "action": action, "bizStep": "inspecting",
            "eventTime": f"2026-11-20T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}+08:00",
            "eventTimeZoneOffset": "+08:00", "eventID": f"urn:uuid:00000000-0000-4000-8000-{i:012d}",
            "epcList": [f"https://id.gs1.org/01/09506000134352/21/B{i}"]}


def _body(n: int, bad: int | None = None) -> Iterator[bytes]:
    """The document in pieces, as a client streams it (no Content-Length: chunked)."""
    yield HEAD
    for i in range(n):
        yield (b"," if i else b"") + json.dumps(_event(i, "CREATE" if i == bad else "OBSERVE")).encode()
    yield b"]}}"


@pytest.fixture
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _events(w: World) -> int:
    with Session(w.engine) as s:
        return int(s.scalar(select(func.count()).select_from(Event)) or 0)


def _finished(hq: TestClient, location: str) -> dict[str, Any]:
    status: dict[str, Any] = {}

    def done() -> bool:
        status.update(hq.get(location).json())
        return not status["running"]

    wait_for(done, 60, "the capture job to finish", interval=0.05)
    return status


def test_a_streamed_document_is_captured_whole(tworld: World, hq: TestClient, spool: Path) -> None:
    answer = hq.post("/epcis/capture", content=_body(3000), headers={"Content-Type": "application/ld+json"})
    assert answer.status_code == 202, answer.text
    assert answer.json()["events"] == 3000
    status = _finished(hq, answer.headers["Location"])
    assert status["success"] and status["stored"] == 3000, status
    assert _events(tworld) == 3000
    # The job says finished just before its spool file is removed.
    wait_for(lambda: not list(spool.glob("omnishelf-epcis-*")), 10, "the spool file removed", interval=0.02)


def test_past_the_limit_it_is_refused_and_nothing_kept(tworld: World, hq: TestClient, spool: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "MAX_DOCUMENT", 10_000)
    answer = hq.post("/epcis/capture", content=_body(200))  # streamed: the size shows as it arrives
    assert answer.status_code == 413, answer.text
    assert "the limit is 10000 bytes" in answer.json()["title"]
    assert "omnishelf trace capture FILE" in answer.json()["title"]
    declared = hq.post("/epcis/capture", content=b"".join(_body(200)))  # Content-Length: refused up front
    assert declared.status_code == 413, declared.text
    assert _events(tworld) == 0
    assert list(spool.glob("omnishelf-epcis-*")) == []


def test_an_invalid_event_deep_in_a_stream_refuses_the_document(tworld: World, hq: TestClient, spool: Path) -> None:
    answer = hq.post("/epcis/capture", content=_body(2500, bad=2100))
    assert answer.status_code == 400, answer.text
    assert answer.json()["title"] == "event 2101 (ObjectEvent): action must be ADD, OBSERVE or DELETE, found 'CREATE'"
    truncated = hq.post("/epcis/capture", content=HEAD + json.dumps(_event(1)).encode())
    assert truncated.status_code == 400 and truncated.json()["title"].startswith("not JSON"), truncated.text
    listed = hq.post("/epcis/capture", content=b"[1, 2]")
    assert listed.status_code == 400 and "JSON object, found a list" in listed.json()["title"], listed.text
    assert _events(tworld) == 0
    assert list(spool.glob("omnishelf-epcis-*")) == []
