"""Console page of enrolment: make, list and revoke enrolment tokens; see every enrolled box's
identity and revoke or reinstate it. Form posts check the CSRF token first (`form_user`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from cloud.access.scope import NotFound, Perm, Principal, visible_regions, visible_stores
from cloud.access.service import InputError, write_session
from cloud.console.pages import console_user, form_user, render
from cloud.fleet import config_push, enrolment
from cloud.fleet.enrol_api import admin_of
from cloud.fleet.models import Identity, NodeConfigState
from cloud.models import Node

__all__ = ["router"]

router = APIRouter(prefix="/console", include_in_schema=False)

Fleet = Annotated[Principal, Depends(console_user(Perm.FLEET))]
EditForm = Annotated[Principal, Depends(form_user(Perm.FLEET_EDIT))]


def _page(request: Request, principal: Principal, *, code: int = 200, **extra: Any) -> HTMLResponse:
    with request.app.state.sessionmaker() as session:
        tokens = [enrolment.token_view(t) for t in enrolment.list_tokens(session, principal.scope)]
        visible = select(Node.id).where(principal.scope.node_clause())
        identities = [
            enrolment.identity_view(i) | {
                "online": node.online,
                "config_version": state.applied_version if state else 0,
                "desired_version": state.desired_version if state else 0,
                "drift": bool(state and state.desired_hash and node.config_hash != state.desired_hash),
                "last_rollback": (f"v{state.last_rollback_version} at {state.last_rollback_at:%Y-%m-%d %H:%M}"
                                  if state and state.last_rollback_at else None),
            }
            for i, node, state in session.execute(
                select(Identity, Node, NodeConfigState).join(Node, Node.id == Identity.node_id)
                .outerjoin(NodeConfigState, NodeConfigState.node_id == Identity.node_id)
                .where(Identity.node_id.in_(visible)).order_by(Identity.enrolled_at.desc()).limit(500)
            ).all()
        ]
        batches = config_push.recent_batches(session, principal)
        return render(request, "enrolment.html", principal, status_code=code, tokens=tokens, identities=identities,
                      rollback_after_s=config_push.DEFAULT_ROLLBACK_AFTER_S,
                      stores=visible_stores(session, principal.scope), roles=list(enrolment.ROLES), batches=batches,
                      regions=visible_regions(session, principal.scope), tags=config_push.visible_tags(session, principal),
                      can_edit=principal.can(Perm.FLEET_EDIT), **extra)


@router.get("/enrolment", response_class=HTMLResponse)
def enrolment_page(request: Request, principal: Fleet) -> HTMLResponse:
    return _page(request, principal)


@router.post("/enrolment", response_class=HTMLResponse)
def enrolment_action(
    request: Request, principal: EditForm,
    action: Annotated[str, Form(pattern="^(create|revoke_token|revoke_node|reinstate_node|rotate|push)$")],
    store: Annotated[str, Form(max_length=32)] = "",
    role: Annotated[str, Form(max_length=32)] = "",
    ttl_min: Annotated[int, Form(ge=1, le=7 * 24 * 60)] = 60,
    token_id: Annotated[int, Form(ge=0, le=2**31 - 1)] = 0,
    node: Annotated[str, Form(max_length=63)] = "",
    reason: Annotated[str, Form(max_length=500)] = "",
    target: Annotated[str, Form(max_length=40)] = "",
    overrides: Annotated[str, Form(max_length=20_000)] = "{}",
    rollback_after_s: Annotated[float, Form(ge=0, le=7 * 24 * 3600)] = config_push.DEFAULT_ROLLBACK_AFTER_S,
) -> HTMLResponse:
    new_token: str | None = None
    try:
        with write_session(request.app.state.engine) as session, session.begin():
            if action == "create":
                token, new_token = enrolment.create_token(session, principal, store, role, ttl_s=ttl_min * 60, via="console")
                saved = f"Token {token.hint}… for {token.store.code} ({token.role}), valid until {token.expires_at:%Y-%m-%d %H:%M} UTC."
            elif action == "revoke_token":
                enrolment.revoke_token(session, principal, token_id, via="console")
                saved = f"Token #{token_id} revoked: no box can be claimed with it."
            elif action == "revoke_node":
                _, problem = enrolment.revoke_node(session, principal, admin_of(request), node, reason=reason, via="console")
                saved = f"{node} revoked: the broker dropped it." if problem is None else f"{node} revoked; the broker has not confirmed yet ({problem})."
            elif action == "rotate":
                push = config_push.rotate_credential(session, principal, request.app.state.settings, node, via="console")
                saved = f"{node}: new credential sent (push v{push.version}); the broker switches once the box acks."
            elif action == "push":
                kind, _, code = target.partition(":")
                try:
                    extra = json.loads(overrides or "{}")
                except ValueError as exc:
                    raise InputError("overrides", f"not JSON: {exc}") from None
                if not isinstance(extra, dict):
                    raise InputError("overrides", "expected a JSON object of config keys")
                batch, pushes = config_push.push_config(
                    session, principal, request.app.state.settings, overrides=extra,
                    store=code if kind == "store" else None, region=code if kind == "region" else None,
                    tag=code if kind == "tag" else None,
                    rollback_after_s=rollback_after_s, via="console")
                saved = f"Config pushed to {len(pushes)} box(es) (batch {batch[:8]})."
            else:
                _, problem = enrolment.reinstate_node(session, principal, admin_of(request), node, via="console")
                saved = f"{node} reinstated." if problem is None else f"{node} reinstated; the broker has not confirmed yet ({problem})."
    except (InputError, NotFound) as exc:
        return _page(request, principal, code=422, error=str(exc))
    return _page(request, principal, saved=saved, new_token=new_token)
