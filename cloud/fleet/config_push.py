"""Config pushes: a versioned firmware_config for one box or many (a store, a region), validated by
the same schema the box uses before anything is sent, delivered through the durable downlink, and
followed to the end: `applied` / `rejected` (the box's ack names the field) / `rolled_back` (the box
came back with its previous config after applying this one) / `superseded` (a newer push went out
before this one was answered).

A push carries the box's whole config: its enrolment config (broker, password file, CA, local API:
what the claim gave it) with the role's profile, overlaid with HQ's `overrides`.
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import yaml
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from broker.envelope import MessageType
from broker.payloads import AckData, BirthData, ConfigData
from cloud.access.scope import Principal, get_store
from cloud.access.service import InputError, audit
from cloud.bus import Context, Message, downlink
from cloud.fleet.enrolment import first_config
from cloud.fleet.models import ConfigPush, Identity, NodeConfigState, NodeTag
from cloud.fleet.service import get_region
from cloud.models import Node, Store
from cloud.settings import Settings
from firmware_config import ConfigError, NodeConfig, config_hash, parse_config

__all__ = ["batch_progress", "build_config", "config_labels", "current_config", "on_ack", "on_birth", "push_config", "rotate_credential", "set_tags", "visible_tags"]

STATES = ("pending", "applied", "rejected", "rolled_back", "superseded")
DEFAULT_ROLLBACK_AFTER_S = 300.0
"""A push asks the box to go back to its last good config if it cannot reach the cloud this long
after applying (0: never). On by default, for the API, the console and `provision add-printer`
alike: a push that breaks a box's connectivity (a wrong broker address, a bad network section)
must not need a visit; a box that can reach the cloud confirms within seconds, so 5 minutes only
ever elapse for a box the push cut off."""


def _now() -> datetime:
    return datetime.now(UTC)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def build_config(settings: Settings, node: Node, identity: Identity, overrides: dict[str, Any]) -> NodeConfig:
    """The box's whole config with `overrides`, validated by firmware_config (InputError naming the
    field otherwise). The node id and store are the enrolment's: not overridable (the broker
    section is: moving boxes to another broker is what the automatic rollback is for)."""
    for locked in ("node_id", "store_id"):
        if locked in overrides:
            raise InputError(f"overrides.{locked}", "is set by the box's enrolment; it cannot be pushed")
    assert node.store is not None
    from cloud.fleet.enrolment import profile_for

    cfg, _ca = first_config(settings, node.id, node.store.code, profile_for(identity.role, identity.model))
    merged = _merge(cfg.model_dump(mode="json", exclude_defaults=True) | {"profile": cfg.profile}, overrides)
    try:
        return parse_config(yaml.safe_dump(merged, sort_keys=False), "config")
    except ConfigError as exc:
        problem = exc.problems[0].split(": ", 1)[1] if ": " in exc.problems[0] else exc.problems[0]
        raise InputError("overrides", f"{node.id}: {problem}") from None


TAG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


def set_tags(session: Session, principal: Principal, node_id: str, tags: list[str], *, via: str = "api") -> list[str]:
    """Replace a box's tags (audited); each 1-32 characters of a-z, 0-9 and '-'."""
    from cloud.access.scope import get_node

    get_node(session, principal.scope, node_id)
    clean = sorted({t.strip().lower() for t in tags})
    bad = [t for t in clean if not TAG_RE.match(t)]
    if bad:
        raise InputError("tags", f"{bad[0]!r} is not a tag: 1-32 characters of a-z, 0-9 and '-', starting with a letter or digit")
    before = sorted(session.scalars(select(NodeTag.tag).where(NodeTag.node_id == node_id)))
    session.execute(delete(NodeTag).where(NodeTag.node_id == node_id))
    session.add_all(NodeTag(node_id=node_id, tag=t) for t in clean)
    session.flush()
    audit(session, principal.actor, "node.tags", "node", node_id, before={"tags": before}, after={"tags": clean}, via=via)
    return clean


def visible_tags(session: Session, principal: Principal) -> list[str]:
    return list(session.scalars(
        select(NodeTag.tag).where(NodeTag.node_id.in_(select(Node.id).where(principal.scope.node_clause())))
        .distinct().order_by(NodeTag.tag)
    ))


def _targets(
    session: Session, principal: Principal, nodes: list[str], store: str | None, region: str | None, tag: str | None = None
) -> list[tuple[Node, Identity]]:
    stmt = (select(Node, Identity).join(Identity, Identity.node_id == Node.id)
            .where(Identity.status == "active", Node.retired_at.is_(None), principal.scope.node_clause()))
    if nodes:
        stmt = stmt.where(Node.id.in_(nodes))
    elif store:
        stmt = stmt.where(Node.store_id == get_store(session, principal.scope, store).id)
    elif region:
        region_id = get_region(session, principal.scope, region).id
        stmt = stmt.where(Node.store_id.in_(select(Store.id).where(Store.region_id == region_id)))
    elif tag:
        stmt = stmt.where(Node.id.in_(select(NodeTag.node_id).where(NodeTag.tag == tag)))
    else:
        raise InputError("target", "name the boxes: nodes, a store, a region or a tag")
    found = [(n, i) for n, i in session.execute(stmt.order_by(Node.id)).all()]
    missing = sorted(set(nodes) - {n.id for n, _ in found})
    if missing:
        raise InputError("nodes", f"not enrolled, revoked, retired or outside your scope: {', '.join(missing)}")
    if not found:
        raise InputError("target", "no enrolled, active box there")
    return found


def push_config(
    session: Session, principal: Principal, settings: Settings, *, overrides: dict[str, Any], nodes: list[str] | None = None,
    store: str | None = None, region: str | None = None, tag: str | None = None,
    rollback_after_s: float = DEFAULT_ROLLBACK_AFTER_S,
    via: str = "api",
) -> tuple[str, list[ConfigPush]]:
    """Validate every box's new config first, then queue one versioned push per box (a newer push
    supersedes an unanswered older one). Returns the batch id and the pushes."""
    if not 0 <= rollback_after_s <= 7 * 24 * 3600:
        raise InputError("rollback_after_s", f"{rollback_after_s} is not 0 (no rollback) to 604800 s")
    targets = _targets(session, principal, list(nodes or []), store, region, tag)
    configs = [(n, build_config(settings, n, i, overrides)) for n, i in targets]
    batch = str(uuid.uuid4())
    now = _now()
    pushes = []
    for node, cfg in configs:
        state = session.get(NodeConfigState, node.id, with_for_update=True)
        if state is None:
            state = NodeConfigState(node_id=node.id, desired_version=0, applied_version=0)
            session.add(state)
        state.desired_version += 1
        digest = config_hash(cfg)
        state.desired_hash = digest
        session.execute(update(ConfigPush).where(ConfigPush.node_id == node.id, ConfigPush.status == "pending")
                        .values(status="superseded", updated_at=now))
        data = ConfigData(config_hash=digest, config=cfg.model_dump(mode="json", exclude_defaults=True) | {"profile": cfg.profile},
                          version=state.desired_version, rollback_after_s=rollback_after_s)
        msg_id = downlink.send(session, node.id, MessageType.CONFIG, data, engine="fleet",
                               key=f"config:{node.id}:{state.desired_version}")
        push = ConfigPush(node_id=node.id, version=state.desired_version, profile=cfg.profile or "", config=data.config,
                          config_hash=digest, batch=batch, status="pending", command_id=str(msg_id),
                          created_by=principal.actor, created_at=now, updated_at=now)
        session.add(push)
        pushes.append(push)
    session.flush()
    audit(session, principal.actor, "config.push", "config_batch", batch,
          after={"nodes": [n.id for n, _ in configs], "overrides": overrides, "rollback_after_s": rollback_after_s}, via=via)
    return batch, pushes


def rotate_credential(
    session: Session, principal: Principal, settings: Settings, node_id: str, *, via: str = "api"
) -> ConfigPush:
    """Give the box a new broker password without taking it offline: the password goes sealed to
    the box's key with its current config (a push that changes nothing else); once the box acks, the
    bus's reconciler sets it on the broker, and the box's next login uses it."""
    from cloud.fleet.enrolment import get_identity
    from cloud.fleet.identity import BrokerAdmin, BrokerAdminError, new_password, seal

    identity = get_identity(session, principal.scope, node_id)
    if identity.status != "active":
        raise InputError("node", f"box {node_id!r} is {identity.status}: only an active box's credential can be rotated")
    try:
        admin = BrokerAdmin.from_settings(settings)
    except BrokerAdminError as exc:
        raise InputError("node", f"cannot rotate {node_id!r}'s credential: {exc}") from None
    node = session.get(Node, node_id)
    assert node is not None
    latest = session.scalars(select(ConfigPush).where(ConfigPush.node_id == node_id, ConfigPush.status == "applied")
                             .order_by(ConfigPush.version.desc()).limit(1)).first()
    cfg = parse_config(yaml.safe_dump(latest.config, sort_keys=False), "config") if latest else build_config(settings, node, identity, {})
    password = new_password()
    state = session.get(NodeConfigState, node_id, with_for_update=True)
    assert state is not None
    state.desired_version += 1
    digest = config_hash(cfg)
    now = _now()
    session.execute(update(ConfigPush).where(ConfigPush.node_id == node_id, ConfigPush.status == "pending")
                    .values(status="superseded", updated_at=now))
    data = ConfigData(config_hash=digest, config=cfg.model_dump(mode="json", exclude_defaults=True) | {"profile": cfg.profile},
                      version=state.desired_version, credential=seal(identity.public_key, password.encode()))
    msg_id = downlink.send(session, node_id, MessageType.CONFIG, data, engine="fleet", key=f"config:{node_id}:{state.desired_version}")
    identity.pending_password, identity.pending_command_id = admin.wrap_pending(node_id, password), str(msg_id)
    push = ConfigPush(node_id=node_id, version=state.desired_version, profile=cfg.profile or "", config=data.config,
                      config_hash=digest, batch=None, status="pending", detail="credential rotation", command_id=str(msg_id),
                      created_by=principal.actor, created_at=now, updated_at=now)
    session.add(push)
    session.flush()
    audit(session, principal.actor, "node.rotate_credential", "node", node_id,
          after={"credential_version": identity.credential_version + 1, "push_version": push.version}, via=via)
    return push


def current_config(session: Session, principal: Principal, settings: Settings, node_id: str) -> dict[str, Any]:
    """The config HQ means a box to run: its newest push still standing (pending or applied), else
    its enrolment config with its profile. A change to one part (a printer added) starts from this,
    so it keeps what earlier pushes set."""
    from cloud.access.scope import get_node
    from cloud.fleet.enrolment import get_identity

    node = get_node(session, principal.scope, node_id)
    identity = get_identity(session, principal.scope, node_id)
    latest = session.scalars(select(ConfigPush).where(ConfigPush.node_id == node_id, ConfigPush.status.in_(("pending", "applied")))
                             .order_by(ConfigPush.version.desc()).limit(1)).first()
    if latest is not None:
        return {"node": node_id, "profile": latest.profile, "version": latest.version, "status": latest.status,
                "config": latest.config}
    cfg = build_config(settings, node, identity, {})
    return {"node": node_id, "profile": cfg.profile, "version": 0, "status": "enrolment",
            "config": cfg.model_dump(mode="json", exclude_defaults=True) | {"profile": cfg.profile}}


def batch_progress(session: Session, principal: Principal, batch: str) -> dict[str, Any]:
    rows = session.scalars(
        select(ConfigPush).where(ConfigPush.batch == batch,
                                 ConfigPush.node_id.in_(select(Node.id).where(principal.scope.node_clause())))
        .order_by(ConfigPush.node_id)
    ).all()
    if not rows:
        from cloud.access.scope import NotFound

        raise NotFound(f"No config push batch {batch!r} (unknown, or of boxes outside your scope)")
    counts = Counter(r.status for r in rows)
    return {"batch": batch, "total": len(rows), **{s: counts.get(s, 0) for s in STATES},
            "pushes": [{"node": r.node_id, "version": r.version, "status": r.status, "field": r.field, "detail": r.detail}
                       for r in rows]}


def recent_batches(session: Session, principal: Principal, limit: int = 10) -> list[dict[str, Any]]:
    newest = func.max(ConfigPush.id).label("newest")
    batches = session.execute(
        select(ConfigPush.batch, newest)
        .where(ConfigPush.batch.is_not(None), ConfigPush.node_id.in_(select(Node.id).where(principal.scope.node_clause())))
        .group_by(ConfigPush.batch).order_by(newest.desc()).limit(limit)
    ).all()
    return [batch_progress(session, principal, b) for b, _ in batches if b is not None]


def config_labels(session: Session, node_ids: list[str]) -> dict[str, str]:
    """Per enrolled box, for the fleet page: the config version it runs, drift from what HQ pushed
    last, and its last rollback (e.g. `v3 · drift (pushed v4) · rolled back v4 2026-11-28 10:02`)."""
    if not node_ids:
        return {}
    rows = session.execute(
        select(NodeConfigState, Node.config_hash).join(Node, Node.id == NodeConfigState.node_id)
        .where(NodeConfigState.node_id.in_(node_ids))
    ).all()
    out = {}
    for state, running in rows:
        parts = [f"v{state.applied_version}"]
        if state.desired_hash and running != state.desired_hash:
            parts.append(f"drift (pushed v{state.desired_version})")
        if state.last_rollback_at is not None:
            parts.append(f"rolled back v{state.last_rollback_version} {state.last_rollback_at:%Y-%m-%d %H:%M}")
        out[state.node_id] = " · ".join(parts)
    return out


# -- what the boxes say --------------------------------------------------------------------------


def _field_of(detail: str) -> str | None:
    if "field '" in detail:
        return detail.split("field '", 1)[1].split("'", 1)[0]
    return None


def on_ack(ctx: Context, msg: Message) -> None:
    """The box's answer to a push: applied, or rejected naming the field."""
    data = msg.data
    assert isinstance(data, AckData)
    if msg.corr is None:
        return
    detail = (data.detail or "")[:500]
    values: dict[str, Any] = {"detail": detail, "updated_at": ctx.now}
    if data.ok:
        values["status"] = "applied"
    else:
        values |= {"status": "rejected", "field": _field_of(detail)}
    ctx.conn.execute(update(ConfigPush).where(ConfigPush.command_id == str(msg.corr), ConfigPush.status == "pending")
                     .values(**values))
    if data.ok:
        # A rotation the box took: the reconciler now sets the new password on the broker.
        ctx.conn.execute(update(Identity).where(Identity.node_id == msg.node, Identity.pending_command_id == str(msg.corr))
                         .values(broker_synced=False))


def on_birth(ctx: Context, msg: Message) -> None:
    """A birth says which config the box runs: the pushed one (applied), or - after it acked a push
    that asked for rollback - its previous one (rolled back; the box says why in `config_rollback`)."""
    data = msg.data
    assert isinstance(data, BirthData)
    # Only a birth the bus accepted as the node's current session counts (order-safe).
    current = ctx.conn.execute(select(Node.session).where(Node.id == msg.node)).scalar()
    if current != msg.session:
        return
    push = ctx.conn.execute(
        select(ConfigPush.id, ConfigPush.version, ConfigPush.config_hash, ConfigPush.status)
        .where(ConfigPush.node_id == msg.node, ConfigPush.status.in_(("pending", "applied")))
        .order_by(ConfigPush.version.desc()).limit(1)
    ).first()
    if push is None:
        return
    if data.config_hash == push.config_hash:
        ctx.conn.execute(update(ConfigPush).where(ConfigPush.id == push.id, ConfigPush.status == "pending")
                         .values(status="applied", updated_at=ctx.now))
        ctx.conn.execute(update(NodeConfigState).where(NodeConfigState.node_id == msg.node)
                         .values(applied_version=push.version))
    elif push.status == "applied":
        told = data.config_rollback
        reason = (f"the box rolled back by itself: {told.reason}" if told is not None and told.version == push.version
                  else f"the box came back on its previous config ({data.config_hash[:12]}…) after applying v{push.version}")
        ctx.conn.execute(update(ConfigPush).where(ConfigPush.id == push.id)
                         .values(status="rolled_back", detail=reason, updated_at=ctx.now))
        ctx.conn.execute(update(NodeConfigState).where(NodeConfigState.node_id == msg.node)
                         .values(last_rollback_at=ctx.now, last_rollback_version=push.version, last_rollback_reason=reason))
