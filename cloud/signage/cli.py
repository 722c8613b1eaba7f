"""`omnishelf signage upload FILE | playlist | campaign | publish | rollback | publications | calendar NODE | plays`.

Settings come from the same OMNISHELF_* variables as `omnishelf cloud`; changes are audited as
made by `cli:<your login>`. A publication is queued to the boxes in the same transaction: the
running `omnishelf cloud serve` (or worker) relays it within a second.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from cloud.access.scope import NotFound, Principal, Role, Scope
from cloud.access.service import InputError, write_session
from cloud.cli import add_db_timeout, cli_settings, prepared_engine, usage
from cloud.signage import service
from cloud.signage.media import MEDIA_SUBDIR, MediaStore

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("signage", help="signage: media upload, publish and roll back, what a store's screens play, proof of play",
                            description="Signage of the cloud core (settings from OMNISHELF_* variables).")
    parser.set_defaults(func=usage(parser))
    cmds = parser.add_subparsers(dest="signage_command", metavar="SUBCOMMAND")
    up = cmds.add_parser("upload", help="upload an image (JPEG, PNG, WebP) or a video (MP4, WebM, AVI); prints its sha256")
    up.add_argument("file", type=Path)
    up.set_defaults(func=_upload)
    pl = cmds.add_parser("playlist", help="create or replace a playlist: NAME SHA256[:SECONDS] ...")
    pl.add_argument("name")
    pl.add_argument("items", nargs="+", metavar="SHA256[:SECONDS]")
    pl.add_argument("--default", action="store_true", help="play it when no campaign is active")
    pl.set_defaults(func=_playlist)
    ca = cmds.add_parser("campaign", help="create or replace a draft campaign from a JSON object (see docs/signage.md)")
    ca.add_argument("json", help="the campaign as JSON, or @FILE")
    ca.set_defaults(func=_campaign)
    pub = cmds.add_parser("publish", help="publish the drafts as a new version and send every screen its schedule")
    pub.add_argument("--note", default=None)
    pub.set_defaults(func=_publish)
    rb = cmds.add_parser("rollback", help="publish an older version's rules again, as a new version")
    rb.add_argument("version", type=int)
    rb.set_defaults(func=_rollback)
    ls = cmds.add_parser("publications", help="the latest publications")
    ls.set_defaults(func=_publications)
    cal = cmds.add_parser("calendar", help="what a box's screen plays (the same expansion the box runs)")
    cal.add_argument("node")
    cal.add_argument("--start", type=datetime.fromisoformat, default=None, help="ISO instant with zone (default: now)")
    cal.add_argument("--hours", type=float, default=2.0)
    cal.set_defaults(func=_calendar)
    pp = cmds.add_parser("plays", help="proof of play as CSV, grouped by some of campaign, region, store, screen, day")
    pp.add_argument("--by", default="campaign", help="comma-separated (default: campaign)")
    pp.set_defaults(func=_plays)
    for p in (up, pl, ca, pub, rb, ls, cal, pp):
        add_db_timeout(p)


def _principal() -> Principal:
    return Principal(kind="cli", id=0, name=getpass.getuser(), role=Role.ADMIN, scope=Scope(all=True))


def _engine(args: argparse.Namespace) -> tuple[Engine, Path]:
    settings = cli_settings()
    return prepared_engine(settings, args.db_timeout), Path(settings.CATALOGUE_DIR) / MEDIA_SUBDIR


def _run(args: argparse.Namespace, fn: Any) -> int:
    engine, media = _engine(args)
    try:
        with write_session(engine) as session, session.begin():
            out = fn(session, media)
    except (InputError, NotFound, ValueError) as exc:
        print(f"signage: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if out is not None:
        print(out if isinstance(out, str) else json.dumps(out, indent=1, default=str))
    return 0


def _upload(args: argparse.Namespace) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        print(f"signage: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    def up(s: Session, media: Path) -> str:
        m = service.upload_media(s, _principal(), MediaStore(media), args.file.name, data, via="cli")
        length = f", {m.duration_s:g} s" if m.duration_s else ""
        print(f"{args.file.name}: {m.kind} {m.width}x{m.height}{length}, {m.size} bytes", file=sys.stderr)
        return m.sha256

    return _run(args, up)


def _playlist(args: argparse.Namespace) -> int:
    items = []
    for raw in args.items:
        sha, _, secs = raw.partition(":")
        items.append({"media": sha, "duration_s": float(secs) if secs else 10.0})
    return _run(args, lambda s, _m: service.playlist_view(
        service.create_playlist(s, _principal(), args.name, items, is_default=args.default, via="cli")))


def _campaign(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from cloud.signage.api import CampaignBody, campaign_in

    try:
        text = Path(args.json[1:]).read_text() if args.json.startswith("@") else args.json
        body = campaign_in(CampaignBody.model_validate_json(text))
    except OSError as exc:
        print(f"signage: cannot read {args.json[1:]}: {exc.strerror}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(x) for x in e["loc"]) or "campaign"
        print(f"signage: {where}: {e['msg']}", file=sys.stderr)
        return 2
    return _run(args, lambda s, _m: service.campaign_view(service.save_campaign(s, _principal(), body, via="cli")))


def _publish(args: argparse.Namespace) -> int:
    return _run(args, lambda s, _m: f"published version {service.publish(s, _principal(), args.note, via='cli').version}")


def _rollback(args: argparse.Namespace) -> int:
    return _run(args, lambda s, _m: f"published version {service.rollback(s, _principal(), args.version, via='cli').version}"
                f" (the rules of version {args.version})")


def _publications(args: argparse.Namespace) -> int:
    return _run(args, lambda s, _m: "\n".join(
        f"{p.version}  {p.created_at:%Y-%m-%d %H:%M}Z  {p.created_by}  {p.note or ''}" for p in service.list_publications(s))
        or "no publication yet")


def _calendar(args: argparse.Namespace) -> int:
    start = args.start or datetime.now(UTC)
    if start.tzinfo is None:
        print(f"signage: --start {start.isoformat()} has no time zone: add one (e.g. +01:00)", file=sys.stderr)
        return 2

    def show(s: Session, _m: Path) -> str:
        screen, rows = service.calendar(s, Scope(all=True), args.node, start, start + timedelta(hours=args.hours))
        lines = [f"{args.node} ({screen.store}, {screen.timezone})"]
        for r in rows:
            what = f"{r.slot.layer.value:9} {r.slot.campaign or '(default)':20} {r.slot.media[:12]}" if r.slot else "(empty)"
            lost = f"  beats {', '.join(r.conflict)}" if r.conflict else ""
            lines.append(f"{r.start.astimezone(_zone(screen.timezone)):%a %Y-%m-%d %H:%M:%S}  {what}{lost}")
        return "\n".join(lines)

    return _run(args, show)


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def _plays(args: argparse.Namespace) -> int:
    by = [b.strip() for b in args.by.split(",") if b.strip()]
    return _run(args, lambda s, _m: service.report_csv(service.report(s, Scope(all=True), by), by).rstrip("\n"))
