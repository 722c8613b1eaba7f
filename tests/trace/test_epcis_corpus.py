"""The OpenEPCIS 2.0 JSON corpus (read in place from ../shared/corpora): every valid document is
captured and queried back by its identifiers; every Invalid/ case is refused over HTTP with a 400
naming the problem, and nothing is stored. Capture is idempotent (by eventID or content hash)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud.trace.models import Event
from tests.access.conftest import World
from tests.trace.test_chain import capture

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "openepcis-2.0-json" / "Capture"
if not CORPUS.is_dir():
    CORPUS = Path("/work/shared/corpora/openepcis-2.0-json/Capture")
pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"the OpenEPCIS corpus is not at {CORPUS}")


def _files(sub: str) -> list[Path]:
    return sorted((CORPUS / sub).glob("*.json")) if CORPUS.is_dir() else []


# What each invalid case must be refused for (a word of the message naming the problem).
INVALID = {
    "Combination_of_events_with_missing_mandatory_fields.json": "action missing",
    "Combination_of_multiple_invalid_fields.json": "bizStep 'transforming'",
    "Combination_of_non_standard_bizStep_and_disposition.json": "bizStep 'transforming'",
    "EPCISDocument_without_context.json": "@context is missing",
    "ObjectEvent_with_ilmd_field_without_namespace.json": "ilmd field materialType has no namespace",
    "ObjectEvent_with_invalid_action.json": "action must be ADD, OBSERVE or DELETE, found 'CREATE'",
    "ObjectEvent_with_invalid_certificationInfo.json": "certificationInfo must be a URI",
    "ObjectEvent_with_invalid_eventTime_format.json": "eventTime must be an ISO 8601 date-time",
    "ObjectEvent_with_non_standard_bizStep.json": "bizStep 'transforming' is not a CBV value",
    "ObjectEvent_with_non_standard_bizStep_in_second_event.json": "event 2 (ObjectEvent): bizStep 'transforming'",
    "ObjectEvent_with_non_standard_disposition.json": "disposition 'in_transport' is not a CBV value",
    "ObjectEvent_with_quantity_as_text.json": "quantity must be a number, found 'twenty'",
    "ObjectEvent_with_unknown_field_in_quantityList.json": "unknown field weight in quantityList",
    "ObjectEvent_without_action_and_eventTime.json": "action and eventTime and eventTimeZoneOffset missing",
    "ObjectEvent_without_identifier_list.json": "needs an epcList or a quantityList",
}


def events(engine: Any) -> int:
    with Session(engine) as s:
        return int(s.scalar(select(func.count()).select_from(Event)) or 0)


def test_every_invalid_case_is_refused_naming_the_problem(tworld: World, hq: TestClient) -> None:
    files = _files("Invalid")
    assert {f.name for f in files} == set(INVALID), "a new invalid case: say what it must be refused for"
    for f in files:
        answer = hq.post("/epcis/capture", content=f.read_bytes(), headers={"Content-Type": "application/ld+json"})
        assert answer.status_code == 400, (f.name, answer.text)
        assert INVALID[f.name] in answer.json()["title"], (f.name, answer.json())
    assert events(tworld.engine) == 0


@pytest.mark.parametrize("sub", ["Documents", "Events"])
def test_valid_documents_are_captured_once_and_queried_back(tworld: World, hq: TestClient, sub: str) -> None:
    total = 0
    seen: set[str] = set()
    for f in _files(sub):
        doc = json.loads(f.read_text())
        status = capture(hq, doc)
        again = capture(hq, doc)
        assert again["stored"] == 0, f"{f.name} stored twice"
        total += status["stored"]
        for event in doc.get("epcisBody", {}).get("eventList", [doc]):
            if event.get("eventID") in seen:
                continue  # the corpus reuses some eventIDs across documents: the first capture holds
            if event.get("eventID"):
                seen.add(event["eventID"])
            for epc in (event.get("epcList") or event.get("childEPCs") or event.get("inputEPCList") or [])[:1]:
                found = hq.get("/epcis/events", params={"MATCH_anyEPC": epc}).json()
                times = [e["eventTime"] for e in found["epcisBody"]["queryResults"]["resultsBody"]["eventList"]]
                assert event["eventTime"] in times, (f.name, epc)
    assert events(tworld.engine) == total > 0
