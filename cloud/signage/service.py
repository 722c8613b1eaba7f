"""The signage service: media, playlists, campaigns (drafts), publications (versioned, rollback),
schedules sent to the boxes, the calendar and the proof-of-play reports.

Every change runs in the caller's session and writes its audit entry in the same transaction; reads
go through the caller's `Scope`. Publishing writes the new version and queues each screen's
`schedule` command (the durable downlink) in one transaction: the boxes get exactly what committed.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Table, func, select
from sqlalchemy.orm import Session, joinedload

from broker.envelope import MessageType
from broker.payloads import MediaRef, ScheduleData
from cloud.access.scope import (
    Forbidden,
    NotFound,
    Principal,
    Scope,
    get_node,
    visible_nodes,
    visible_regions,
    visible_stores,
)
from cloud.access.service import InputError, audit
from cloud.bus import downlink
from cloud.db import insert_for
from cloud.models import Node, Region, Store
from cloud.signage.media import MediaError, MediaStore
from cloud.signage.models import Campaign, Media, Play, PlayDropped, Playlist, Publication, ScreenState
from cloud.signage.rules import HORIZON, campaign_from_doc, doc_hash, rules_from_doc, schedule_for
from signage_rules import (
    Layer,
    Rules,
    RulesError,
    Screen,
    Slot,
    active_intervals,
    expand,
    plan_many,
    targeted,
    targets,
    validate,
)

__all__ = [
    "ENGINE_NAME",
    "CampaignIn",
    "calendar",
    "create_playlist",
    "publish",
    "rollback",
    "send_schedules",
    "upload_media",
]

ENGINE_NAME = "signage"
_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
SCHEDULE_EXPIRES = timedelta(days=7)
REFRESH_AFTER = timedelta(hours=12)
"""A box's explicit timeline is rolled forward when the one it holds started this long ago."""


def _now() -> datetime:
    return datetime.now(UTC)


# -- media -----------------------------------------------------------------------------------------


def media_view(m: Media) -> dict[str, Any]:
    return {"sha256": m.sha256, "name": m.name, "kind": m.kind, "mime": m.mime, "size": m.size, "width": m.width,
            "height": m.height, "duration_s": m.duration_s, "thumb_sha256": m.thumb_sha256}


def upload_media(session: Session, principal: Principal, store: MediaStore, name: str, data: bytes, *, via: str = "api") -> Media:
    name = name.strip()[:200] or "upload"
    try:
        info = store.put(data, f"media {name!r}")
    except MediaError as exc:
        raise InputError("file", str(exc)) from None
    existing = session.get(Media, info.sha256)
    if existing is not None:
        return existing
    media = Media(sha256=info.sha256, name=name, kind=info.kind, mime=info.mime, size=info.size, width=info.width,
                  height=info.height, duration_s=info.duration_s, thumb_sha256=info.thumb_sha256, created_at=_now(),
                  created_by=principal.actor)
    session.add(media)
    audit(session, principal.actor, "signage.media.upload", "signage_media", info.sha256, after=media_view(media), via=via)
    return media


def list_media(session: Session) -> Sequence[Media]:
    return session.scalars(select(Media).order_by(Media.created_at.desc())).all()


def media_refs(session: Session, shas: Iterable[str]) -> dict[str, MediaRef]:
    rows = session.scalars(select(Media).where(Media.sha256.in_(list(set(shas))))).all()
    return {m.sha256: MediaRef(sha256=m.sha256, size=m.size, mime=m.mime, path=f"/signage/media/{m.sha256}") for m in rows}


# -- playlists -------------------------------------------------------------------------------------


def playlist_view(p: Playlist) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "items": p.items, "is_default": p.is_default}


def _items(session: Session, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if not items:
        raise InputError("items", "a playlist needs at least one item ({media: sha256, duration_s: seconds})")
    out = []
    for n, it in enumerate(items):
        sha = str(it.get("media", ""))
        media = session.get(Media, sha) if re.fullmatch(r"[0-9a-f]{64}", sha) else None
        if media is None:
            raise InputError(f"items.{n}.media", f"no media {sha!r}: upload it first (POST /signage/media)")
        if media.duration_s is not None:
            # A video plays its own length, whatever was asked.
            duration = media.duration_s
        else:
            duration = it.get("duration_s", 10)
            if not isinstance(duration, int | float) or isinstance(duration, bool) or not 1 <= duration <= 3600:
                raise InputError(f"items.{n}.duration_s", f"an image shows 1 to 3600 s, got {duration!r}")
        item: dict[str, Any] = {"media": sha, "duration_s": float(duration)}
        transition = _transition(it.get("transition"), float(duration), f"items.{n}.transition")
        if transition is not None:
            # Only when given: items without one keep the document (and its hashes) they always had.
            item["transition"] = transition
        out.append(item)
    return out


TRANSITIONS = ("cut", "fade")
MAX_TRANSITION_MS = 5000


def _transition(raw: Any, duration_s: float, field: str) -> dict[str, Any] | None:
    """`{"kind": "cut"|"fade", "ms": n}` checked (how the item comes on screen), or None."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InputError(field, f"expected {{kind: {' or '.join(TRANSITIONS)}, ms: milliseconds}}, got {raw!r}")
    kind, ms = raw.get("kind"), raw.get("ms", 0)
    if kind not in TRANSITIONS:
        raise InputError(f"{field}.kind", f"expected one of {', '.join(TRANSITIONS)}, got {kind!r}")
    if not isinstance(ms, int) or isinstance(ms, bool) or not 0 <= ms <= MAX_TRANSITION_MS:
        raise InputError(f"{field}.ms", f"expected whole milliseconds from 0 to {MAX_TRANSITION_MS}, got {ms!r}")
    if kind == "cut" and ms:
        raise InputError(f"{field}.ms", f"a cut is instant: give 0 ms, got {ms}")
    if ms >= duration_s * 1000:
        raise InputError(f"{field}.ms", f"{ms} ms is not shorter than the item itself ({duration_s:g} s)")
    return {"kind": kind, "ms": ms}


def create_playlist(
    session: Session, principal: Principal, name: str, items: Sequence[dict[str, Any]], *, is_default: bool = False,
    via: str = "api",
) -> Playlist:
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise InputError("name", "a playlist name has 1 to 200 characters")
    playlist = session.scalars(select(Playlist).where(Playlist.name == name)).one_or_none()
    before = playlist_view(playlist) if playlist else None
    if playlist is None:
        playlist = Playlist(name=name, items=[], is_default=False, updated_at=_now())
        session.add(playlist)
    playlist.items = _items(session, items)
    if is_default:
        for other in session.scalars(select(Playlist).where(Playlist.is_default.is_(True))):
            other.is_default = False
    playlist.is_default = is_default or playlist.is_default
    playlist.updated_at = _now()
    session.flush()
    audit(session, principal.actor, "signage.playlist.save", "signage_playlist", name, before=before,
          after=playlist_view(playlist), via=via)
    return playlist


def list_playlists(session: Session) -> Sequence[Playlist]:
    return session.scalars(select(Playlist).order_by(Playlist.name)).all()


# -- campaigns (drafts) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CampaignIn:
    id: str
    name: str
    layer: str
    playlist: str
    priority: int = 0
    start_date: date | None = None
    end_date: date | None = None
    dayparts: tuple[dict[str, Any], ...] = ()
    regions: tuple[str, ...] = ()
    stores: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    sov_s: int = 0
    enabled: bool = True


def campaign_view(c: Campaign) -> dict[str, Any]:
    return {"id": c.id, "name": c.name, "layer": c.layer, "priority": c.priority, "playlist_id": c.playlist_id,
            "start_date": c.start_date.isoformat() if c.start_date else None,
            "end_date": c.end_date.isoformat() if c.end_date else None, "dayparts": c.dayparts, "regions": c.regions,
            "stores": c.stores, "tags": c.tags, "sov_s": c.sov_s, "enabled": c.enabled}


def _check_targeting(session: Session, principal: Principal, body: CampaignIn) -> None:
    known_regions = {r.code for r in visible_regions(session, principal.scope)}
    for code in body.regions:
        if code not in known_regions:
            raise InputError("regions", f"no region {code!r} (unknown, or outside your regions)")
    known_stores = {s.code for s in visible_stores(session, principal.scope)}
    for code in body.stores:
        if code not in known_stores:
            raise InputError("stores", f"no store {code!r} (unknown, or outside your regions and stores)")
    if not principal.scope.all and not body.regions and not body.stores:
        raise InputError("regions", "target your regions or stores: a campaign for every store is for HQ")
    if not principal.scope.all and body.regions and any(r not in _owned_regions(session, principal.scope) for r in body.regions):
        raise InputError("regions", "you may target only whole regions that are yours; name your stores instead")


def _owned_regions(session: Session, scope: Scope) -> set[str]:
    return {r.code for r in session.scalars(select(Region).where(Region.id.in_(scope.region_ids)))}


def _dayparts(raw: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for n, d in enumerate(raw):
        days = d.get("weekdays")
        if not isinstance(days, list | tuple) or not days or not all(isinstance(x, int) and 0 <= x <= 6 for x in days):
            raise InputError(f"dayparts.{n}.weekdays", f"expected a list of 0 (Monday) to 6 (Sunday), got {days!r}")
        for key in ("start", "end"):
            if not isinstance(d.get(key), str) or not _HHMM.match(d[key]):
                raise InputError(f"dayparts.{n}.{key}", f"expected a time HH:MM (e.g. 19:00), got {d.get(key)!r}")
        out.append({"weekdays": sorted(set(days)), "start": d["start"], "end": d["end"]})
    return out


def save_campaign(session: Session, principal: Principal, body: CampaignIn, *, via: str = "api") -> Campaign:
    if not _ID.match(body.id):
        raise InputError("id", f"{body.id!r} is not a campaign id: 1-64 characters of A-Z a-z 0-9 . _ -")
    if body.layer not in (Layer.OVERRIDE, Layer.NORMAL, Layer.INTERRUPT):
        raise InputError("layer", f"expected override, normal or interrupt, got {body.layer!r}")
    playlist = session.scalars(select(Playlist).where(Playlist.name == body.playlist)).one_or_none()
    if playlist is None:
        raise InputError("playlist", f"no playlist {body.playlist!r}: create it first")
    _check_targeting(session, principal, body)
    campaign = session.get(Campaign, body.id)
    if campaign is not None and not _may_edit(session, principal, campaign):
        raise NotFound(f"No campaign {body.id!r} (unknown, or outside your regions and stores)")
    before = campaign_view(campaign) if campaign else None
    doc: dict[str, Any] = {"id": body.id, "layer": body.layer, "priority": body.priority, "items": playlist.items,
           "start_date": body.start_date.isoformat() if body.start_date else None,
           "end_date": body.end_date.isoformat() if body.end_date else None, "dayparts": _dayparts(body.dayparts),
           "regions": sorted(body.regions), "stores": sorted(body.stores), "tags": sorted(body.tags), "sov_s": body.sov_s}
    try:
        validate(campaign_from_doc(doc))
    except RulesError as exc:
        raise InputError("campaign", str(exc)) from None
    if campaign is None:
        campaign = Campaign(id=body.id)
        session.add(campaign)
    campaign.name, campaign.layer, campaign.priority, campaign.playlist_id = body.name[:200], body.layer, body.priority, playlist.id
    campaign.start_date, campaign.end_date, campaign.dayparts = body.start_date, body.end_date, doc["dayparts"]
    campaign.regions, campaign.stores, campaign.tags = doc["regions"], doc["stores"], doc["tags"]
    campaign.sov_s, campaign.enabled = body.sov_s, body.enabled
    campaign.updated_at, campaign.updated_by = _now(), principal.actor
    session.flush()
    audit(session, principal.actor, "signage.campaign.save", "signage_campaign", body.id, before=before,
          after=campaign_view(campaign), via=via)
    return campaign


def _may_edit(session: Session, principal: Principal, c: Campaign) -> bool:
    if principal.scope.all:
        return True
    stores = {s.code for s in visible_stores(session, principal.scope)}
    return bool(c.regions or c.stores) and set(c.regions) <= _owned_regions(session, principal.scope) and set(c.stores) <= stores


def list_campaigns(session: Session, principal: Principal) -> list[Campaign]:
    rows = session.scalars(select(Campaign).order_by(Campaign.id)).all()
    return [c for c in rows if principal.scope.all or _may_edit(session, principal, c)]


def set_enabled(session: Session, principal: Principal, campaign_id: str, enabled: bool, *, via: str = "api") -> Campaign:
    c = session.get(Campaign, campaign_id)
    if c is None or not _may_edit(session, principal, c):
        raise NotFound(f"No campaign {campaign_id!r} (unknown, or outside your regions and stores)")
    before = campaign_view(c)
    c.enabled, c.updated_at, c.updated_by = enabled, _now(), principal.actor
    audit(session, principal.actor, "signage.campaign.enable" if enabled else "signage.campaign.disable",
          "signage_campaign", campaign_id, before=before, after=campaign_view(c), via=via)
    return c


# -- publications ----------------------------------------------------------------------------------


def draft_doc(session: Session) -> dict[str, Any]:
    """The rules as the drafts stand now (enabled campaigns, playlists resolved, the default playlist)."""
    playlists = {p.id: p for p in session.scalars(select(Playlist))}
    campaigns = []
    for c in session.scalars(select(Campaign).where(Campaign.enabled.is_(True)).order_by(Campaign.id)):
        campaigns.append({
            "id": c.id, "layer": c.layer, "priority": c.priority, "items": playlists[c.playlist_id].items,
            "start_date": c.start_date.isoformat() if c.start_date else None,
            "end_date": c.end_date.isoformat() if c.end_date else None, "dayparts": c.dayparts, "regions": c.regions,
            "stores": c.stores, "tags": c.tags, "sov_s": c.sov_s,
        })
    default = next((p.items for p in playlists.values() if p.is_default), [])
    return {"campaigns": campaigns, "default": default}


def current_publication(session: Session) -> Publication | None:
    return session.scalars(select(Publication).order_by(Publication.version.desc()).limit(1)).one_or_none()


def _require_hq(principal: Principal) -> None:
    if not principal.scope.all:
        raise Forbidden("publishing puts every store's screens on air: it is for HQ (an all-region role)")


def _new_publication(session: Session, principal: Principal, doc: dict[str, Any], note: str | None,
                     rollback_of: int | None, now: datetime) -> Publication:
    latest = current_publication(session)
    pub = Publication(version=(latest.version + 1) if latest else 1, created_at=now, created_by=principal.actor,
                      rules=doc, rules_hash=doc_hash(doc), note=(note or None) and note[:1000], rollback_of=rollback_of)
    session.add(pub)
    session.flush()
    return pub


def publish(session: Session, principal: Principal, note: str | None = None, *, via: str = "api",
            now: datetime | None = None) -> Publication:
    """Freeze the drafts into a new version and send every screen its schedule (one transaction)."""
    _require_hq(principal)
    now = now or _now()
    pub = _new_publication(session, principal, draft_doc(session), note, None, now)
    sent = send_schedules(session, pub, now)
    audit(session, principal.actor, "signage.publish", "signage_publication", str(pub.version),
          after={"version": pub.version, "rules_hash": pub.rules_hash, "screens": sent}, via=via, detail=note)
    return pub


def rollback(session: Session, principal: Principal, version: int, *, via: str = "api", now: datetime | None = None) -> Publication:
    """Re-publish an older version's rules as a new version (the history keeps both)."""
    _require_hq(principal)
    old = session.get(Publication, version)
    if old is None:
        raise NotFound(f"No publication version {version}")
    now = now or _now()
    pub = _new_publication(session, principal, old.rules, f"rollback to version {version}", version, now)
    sent = send_schedules(session, pub, now)
    audit(session, principal.actor, "signage.rollback", "signage_publication", str(pub.version),
          after={"version": pub.version, "rollback_of": version, "screens": sent}, via=via)
    return pub


def list_publications(session: Session, limit: int = 50) -> Sequence[Publication]:
    return session.scalars(select(Publication).order_by(Publication.version.desc()).limit(limit)).all()


# -- screens and schedules -------------------------------------------------------------------------


DEFAULT_SCREEN = "main"


def screen_of(node: Node, state: ScreenState | None) -> Screen:
    assert node.store is not None
    # Screens of one box are told apart by name; the first screen keeps the box's id (its key in
    # the expansion, as before there were several).
    key = node.id if state is None or state.screen == DEFAULT_SCREEN else f"{node.id}/{state.screen}"
    return Screen(node=key, store=node.store.code, region=node.store.region.code, timezone=node.store.timezone,
                  tags=frozenset(state.tags if state else ()))


def _ordered(states: Sequence[ScreenState]) -> list[ScreenState]:
    """A box's screens, the one its schedule carries at the top level first (`main`, else by name)."""
    return sorted(states, key=lambda st: (st.screen != DEFAULT_SCREEN, st.screen))


def _screens(session: Session, nodes: Sequence[str] | None = None) -> list[tuple[Node, list[ScreenState]]]:
    stmt = (select(Node).options(joinedload(Node.store).joinedload(Store.region))
            .where(Node.store_id.is_not(None), Node.retired_at.is_(None)))
    if nodes is not None:
        stmt = stmt.where(Node.id.in_(list(nodes)))
    out = []
    states: dict[str, list[ScreenState]] = defaultdict(list)
    for st in session.scalars(select(ScreenState)):
        states[st.node].append(st)
    for node in session.scalars(stmt.order_by(Node.id)).unique():
        mine = states.get(node.id)
        if not mine:
            state = ScreenState(node=node.id, screen=DEFAULT_SCREEN, tags=[])
            session.add(state)
            mine = [state]
        out.append((node, _ordered(mine)))
    return out


def screen_state(session: Session, node_id: str, screen: str | None = None) -> ScreenState | None:
    """The state of `screen` of a box (None: its first screen), or None if it has no such screen."""
    states = _ordered(session.scalars(select(ScreenState).where(ScreenState.node == node_id)).all())
    if screen is None:
        return states[0] if states else None
    return next((st for st in states if st.screen == screen), None)


def send_schedules(session: Session, pub: Publication, now: datetime, nodes: Sequence[str] | None = None) -> int:
    """Queue the `schedule` of `pub` to every box (or `nodes`), from the current hour on: one
    retained command per box, carrying each of its screens' timelines."""
    rules = rules_from_doc(pub.rules)
    start = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    refs = media_refs(session, {i.media for c in rules.campaigns for i in c.items} | {i.media for i in rules.default})
    boxes = _screens(session, nodes)
    screens = [screen_of(node, st) for node, states in boxes for st in states]
    mine = targeted(rules, screens)
    # Screens alike (same zone, same campaigns) share one plan and one payload.
    plans = plan_many(rules, screens, start, start + HORIZON, mine)
    made: dict[tuple[int, str, int], ScheduleData] = {}
    for node, states in boxes:
        parts = []
        for st in states:
            key = screen_of(node, st).node
            timeline = plans[key]
            cache_key = (id(timeline), st.screen, len(states))
            data = made.get(cache_key)
            if data is None:
                # The explicit items of all screens share one message's budget.
                data = made[cache_key] = schedule_for(mine[key], rules.default, timeline, pub.version, start, refs,
                                                      screen_name=st.screen, share=len(states))
            parts.append(data)
        top = parts[0] if len(parts) == 1 else parts[0].model_copy(update={"screens": tuple(parts[1:])})
        hashes = ",".join(p.timeline_hash or "" for p in parts)
        msg_id = downlink.send(session, node.id, MessageType.SCHEDULE, top, engine=ENGINE_NAME, retain=True,
                               expires_in=SCHEDULE_EXPIRES, now=now,
                               key=f"signage:{node.id}:{pub.version}:{start.isoformat()}:{doc_hash({'h': hashes})[:16]}")
        for st, data in zip(states, parts, strict=True):
            st.sent_version, st.sent_hash, st.sent_from, st.sent_msg_id = (pub.version, data.timeline_hash, start, str(msg_id))
    return len(boxes)


def refresh(session: Session, now: datetime) -> int:
    """Send the current publication to boxes that never got it or whose window is getting old
    (new boxes, boxes moved to another store, a screen added or retagged, the 48 h window rolling)."""
    pub = current_publication(session)
    if pub is None:
        return 0
    due = [node.id for node, states in _screens(session)
           if any(st.sent_version != pub.version or st.sent_from is None or now - st.sent_from >= REFRESH_AFTER
                  for st in states)]
    return send_schedules(session, pub, now, due) if due else 0


def set_screen(session: Session, principal: Principal, node_id: str, tags: Sequence[str], screen: str = DEFAULT_SCREEN,
               *, via: str = "api") -> ScreenState:
    """Set the tags of one screen of a box (added if the box had no screen of that name: a box's
    config lists the screens it drives, HQ names them the same here)."""
    node = get_node(session, principal.scope, node_id)
    screen = screen.strip()
    if not 1 <= len(screen) <= 200:
        raise InputError("screen", "a screen name has 1 to 200 characters")
    if screen != DEFAULT_SCREEN and screen_state(session, node.id) is None:
        # Every box has its first screen (`main`) implicitly: naming a second one keeps it.
        session.add(ScreenState(node=node.id, screen=DEFAULT_SCREEN, tags=[]))
    state = screen_state(session, node.id, screen)
    if state is None:
        state = ScreenState(node=node.id, screen=screen, tags=[])
        session.add(state)
    before = {"tags": list(state.tags or []), "screen": screen}
    state.tags = sorted({t.strip() for t in tags if t.strip()})
    # Its schedule depends on its tags: the refresher sends the box a new one.
    for st in session.scalars(select(ScreenState).where(ScreenState.node == node.id)):
        st.sent_version = None
    state.sent_version = None
    audit(session, principal.actor, "signage.screen.update", "node", node.id, before=before,
          after={"tags": state.tags, "screen": screen}, via=via)
    return state


def remove_screen(session: Session, principal: Principal, node_id: str, screen: str, *, via: str = "api") -> None:
    node = get_node(session, principal.scope, node_id)
    state = screen_state(session, node.id, screen)
    if state is None:
        raise NotFound(f"No screen {screen!r} on box {node.id}")
    for st in session.scalars(select(ScreenState).where(ScreenState.node == node.id)):
        st.sent_version = None
    before = {"tags": list(state.tags or []), "screen": screen}
    session.delete(state)
    audit(session, principal.actor, "signage.screen.remove", "node", node.id, before=before, via=via)


# -- calendar --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CalendarRow:
    slot: Slot | None
    """None: an empty slot (nothing scheduled and no default playlist)."""
    start: datetime
    end: datetime
    conflict: tuple[str, ...] = ()
    """Campaigns active at this time that lost (lower priority, or beaten by an override)."""


def _published_rules(session: Session, version: int | None) -> tuple[Publication | None, Rules]:
    pub = session.get(Publication, version) if version else current_publication(session)
    if version and pub is None:
        raise NotFound(f"No publication version {version}")
    return pub, rules_from_doc(pub.rules) if pub else Rules()


def calendar(session: Session, scope: Scope, node_id: str, start: datetime, end: datetime,
             version: int | None = None, draft: bool = False, screen_name: str | None = None) -> tuple[Screen, list[CalendarRow]]:
    """What `node_id`'s screen plays from `start` to `end`: the very expansion its box runs, with
    the empty stretches and the campaigns that lost to another (conflicts) marked."""
    node = get_node(session, scope, node_id)
    if node.store is None:
        raise InputError("node", f"box {node_id} is in no store yet: assign it to a store first", location="query")
    rules = rules_from_doc(draft_doc(session)) if draft else _published_rules(session, version)[1]
    state = screen_state(session, node.id, screen_name)
    if screen_name is not None and state is None:
        raise NotFound(f"No screen {screen_name!r} on box {node.id}")
    screen = screen_of(node, state)
    slots = expand(rules, screen, start, end)
    rows: list[CalendarRow] = []
    t = start
    zone = ZoneInfo(screen.timezone)
    mine = [c for c in rules.campaigns if c.layer is not Layer.INTERRUPT]
    actives = {c.id: active_intervals(c, zone, start - timedelta(days=1), end + timedelta(days=1))
               for c in mine if targets(c, screen)}
    for s in slots:
        if s.start > t:
            rows.append(CalendarRow(None, t, s.start))
        lost = tuple(sorted(cid for cid, ivs in actives.items()
                            if cid != s.campaign and any(a <= s.start < b for a, b in ivs)))
        rows.append(CalendarRow(s, s.start, s.end, lost))
        t = max(t, s.end)
    if t < end:
        rows.append(CalendarRow(None, t, end))
    return screen, rows


def region_at(session: Session, scope: Scope, region_code: str, weekday: int, at: time,
              today: date | None = None) -> list[dict[str, Any]]:
    """What every screen of a region shows at `at` (store-local) on the next `weekday` (0 = Monday)."""
    regions = {r.code: r for r in visible_regions(session, scope)}
    if region_code not in regions:
        raise NotFound(f"No region {region_code!r} (unknown, or outside your regions)")
    _, rules = _published_rules(session, None)
    out = []
    stores = visible_stores(session, scope, region_code=region_code)
    for node in visible_nodes(session, scope, store_ids=[s.id for s in stores]):
        if node.store is None:
            continue
        screen = screen_of(node, screen_state(session, node.id))
        zone = ZoneInfo(screen.timezone)
        d = today or datetime.now(zone).date()
        d = d + timedelta(days=(weekday - d.weekday()) % 7)
        instant = datetime.combine(d, at, tzinfo=zone).astimezone(UTC)
        slots = expand(rules, screen, instant, instant + timedelta(seconds=1))
        playing = next((s for s in slots if s.start <= instant < s.end), None)
        out.append({"store": node.store.code, "node": node.id, "local": datetime.combine(d, at).isoformat(timespec="minutes"),
                    "campaign": playing.campaign if playing else None, "layer": playing.layer.value if playing else None,
                    "media": playing.media if playing else None})
    return out


# -- proof of play ---------------------------------------------------------------------------------


MAX_PLAY_MS = 6 * 3600 * 1000
OVERLAP_SLACK = timedelta(seconds=1)
FUTURE_SLACK = timedelta(minutes=5)


def drop(conn: Connection, node: str, reason: str, now: datetime) -> None:
    """Count an implausible record (in the handler's transaction: once per stored message)."""
    t: Table = PlayDropped.__table__  # type: ignore[assignment]
    conn.execute(
        insert_for(conn, t).values(node=node, reason=reason, count=1, last_at=now)
        .on_conflict_do_update(index_elements=["node", "reason"], set_={"count": t.c.count + 1, "last_at": now})
    )


def implausible(conn: Connection, node: str, screen: str, start: datetime, duration_ms: int, received_at: datetime) -> str | None:
    """Why a proof-of-play record cannot be true, or None."""
    if duration_ms <= 0:
        return "empty"
    if duration_ms > MAX_PLAY_MS:
        return "over_long"
    end = start + timedelta(milliseconds=duration_ms)
    if start > received_at + FUTURE_SLACK:
        return "future"
    near = conn.execute(
        select(Play.started_at, Play.duration_ms).where(
            Play.node == node, Play.screen == screen, Play.started_at < end - OVERLAP_SLACK,
            Play.started_at > start - timedelta(milliseconds=MAX_PLAY_MS),
        )
    ).all()
    for s, d in near:
        if s + timedelta(milliseconds=d) > start + OVERLAP_SLACK:
            return "overlap"
    return None


def plays_query(scope: Scope) -> Any:
    if scope.all:
        return select(Play)
    return select(Play).where(Play.store_id.in_(select(Store.id).where(scope.store_clause())))


GROUPS = {"campaign": Play.campaign, "store": Store.code, "region": Region.code, "screen": Play.node, "day": Play.day}


def report(session: Session, scope: Scope, by: Sequence[str], first: date | None = None, last: date | None = None,
           campaign: str | None = None) -> list[dict[str, Any]]:
    """Plays and seconds grouped `by` campaign / region / store / screen / day (store-local days)."""
    for b in by:
        if b not in GROUPS:
            raise InputError("by", f"expected some of {', '.join(GROUPS)}, got {b!r}", location="query")
    cols = [GROUPS[b].label(b) for b in by]
    stmt = (select(*cols, func.count().label("plays"), func.coalesce(func.sum(Play.duration_ms), 0).label("ms"))
            .select_from(Play).outerjoin(Store, Store.id == Play.store_id).outerjoin(Region, Region.id == Play.region_id))
    if not scope.all:
        stmt = stmt.where(scope.store_clause())
    if first:
        stmt = stmt.where(Play.day >= first.isoformat())
    if last:
        stmt = stmt.where(Play.day <= last.isoformat())
    if campaign:
        stmt = stmt.where(Play.campaign == campaign)
    stmt = stmt.group_by(*[GROUPS[b] for b in by]).order_by(*[GROUPS[b] for b in by])
    return [{**{b: getattr(r, b) for b in by}, "plays": int(r.plays), "seconds": round(int(r.ms) / 1000, 1)}
            for r in session.execute(stmt)]


def report_csv(rows: Sequence[dict[str, Any]], by: Sequence[str]) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow([*by, "plays", "seconds"])
    for r in rows:
        w.writerow([*(r[b] if r[b] is not None else "(default)" for b in by), r["plays"], r["seconds"]])
    return out.getvalue()


def delivery(session: Session, scope: Scope, campaign_id: str, first: date, last: date) -> dict[str, Any]:
    """A campaign's planned seconds (the expansion for every screen in scope over the days, in each
    store's zone) against the seconds its screens proved they played."""
    pub = current_publication(session)
    rules = rules_from_doc(pub.rules) if pub else Rules()
    planned = 0.0
    per_screen: dict[str, dict[str, float]] = defaultdict(lambda: {"planned_s": 0.0, "played_s": 0.0})
    for node in visible_nodes(session, scope):
        if node.store is None:
            continue
        screen = screen_of(node, screen_state(session, node.id))
        zone = ZoneInfo(screen.timezone)
        a = datetime.combine(first, time(0), tzinfo=zone).astimezone(UTC)
        b = datetime.combine(last + timedelta(days=1), time(0), tzinfo=zone).astimezone(UTC)
        secs = sum((min(s.end, b) - max(s.start, a)).total_seconds() for s in expand(rules, screen, a, b)
                   if s.campaign == campaign_id)
        if secs:
            per_screen[node.id]["planned_s"] += secs
            planned += secs
    played_rows = report(session, scope, ["screen"], first, last, campaign_id)
    played = 0.0
    for r in played_rows:
        per_screen[r["screen"]]["played_s"] += r["seconds"]
        played += r["seconds"]
    return {"campaign": campaign_id, "first": first.isoformat(), "last": last.isoformat(), "planned_s": round(planned, 1),
            "played_s": round(played, 1), "delivered": round(played / planned, 4) if planned else None,
            "screens": {k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in sorted(per_screen.items())}}


def dropped_counts(session: Session, scope: Scope) -> list[dict[str, Any]]:
    nodes = {n.id for n in visible_nodes(session, scope)}
    return [{"node": d.node, "reason": d.reason, "count": d.count}
            for d in session.scalars(select(PlayDropped).order_by(PlayDropped.node, PlayDropped.reason)) if d.node in nodes]


def screens_view(session: Session, scope: Scope) -> list[dict[str, Any]]:
    """One row per screen of each box in scope (a box without any yet: its first screen, `main`)."""
    states: dict[str, list[ScreenState]] = defaultdict(list)
    for st in session.scalars(select(ScreenState)):
        states[st.node].append(st)
    out = []
    for n in visible_nodes(session, scope):
        rows: list[ScreenState | None] = [*_ordered(states.get(n.id, []))] or [None]
        for s in rows:
            out.append({"node": n.id, "screen": s.screen if s else DEFAULT_SCREEN, "store": n.store.code if n.store else None,
                        "online": n.online, "tags": s.tags if s else [], "sent_version": s.sent_version if s else None,
                        "playing_version": s.playing_version if s else None, "refused": s.refused if s else None})
    return out
