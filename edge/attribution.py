"""Who did it: the clerk behind a write on the box's local API, from its `X-Clerk-Session` header.

The clerk's station app signs a clerk in (`POST /clerks/sign-in`) and sends the token it got in
`X-Clerk-Session` with every action; the component stamps the message it sends up with that clerk
(`broker.payloads.ClerkRef`), so the cloud records who scanned, who took an order's step, who
adjusted stock. A token that names nobody is refused (401) rather than ignored: the clerk believes
they are signed in, and an action recorded as nobody's would be a lie. No header at all is allowed
unless the box's config says `clerks.require_sign_in`.
"""

from __future__ import annotations

from http import HTTPStatus

from broker.payloads import ClerkRef
from edge.component import Shared
from edge.localapi import ApiError, Request

__all__ = ["HEADER", "clerk_of"]

HEADER = "X-Clerk-Session"
_KEY = HEADER.lower()


def clerk_of(req: Request, shared: Shared, *, required: bool) -> ClerkRef | None:
    """The clerk signed in with the request's `X-Clerk-Session`, None without the header (when
    allowed); `ApiError` 401 saying why otherwise."""
    token = req.headers.get(_KEY, "").strip()
    if not token:
        if required:
            raise ApiError(HTTPStatus.UNAUTHORIZED, f"this box requires a signed-in clerk: sign in (POST /clerks/sign-in) "
                                                    f"and send the token in the {HEADER} header",
                           {"WWW-Authenticate": "X-Clerk-Session"})
        return None
    if len(token) > 100 or "," in token:
        raise ApiError(HTTPStatus.UNAUTHORIZED, f"{HEADER} is not a session token (expected the one token from "
                                                "POST /clerks/sign-in, given once): sign in again")
    sessions = shared.clerk_sessions
    if sessions is None:
        raise ApiError(HTTPStatus.UNAUTHORIZED, f"this box has no clerk sign-in (the clerks component is off): "
                                                f"{HEADER} cannot be checked; send the request without it")
    clerk = sessions.clerk_ref(token)
    if clerk is None:
        raise ApiError(HTTPStatus.UNAUTHORIZED, f"{HEADER}: no clerk is signed in with this token (signed out, "
                                                "expired, or the clerk was deactivated): sign in again")
    return clerk
