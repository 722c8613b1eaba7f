"""The clerks' routes on the box's local API (for the clerk's station app).

    GET  /clerks                 this store's active clerks for a picker: id, name, staff number
                                 (never a PIN hash), the roster version and whether one is held
    POST /clerks/sign-in         {clerk_id, pin} → {token, expires_at, clerk}; refused with a
                                 `reason` (wrong_pin + tries_left, locked + retry_after_s,
                                 not_on_roster, inactive, no_roster) and a message for the clerk
    POST /clerks/session         {token} → who is signed in with it, until when (401 if nobody)
    POST /clerks/sign-out        {token} → {signed_out: true|false}

Tokens travel in bodies, not in URLs (which end up in logs).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from edge.clerks.clerks_db import RosterClerkRow
from edge.localapi import Request, Response, Route, json_response

if TYPE_CHECKING:
    from edge.clerks.component import ClerksComponent

__all__ = ["clerks_routes"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SignInRequest(_Body):
    clerk_id: Annotated[int, Field(ge=1, lt=2**63)]
    pin: Annotated[str, StringConstraints(pattern=r"^[0-9]{4,8}$")]
    """4 to 8 digits."""


class TokenRequest(_Body):
    token: Annotated[str, StringConstraints(min_length=1, max_length=100)]


def _clerk(c: RosterClerkRow) -> dict[str, Any]:
    return {"id": c.id, "name": c.name, "staff_number": c.staff_number}


def _refused(status: HTTPStatus, message: str, reason: str, **extra: Any) -> Response:
    headers = {"Retry-After": str(extra["retry_after_s"])} if "retry_after_s" in extra else None
    return json_response({"error": message, "status": int(status), "reason": reason, **extra}, status, headers)


def clerks_routes(c: ClerksComponent) -> tuple[Route, ...]:
    from edge.clerks.component import Locked, SignInRefused, WrongPin, utc_text

    def roster(_req: Request) -> Any:
        return {"store": c.store, "roster_version": c.db.version, "clerks": [_clerk(x) for x in c.db.clerks()]}

    def sign_in(req: Request) -> Any:
        body = req.body
        assert isinstance(body, SignInRequest)
        try:
            done = c.sign_in(body.clerk_id, body.pin)
        except WrongPin as exc:
            return _refused(HTTPStatus.UNAUTHORIZED, str(exc), exc.reason, tries_left=exc.tries_left)
        except Locked as exc:
            return _refused(HTTPStatus.LOCKED, str(exc), exc.reason, locked_until=utc_text(exc.until),
                            retry_after_s=exc.retry_after_s)
        except SignInRefused as exc:
            status = HTTPStatus.SERVICE_UNAVAILABLE if exc.reason == "no_roster" else (
                HTTPStatus.FORBIDDEN if exc.reason == "inactive" else HTTPStatus.NOT_FOUND)
            return _refused(status, str(exc), exc.reason)
        return {"token": done.token, "expires_at": utc_text(done.expires_at), "clerk": _clerk(done.clerk)}

    def session(req: Request) -> Any:
        body = req.body
        assert isinstance(body, TokenRequest)
        found = c.who(body.token)
        if found is None:
            return _refused(HTTPStatus.UNAUTHORIZED, "no clerk is signed in with this token (signed out, expired, "
                                                     "or the clerk was deactivated): sign in again", "no_session")
        return {"clerk": _clerk(found.clerk), "signed_in_at": utc_text(found.started_at), "expires_at": utc_text(found.expires_at)}

    def sign_out(req: Request) -> Any:
        body = req.body
        assert isinstance(body, TokenRequest)
        return {"signed_out": c.sign_out(body.token)}

    return (
        Route("GET", "/clerks", roster),
        Route("POST", "/clerks/sign-in", sign_in, body=SignInRequest),
        Route("POST", "/clerks/session", session, body=TokenRequest),
        Route("POST", "/clerks/sign-out", sign_out, body=TokenRequest),
    )
