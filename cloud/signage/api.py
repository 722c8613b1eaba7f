"""REST endpoints of signage: /signage/media, playlists, campaigns, publications, screens, calendar
and proof-of-play reports. Thin: each route states who may call it and calls `cloud.signage.service`.

`/signage/media/{sha256}` is a plain GET like the catalogue's files (boxes have no HTTP
credentials; a box trusts a file only if its bytes hash to the value its schedule named), with
HTTP range requests so an interrupted download of a large video resumes where it stopped.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, PlainTextResponse
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy.orm import Session

from cloud.access.scope import Perm, Principal
from cloud.access.service import InputError, write_session
from cloud.access.web import require, via
from cloud.signage import service
from cloud.signage.media import MAX_VIDEO_BYTES, MEDIA_SUBDIR, MediaStore

__all__ = ["media_dir", "router"]

router = APIRouter(prefix="/signage", tags=["signage"])
"""Public: only the content-addressed media files."""
managed = APIRouter(tags=["signage"])
Business = Annotated[Principal, Depends(require(Perm.BUSINESS))]
Sha = Annotated[str, PathParam(pattern=r"^[0-9a-f]{64}$", description="the file's sha256")]
Problem: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown, or outside your scope"},
    422: {"description": "invalid input (the field and the reason)"},
}


def media_dir(request: Request) -> Path:
    """Signage media live beside the catalogue's files, in their own content-addressed store."""
    return Path(getattr(request.app.state, "catalogue_dir", "var/catalogue")) / MEDIA_SUBDIR


def _store(request: Request) -> MediaStore:
    return MediaStore(media_dir(request))


def _session(request: Request) -> Session:
    s: Session = request.app.state.sessionmaker()
    return s


@router.get("/media/{sha256}", response_class=FileResponse, responses={404: {"description": "no such media"}})
def media_file(sha256: Sha, request: Request) -> FileResponse:
    path = _store(request).path(sha256)
    if not path.is_file():
        raise HTTPException(404, f"no signage media {sha256}")
    # Content-addressed, so immutable; FileResponse answers Range requests (206) for resumed downloads.
    return FileResponse(path, media_type="application/octet-stream",
                        headers={"Cache-Control": "public, max-age=31536000, immutable"})


# -- media and playlists ---------------------------------------------------------------------------


class MediaOut(BaseModel):
    sha256: str
    name: str
    kind: str
    mime: str
    size: int
    width: int
    height: int
    duration_s: float | None
    thumb_sha256: str


@managed.post("/media", status_code=201, responses=Problem)
async def upload(request: Request, principal: Business, file: Annotated[UploadFile, File()],
                 name: Annotated[str, Form(max_length=200)] = "") -> MediaOut:
    data = await file.read(MAX_VIDEO_BYTES + 1)
    if len(data) > MAX_VIDEO_BYTES:
        raise InputError("file", f"larger than {MAX_VIDEO_BYTES // 2**20} MB")
    with write_session(request.app.state.engine) as session, session.begin():
        m = service.upload_media(session, principal, _store(request), name or file.filename or "upload", data,
                                 via=via(request))
        return MediaOut.model_validate(service.media_view(m))


@managed.get("/media")
def list_media(request: Request, principal: Business) -> list[MediaOut]:
    with _session(request) as session:
        return [MediaOut.model_validate(service.media_view(m)) for m in service.list_media(session)]


class TransitionIn(BaseModel):
    kind: Annotated[str, Field(pattern="^(cut|fade)$", description="how the item comes on screen")]
    ms: Annotated[int, Field(ge=0, le=5000, description="the transition's length; 0 for a cut")] = 0


class PlaylistItemIn(BaseModel):
    media: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    duration_s: Annotated[float, Field(ge=1, le=3600)] = 10
    transition: TransitionIn | None = None


class PlaylistIn(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    items: Annotated[list[PlaylistItemIn], Field(min_length=1, max_length=500)]
    is_default: bool = False


@managed.put("/playlists", responses=Problem)
def save_playlist(body: PlaylistIn, request: Request, principal: Business) -> dict[str, Any]:
    with write_session(request.app.state.engine) as session, session.begin():
        p = service.create_playlist(session, principal, body.name, [i.model_dump() for i in body.items],
                                    is_default=body.is_default, via=via(request))
        return service.playlist_view(p)


@managed.get("/playlists")
def list_playlists(request: Request, principal: Business) -> list[dict[str, Any]]:
    with _session(request) as session:
        return [service.playlist_view(p) for p in service.list_playlists(session)]


# -- campaigns and publications --------------------------------------------------------------------


class DaypartIn(BaseModel):
    weekdays: Annotated[list[Annotated[int, Field(ge=0, le=6)]], Field(min_length=1, max_length=7)]
    start: Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM, store-local")]
    end: Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM; <= start crosses midnight")]


class CampaignBody(BaseModel):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._\-]{1,64}$")]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    layer: Annotated[str, Field(pattern="^(override|normal|interrupt)$")] = "normal"
    playlist: Annotated[str, Field(min_length=1, max_length=200)]
    priority: Annotated[int, Field(ge=0, le=1000)] = 0
    start_date: date | None = None
    end_date: date | None = None
    dayparts: Annotated[list[DaypartIn], Field(max_length=50)] = []
    regions: Annotated[list[Annotated[str, Field(max_length=32)]], Field(max_length=500)] = []
    stores: Annotated[list[Annotated[str, Field(max_length=32)]], Field(max_length=5000)] = []
    tags: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=100)] = []
    sov_s: Annotated[int, Field(ge=0, le=1800)] = 0
    enabled: bool = True


def campaign_in(body: CampaignBody) -> service.CampaignIn:
    return service.CampaignIn(
        id=body.id, name=body.name, layer=body.layer, playlist=body.playlist, priority=body.priority,
        start_date=body.start_date, end_date=body.end_date, dayparts=tuple(d.model_dump() for d in body.dayparts),
        regions=tuple(body.regions), stores=tuple(body.stores), tags=tuple(body.tags), sov_s=body.sov_s,
        enabled=body.enabled,
    )


@managed.put("/campaigns", responses=Problem)
def save_campaign(body: CampaignBody, request: Request, principal: Business) -> dict[str, Any]:
    with write_session(request.app.state.engine) as session, session.begin():
        return service.campaign_view(service.save_campaign(session, principal, campaign_in(body), via=via(request)))


@managed.get("/campaigns")
def list_campaigns(request: Request, principal: Business) -> list[dict[str, Any]]:
    with _session(request) as session:
        return [service.campaign_view(c) for c in service.list_campaigns(session, principal)]


class PublishIn(BaseModel):
    note: Annotated[str, Field(max_length=1000)] | None = None


class PublicationOut(BaseModel):
    version: int
    created_at: datetime
    created_by: str
    rules_hash: str
    note: str | None
    rollback_of: int | None


def _pub(p: Any) -> PublicationOut:
    return PublicationOut(version=p.version, created_at=p.created_at, created_by=p.created_by, rules_hash=p.rules_hash,
                          note=p.note, rollback_of=p.rollback_of)


@managed.post("/publish", status_code=201, responses=Problem)
def publish(body: PublishIn, request: Request, principal: Business) -> PublicationOut:
    with write_session(request.app.state.engine) as session, session.begin():
        return _pub(service.publish(session, principal, body.note, via=via(request)))


@managed.post("/campaigns/{campaign_id}/unpublish", status_code=201, responses=Problem)
def unpublish(campaign_id: Annotated[str, PathParam(max_length=64)], request: Request, principal: Business) -> PublicationOut:
    """Disable the campaign and publish at once: screens stop it as soon as they get the schedule."""
    with write_session(request.app.state.engine) as session, session.begin():
        service.set_enabled(session, principal, campaign_id, False, via=via(request))
        return _pub(service.publish(session, principal, f"unpublish {campaign_id}", via=via(request)))


@managed.post("/publications/{version}/rollback", status_code=201, responses=Problem)
def rollback(version: Annotated[int, PathParam(ge=1, le=2**31 - 1)], request: Request, principal: Business) -> PublicationOut:
    with write_session(request.app.state.engine) as session, session.begin():
        return _pub(service.rollback(session, principal, version, via=via(request)))


@managed.get("/publications")
def publications(request: Request, principal: Business) -> list[PublicationOut]:
    with _session(request) as session:
        return [_pub(p) for p in service.list_publications(session)]


# -- screens, calendar, reports --------------------------------------------------------------------


class ScreenIn(BaseModel):
    tags: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=100)] = []
    screen: Annotated[str, Field(min_length=1, max_length=200,
                                 description="which screen of the box (added if new); default: its first")] | None = None


@managed.get("/screens")
def screens(request: Request, principal: Business) -> list[dict[str, Any]]:
    with _session(request) as session:
        return service.screens_view(session, principal.scope)


@managed.patch("/screens/{node_id}", responses=Problem)
def set_screen(node_id: Annotated[str, PathParam(min_length=1, max_length=63)], body: ScreenIn, request: Request,
               principal: Business) -> dict[str, Any]:
    with write_session(request.app.state.engine) as session, session.begin():
        name = body.screen
        if name is None:
            first = service.screen_state(session, node_id)
            name = first.screen if first else service.DEFAULT_SCREEN
        s = service.set_screen(session, principal, node_id, body.tags, name, via=via(request))
        return {"node": s.node, "tags": s.tags, "screen": s.screen}


@managed.delete("/screens/{node_id}/{screen}", status_code=204, responses=Problem)
def remove_screen(node_id: Annotated[str, PathParam(min_length=1, max_length=63)],
                  screen: Annotated[str, PathParam(min_length=1, max_length=200)], request: Request,
                  principal: Business) -> None:
    """The box no longer drives this screen: its next schedule leaves it out."""
    with write_session(request.app.state.engine) as session, session.begin():
        service.remove_screen(session, principal, node_id, screen, via=via(request))


class SlotOut(BaseModel):
    start: datetime
    end: datetime
    local_start: datetime
    media: str | None
    layer: str | None
    campaign: str | None
    conflict: list[str]


def _aware(v: datetime, name: str) -> datetime:
    if v.tzinfo is None:
        raise InputError(name, f"{v.isoformat()} has no time zone: add one (e.g. 2026-11-28T19:00+01:00)", location="query")
    return v.astimezone(UTC)


@managed.get("/calendar/{node_id}", responses=Problem)
def calendar(
    node_id: Annotated[str, PathParam(min_length=1, max_length=63)], request: Request, principal: Business,
    start: Annotated[AwareDatetime | None, Query(description="default: now")] = None,
    hours: Annotated[float, Query(gt=0, le=24 * 14)] = 24,
    version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    draft: Annotated[bool, Query(description="the drafts as they stand, not a publication")] = False,
    screen: Annotated[str | None, Query(max_length=200, description="which screen of the box; default: its first")] = None,
) -> list[SlotOut]:
    a = _aware(start, "start") if start else datetime.now(UTC)
    if not (datetime(2000, 1, 1, tzinfo=UTC) <= a <= datetime(2200, 1, 1, tzinfo=UTC)):
        raise InputError("start", f"{a.isoformat()} is outside the years 2000 to 2200", location="query")
    with _session(request) as session:
        target, rows = service.calendar(session, principal.scope, node_id, a, a + timedelta(hours=hours), version, draft,
                                        screen)
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(target.timezone)
    return [SlotOut(start=r.start, end=r.end, local_start=r.start.astimezone(zone), media=r.slot.media if r.slot else None,
                    layer=r.slot.layer.value if r.slot else None, campaign=r.slot.campaign if r.slot else None,
                    conflict=list(r.conflict)) for r in rows]


@managed.get("/regions/{region}/at", responses=Problem)
def region_at(
    region: Annotated[str, PathParam(min_length=1, max_length=32)], request: Request, principal: Business,
    weekday: Annotated[int, Query(ge=0, le=6, description="0 = Monday")],
    at: Annotated[time, Query(description="store-local time, e.g. 19:00")],
) -> list[dict[str, Any]]:
    with _session(request) as session:
        return service.region_at(session, principal.scope, region, weekday, at)


By = Annotated[list[str], Query(max_length=5, description="campaign, region, store, screen, day")]


@managed.get("/reports/plays", responses=Problem)
def plays_report(request: Request, principal: Business, by: By = ["campaign"],  # noqa: B006
                 first: date | None = None, last: date | None = None,
                 campaign: Annotated[str | None, Query(max_length=64)] = None) -> list[dict[str, Any]]:
    with _session(request) as session:
        return service.report(session, principal.scope, by, first, last, campaign)


class CsvResponse(PlainTextResponse):
    media_type = "text/csv"


@managed.get("/reports/plays.csv", response_class=CsvResponse, responses=Problem)
def plays_csv(request: Request, principal: Business, by: By = ["campaign"],  # noqa: B006
              first: date | None = None, last: date | None = None,
              campaign: Annotated[str | None, Query(max_length=64)] = None) -> CsvResponse:
    with _session(request) as session:
        rows = service.report(session, principal.scope, by, first, last, campaign)
    return CsvResponse(service.report_csv(rows, by), headers={"Content-Disposition": 'attachment; filename="proof-of-play.csv"'})


@managed.get("/reports/delivery/{campaign_id}", responses=Problem)
def delivery(campaign_id: Annotated[str, PathParam(max_length=64)], request: Request, principal: Business,
             first: date, last: date) -> dict[str, Any]:
    if not (date(2000, 1, 1) <= first <= date(2200, 12, 31)):
        raise InputError("first", f"{first.isoformat()} is outside 2000-01-01 to 2200-12-31", location="query")
    if last < first or (last - first).days > 92:
        raise InputError("last", "give last on or after first, at most 92 days later", location="query")
    with _session(request) as session:
        return service.delivery(session, principal.scope, campaign_id, first, last)


@managed.get("/reports/dropped")
def dropped(request: Request, principal: Business) -> list[dict[str, Any]]:
    with _session(request) as session:
        return service.dropped_counts(session, principal.scope)


router.include_router(managed)
