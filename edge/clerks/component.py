"""Clerks' PIN sign-in as a box component.

The cloud sends the store's roster (`clerk_roster` command, `broker.payloads.ClerkRosterArgs`) on
every change and on each birth; the box checks it whole (its store, every PIN hash's parameters
within `broker.pins.BOUNDS`), ignores one older than the version it holds, and swaps it in
atomically. Signing in needs nothing but that roster, so it works with the cloud unreachable.

A wrong PIN counts against the clerk; after `clerks.max_failures` in a row the clerk is locked for
`clerks.lock_s`, doubled for each further lockout in a row up to `clerks.lock_max_s`. The count and
the lock are on disk (they survive a restart) and are cleared by a right PIN after the lock, or by a
manager resetting the PIN in the console. Attempts for one clerk are taken one at a time, so
parallel requests cannot try more PINs than the count allows.

The PIN check (scrypt, slow on purpose) runs on the local API's worker threads, never on the
agent's event loop.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from broker.envelope import Envelope
from broker.payloads import CLERK_ROSTER, ClerkRef, ClerkRosterArgs, CommandData
from broker.pins import PinHashError, parse_hash, verify_pin
from edge.clerks.clerks_db import Attempts, ClerksDb, RosterClerkRow, SessionRow
from edge.component import CommandHandler, CommandRefused, Component, ComponentContext, ComponentError
from edge.localapi import Route

__all__ = ["ClerksComponent", "Locked", "NotOnRoster", "SignInRefused", "SignedIn", "WrongPin"]

log = logging.getLogger(__name__)


class RefusalReason(enum.StrEnum):
    NO_ROSTER = "no_roster"
    NOT_ON_ROSTER = "not_on_roster"
    INACTIVE = "inactive"
    WRONG_PIN = "wrong_pin"
    LOCKED = "locked"


class SignInRefused(Exception):
    """A sign-in that did not succeed; `reason` to branch on, the message for the clerk."""

    reason: RefusalReason

    def __init__(self, message: str) -> None:
        super().__init__(message)


class NotOnRoster(SignInRefused):
    def __init__(self, message: str, reason: RefusalReason = RefusalReason.NOT_ON_ROSTER) -> None:
        super().__init__(message)
        self.reason = reason


class WrongPin(SignInRefused):
    reason = RefusalReason.WRONG_PIN

    def __init__(self, message: str, tries_left: int) -> None:
        super().__init__(message)
        self.tries_left = tries_left


class Locked(SignInRefused):
    reason = RefusalReason.LOCKED

    def __init__(self, message: str, until: float, retry_after_s: int) -> None:
        super().__init__(message)
        self.until = until
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class SignedIn:
    token: str
    clerk: RosterClerkRow
    expires_at: float


def utc_text(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class ClerksComponent(Component):
    name = "clerks"

    def __init__(self, ctx: ComponentContext, clock: Callable[[], float] = time.time) -> None:
        self.ctx = ctx
        self.cfg = ctx.config.clerks
        self.store = ctx.config.store_id
        # Wall-clock time, not monotonic: a lockout must outlast a reboot, which resets the latter.
        self.clock = clock
        try:
            self.db = ClerksDb(ctx.paths.clerks)
        except Exception as exc:
            raise ComponentError(f"clerks.path {ctx.paths.clerks}: cannot open the clerks database ({exc})") from None
        self._locks: dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.counts = {"rosters_applied": 0, "rosters_refused": 0, "sign_ins": 0, "wrong_pins": 0, "lockouts": 0}
        ctx.shared.clerk_sessions = self  # the station and the order desk stamp actions with the clerk

    # -- wiring ------------------------------------------------------------------------------------

    def named_commands(self) -> Mapping[str, CommandHandler]:
        return {CLERK_ROSTER: self._on_roster}

    def routes(self) -> Sequence[Route]:
        from edge.clerks.api import clerks_routes

        return clerks_routes(self)

    def status(self) -> Mapping[str, Any]:
        now = self.clock()
        return {"store": self.store, "roster_version": self.db.version, "clerks": len(self.db.clerks()),
                "locked": self.db.locked_count(now), "sessions": self.db.session_count(now), **self.counts}

    def close(self) -> None:
        self.db.close()

    # -- the roster --------------------------------------------------------------------------------

    async def _on_roster(self, env: Envelope) -> str:
        assert isinstance(env.data, CommandData)
        try:
            roster = self.check_roster(env.data.args)
        except CommandRefused:
            self.counts["rosters_refused"] += 1
            raise
        held = self.db.version
        if roster.version < held:
            return f"roster version {roster.version} is older than the held version {held}: ignored"
        if roster.version == held:
            return f"roster version {held} is already held"
        swapped = await asyncio.to_thread(self.db.swap, roster)
        if isinstance(swapped, int):  # a newer one came in meanwhile
            return f"roster version {roster.version} is not newer than the held version {swapped}: ignored"
        cleared, ended = swapped
        self.counts["rosters_applied"] += 1
        active = sum(c.active for c in roster.clerks)
        log.info("clerks: roster version %d applied (%d clerks, %d active)", roster.version, len(roster.clerks), active)
        return (f"roster version {roster.version} applied ({len(roster.clerks)} clerks, {active} active; "
                f"{cleared} lockout(s) cleared by a new PIN, {ended} session(s) ended)")

    def check_roster(self, args: Mapping[str, Any]) -> ClerkRosterArgs:
        """The roster in `args`, or `CommandRefused` naming what is wrong with it."""
        try:
            roster = ClerkRosterArgs.model_validate(args)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            where = ".".join(str(x) for x in err["loc"]) or "(args)"
            raise CommandRefused(f"clerk_roster args field '{where}': {err['msg']}") from None
        if roster.store != self.store:
            raise CommandRefused(f"clerk_roster is for store {roster.store!r}, this box is in store {self.store!r}: "
                                 "refused")
        for c in roster.clerks:
            try:
                parse_hash(c.pin_hash)
            except PinHashError as exc:
                raise CommandRefused(f"clerk_roster version {roster.version}, clerk {c.id}: {exc}: roster refused, "
                                     f"version {self.db.version} kept") from None
        return roster

    # -- signing in (local API worker threads) -------------------------------------------------------

    def _clerk_lock(self, clerk_id: int) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(clerk_id, threading.Lock())

    def _on_roster_clerk(self, clerk_id: int) -> RosterClerkRow:
        clerk = self.db.clerk(clerk_id)
        if clerk is None:
            version = self.db.version
            if version == 0:
                raise NotOnRoster(f"this box holds no roster of store {self.store!r} yet: no clerk can sign in "
                                  "until the cloud has sent one (the box must have been online once since clerks "
                                  "were added)", RefusalReason.NO_ROSTER)
            raise NotOnRoster(f"clerk {clerk_id} is not on the roster of store {self.store!r} (roster version "
                              f"{version}): a clerk of another store cannot sign in here")
        if not clerk.active:
            raise NotOnRoster(f"clerk {clerk_id} ({clerk.name}) is deactivated in store {self.store!r}: ask a "
                              "manager to reactivate them in the console", RefusalReason.INACTIVE)
        return clerk

    def sign_in(self, clerk_id: int, pin: str) -> SignedIn:
        """Check `pin` for `clerk_id`; raises a `SignInRefused` that says why not. Blocking (scrypt)."""
        clerk = self._on_roster_clerk(clerk_id)
        with self._clerk_lock(clerk_id):
            now = self.clock()
            state = self.db.attempts(clerk_id)
            if state.locked_until > now + self.cfg.lock_max_s:
                # Locked while the box's clock ran ahead (then corrected): no lock outlasts its cap.
                state = Attempts(state.failures, state.lockouts, now + self.cfg.lock_max_s)
                self.db.set_attempts(clerk_id, state)
            if state.locked_until > now:
                raise self._locked(clerk, state, now)
            if state.locked_until:
                # The lock has run out: a fresh set of tries, but the next lockout is longer.
                state = Attempts(0, state.lockouts, 0.0)
            try:
                ok = verify_pin(pin, clerk.pin_hash)
            except PinHashError:  # checked on receipt; a file edited by hand ends here
                log.error("clerks: clerk %d's PIN hash on this box is unusable", clerk_id)
                ok = False
            if ok:
                self.db.set_attempts(clerk_id, Attempts(0, 0, 0.0))
                token = secrets.token_urlsafe(32)
                expires = now + self.cfg.session_ttl_s
                self.db.add_session(token, clerk_id, now, expires)
                self.counts["sign_ins"] += 1
                log.info("clerks: clerk %d signed in", clerk_id)
                return SignedIn(token, clerk, expires)
            self.counts["wrong_pins"] += 1
            failures = state.failures + 1
            if failures >= self.cfg.max_failures:
                lockouts = state.lockouts + 1
                until = now + min(self.cfg.lock_s * 2 ** min(lockouts - 1, 30), self.cfg.lock_max_s)
                new = Attempts(0, lockouts, until)
                self.db.set_attempts(clerk_id, new)
                self.counts["lockouts"] += 1
                log.warning("clerks: clerk %d locked out after %d wrong PINs (lockout %d in a row)",
                            clerk_id, failures, lockouts)
                raise self._locked(clerk, new, now, just_now=True)
            self.db.set_attempts(clerk_id, Attempts(failures, state.lockouts, 0.0))
            left = self.cfg.max_failures - failures
            raise WrongPin(f"wrong PIN for {clerk.name}: {left} {'try' if left == 1 else 'tries'} left before a "
                           "lockout", left)

    def _locked(self, clerk: RosterClerkRow, state: Attempts, now: float, *, just_now: bool = False) -> Locked:
        wait = max(1, int(state.locked_until - now + 0.999))
        head = (f"{self.cfg.max_failures} wrong PINs: {clerk.name} is locked" if just_now
                else f"{clerk.name} is locked after {self.cfg.max_failures} wrong PINs")
        return Locked(f"{head} until {utc_text(state.locked_until)} (in {wait} s); a manager can reset the PIN in the "
                      "console to unlock now", state.locked_until, wait)

    def who(self, token: str) -> SessionRow | None:
        return self.db.session(token, self.clock())

    def clerk_ref(self, token: str) -> ClerkRef | None:
        """`edge.component.ClerkSessions`: the clerk signed in with `token`, as messages carry it."""
        found = self.who(token)
        return None if found is None else ClerkRef(id=str(found.clerk.id), name=found.clerk.name[:200])

    def sign_out(self, token: str) -> bool:
        return self.db.end_session(token)
