"""REST endpoints of enrolment: tokens (console users), the claim (authorised by a token alone), and
a box identity's revocation. Thin: the logic is in `cloud.fleet.enrolment`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from cloud.access.scope import Perm, Principal
from cloud.access.service import write_session
from cloud.access.web import require, via
from cloud.fleet import config_push, enrolment
from cloud.fleet.identity import BrokerAdmin, BrokerAdminError

__all__ = ["router"]

router = APIRouter(tags=["provisioning"])
Reader = Annotated[Principal, Depends(require(Perm.FLEET))]
Editor = Annotated[Principal, Depends(require(Perm.FLEET_EDIT))]
NodeId = Annotated[str, Path(min_length=1, max_length=63)]
TokenId = Annotated[int, Path(ge=1, le=2**31 - 1)]
Short = Annotated[str, Field(min_length=1, max_length=64)]
Problem: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown, or outside your scope"},
    422: {"description": "invalid input (the field and the reason)"},
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenCreate(_Strict):
    store: Annotated[str, Field(min_length=1, max_length=32)]
    role: Annotated[str, Field(min_length=1, max_length=32, description="kiosk, scan-station, signage or gateway")]
    ttl_s: Annotated[int | None, Field(ge=60, le=7 * 24 * 3600, description="default: OMNISHELF_ENROL_TOKEN_TTL_S")] = None


class TokenPublic(BaseModel):
    id: int
    hint: str
    store: str
    role: str
    state: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    used_serial: str | None
    node: str | None


class TokenCreated(TokenPublic):
    token: str
    """The secret: shown once, never stored."""


class ClaimRequest(_Strict):
    token: Annotated[str, Field(min_length=1, max_length=100)]
    serial: Short
    model: Short
    store: Annotated[str, Field(min_length=1, max_length=32)]
    role: Annotated[str, Field(min_length=1, max_length=32)]
    public_key: Annotated[str, Field(min_length=1, max_length=64)]


class ClaimAnswer(BaseModel):
    node_id: str
    store: str
    role: str
    profile: str
    config_yaml: str
    sealed_password: str
    ca_pem: str | None


class ClaimStatusRequest(_Strict):
    token: Annotated[str, Field(min_length=1, max_length=100)]


class RevokeRequest(_Strict):
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class IdentityPublic(BaseModel):
    node: str
    serial: str
    model: str
    role: str
    status: str
    broker_synced: bool
    credential_version: int
    enrolled_at: datetime
    revoked_at: datetime | None
    revoked_reason: str | None
    retired_at: datetime | None
    broker_problem: str | None = None
    """Why the broker has not confirmed the change yet (the bus retries it)."""


def admin_of(request: Request) -> BrokerAdmin | None:
    try:
        return BrokerAdmin.from_settings(request.app.state.settings)
    except BrokerAdminError:
        return None


def _token_public(t: Any) -> dict[str, Any]:
    return enrolment.token_view(t)


@router.post("/enrolment-tokens", response_model=TokenCreated, status_code=201, responses=Problem)
def create_token(body: TokenCreate, request: Request, principal: Editor) -> TokenCreated:
    ttl = body.ttl_s or request.app.state.settings.ENROL_TOKEN_TTL_S
    with write_session(request.app.state.engine) as session, session.begin():
        token, secret = enrolment.create_token(session, principal, body.store, body.role, ttl_s=ttl, via=via(request))
        return TokenCreated.model_validate(_token_public(token) | {"token": secret})


@router.get("/enrolment-tokens", response_model=list[TokenPublic], responses=Problem)
def list_tokens(request: Request, principal: Reader) -> list[TokenPublic]:
    with Session(request.app.state.engine) as session:
        return [TokenPublic.model_validate(_token_public(t)) for t in enrolment.list_tokens(session, principal.scope)]


@router.post("/enrolment-tokens/{token_id}/revoke", response_model=TokenPublic, responses=Problem)
def revoke_token(token_id: TokenId, request: Request, principal: Editor) -> TokenPublic:
    with write_session(request.app.state.engine) as session, session.begin():
        return TokenPublic.model_validate(_token_public(enrolment.revoke_token(session, principal, token_id, via=via(request))))


@router.post(
    "/provision/claim", response_model=ClaimAnswer,
    responses={**Problem, 403: {"description": "the token does not allow this claim (detail says why; reason for programs)"},
               503: {"description": "the broker did not take the credential"}},
)
def claim(body: ClaimRequest, request: Request) -> Any:
    """Enrol a box in setup mode. Authorised by the enrolment token alone (the technician needs no
    console account); the answer's password is sealed to the box's key."""
    settings = request.app.state.settings
    admin = admin_of(request)  # None: refused after the token's checks, naming the missing setting
    try:
        with write_session(request.app.state.engine) as session, session.begin():
            result = enrolment.claim(session, settings, admin, token=body.token, serial=body.serial, model=body.model,
                                     store=body.store, role=body.role, public_key=body.public_key, via=via(request))
    except enrolment.ClaimRefused as exc:
        code = 503 if exc.reason is enrolment.Refusal.BROKER else 403
        return JSONResponse({"detail": str(exc), "reason": exc.reason.value}, status_code=code)
    return ClaimAnswer(node_id=result.node_id, store=result.store, role=result.role, profile=result.profile,
                       config_yaml=result.config_yaml, sealed_password=result.sealed_password, ca_pem=result.ca_pem)


@router.post("/provision/status", responses=Problem)
def claim_status(body: ClaimStatusRequest, request: Request) -> dict[str, Any]:
    """Whether the box claimed with this token is online (the technician's laptop waits on it)."""
    with Session(request.app.state.engine) as session:
        return enrolment.claim_status(session, body.token)


@router.get("/nodes/{node_id}/identity", response_model=IdentityPublic, responses=Problem)
def get_identity(node_id: NodeId, request: Request, principal: Reader) -> IdentityPublic:
    with Session(request.app.state.engine) as session:
        return IdentityPublic.model_validate(enrolment.identity_view(enrolment.get_identity(session, principal.scope, node_id)))


@router.post("/nodes/{node_id}/revoke", response_model=IdentityPublic, responses=Problem)
def revoke_node(node_id: NodeId, body: RevokeRequest, request: Request, principal: Editor) -> IdentityPublic:
    """Disable the box's broker credential now (its connection drops within milliseconds)."""
    with write_session(request.app.state.engine) as session, session.begin():
        identity, problem = enrolment.revoke_node(session, principal, admin_of(request), node_id, reason=body.reason,
                                                  via=via(request))
        return IdentityPublic.model_validate(enrolment.identity_view(identity) | {"broker_problem": problem})


@router.post("/nodes/{node_id}/reinstate", response_model=IdentityPublic, responses=Problem)
def reinstate_node(node_id: NodeId, request: Request, principal: Editor) -> IdentityPublic:
    with write_session(request.app.state.engine) as session, session.begin():
        identity, problem = enrolment.reinstate_node(session, principal, admin_of(request), node_id, via=via(request))
        return IdentityPublic.model_validate(enrolment.identity_view(identity) | {"broker_problem": problem})


class ConfigPushRequest(_Strict):
    nodes: Annotated[list[Annotated[str, Field(min_length=1, max_length=63)]], Field(max_length=10_000)] = []
    store: Annotated[str | None, Field(max_length=32)] = None
    region: Annotated[str | None, Field(max_length=32)] = None
    tag: Annotated[str | None, Field(max_length=32)] = None
    overrides: dict[str, Any] = {}
    """Config keys over the box's enrolment config and profile (e.g. {"telemetry_every_s": 30})."""
    rollback_after_s: Annotated[float, Field(ge=0, le=7 * 24 * 3600, description="0: no automatic rollback")] = (
        config_push.DEFAULT_ROLLBACK_AFTER_S)


@router.post("/config-pushes", status_code=201, responses=Problem)
def push_config(body: ConfigPushRequest, request: Request, principal: Editor) -> dict[str, Any]:
    """Validate and queue a versioned config for each box named (or of a store or region)."""
    with write_session(request.app.state.engine) as session, session.begin():
        batch, _pushes = config_push.push_config(
            session, principal, request.app.state.settings, overrides=body.overrides, nodes=body.nodes, store=body.store,
            region=body.region, tag=body.tag, rollback_after_s=body.rollback_after_s, via=via(request))
        return config_push.batch_progress(session, principal, batch)


@router.get("/config-pushes/{batch}", responses=Problem)
def push_progress(batch: Annotated[str, Path(min_length=36, max_length=36)], request: Request, principal: Reader) -> dict[str, Any]:
    """How many boxes of a push applied, rejected, are pending or rolled back."""
    with Session(request.app.state.engine) as session:
        return config_push.batch_progress(session, principal, batch)


@router.get("/nodes/{node_id}/config", responses=Problem)
def node_config(node_id: NodeId, request: Request, principal: Reader) -> dict[str, Any]:
    """The config HQ means the box to run (its newest pending or applied push, else its enrolment
    config): `profile`, `version`, `status` (`pending`, `applied` or `enrolment`) and `config`."""
    with Session(request.app.state.engine) as session:
        return config_push.current_config(session, principal, request.app.state.settings, node_id)


@router.post("/nodes/{node_id}/rotate-credential", status_code=202, responses=Problem)
def rotate_credential(node_id: NodeId, request: Request, principal: Editor) -> dict[str, Any]:
    """Start a credential rotation (the box stays online; see `GET /nodes/{id}/identity`)."""
    with write_session(request.app.state.engine) as session, session.begin():
        push = config_push.rotate_credential(session, principal, request.app.state.settings, node_id, via=via(request))
        return {"node": node_id, "push_version": push.version, "command_id": push.command_id}


class TagsRequest(_Strict):
    tags: Annotated[list[Annotated[str, Field(min_length=1, max_length=32)]], Field(max_length=50)]


@router.put("/nodes/{node_id}/tags", responses=Problem)
def set_tags(node_id: NodeId, body: TagsRequest, request: Request, principal: Editor) -> dict[str, Any]:
    """Replace the box's tags (config pushes can address a tag)."""
    with write_session(request.app.state.engine) as session, session.begin():
        return {"node": node_id, "tags": config_push.set_tags(session, principal, node_id, body.tags, via=via(request))}
