"""Failed sign-ins counted in the database per (account, source), per source and per account.

Three counters, three limits (see `Limits`), because each one alone fails somebody:

- per (account, source): the ordinary lockout. Five wrong passwords lock that account *from that
  address*; the account's owner, elsewhere, still signs in. A lock per account alone lets anyone
  who knows a username lock its owner out (the admin included) with five requests.
- per source, across accounts: one address trying many usernames (password spraying, guessing
  which names exist) is throttled as a whole, with an answer that names no account.
- per account, across sources: a distributed guess at one account is stopped too, at a count far
  above the per-pair limit, so locking someone out for everyone takes many addresses.

Every transaction here touches an attempt's rows in one order (source, pair, account), so
concurrent sign-ins on PostgreSQL wait for each other but never deadlock.

Counting is pessimistic: an attempt reserves its failure *before* the password is checked (an
atomic upsert, so concurrent requests on several replicas each get their own count) and gives it
back when the password was right. Parallel requests therefore cannot all slip past a limit while
their hashes are being verified. Names that do not exist are counted exactly like real ones, so
neither the answer nor the lock state says which usernames exist.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, delete, literal, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cloud.access.models import SOURCE_MAX, USERNAME_MAX, LoginThrottle
from cloud.models import UtcDateTime

__all__ = ["Decision", "Limits", "LockState", "account_key", "admit", "clear_account", "failed", "lock_states",
           "prune", "source_key", "succeeded"]

PAIR, SOURCE, ACCOUNT = "pair", "source", "account"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_KEY = ["scope", "account", "source"]
T = LoginThrottle


@dataclass(frozen=True, slots=True)
class Limits:
    pair: int
    """Failures of one account from one source before that pair is locked."""
    source: int
    """Failures from one source, whatever the accounts, before the source is throttled."""
    account: int
    """Failures on one account, whatever the sources, before it is locked for every source."""
    lockout: timedelta
    """How long a lock lasts; also how long a quiet counter is remembered."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What `admit` decided for one attempt."""

    check_password: bool
    """False: refused without looking at the password (a lock is in force)."""
    throttled_until: datetime | None = None
    """Set when the *source* is throttled: the caller answers 429, naming no account."""


@dataclass(frozen=True, slots=True)
class LockState:
    """An account's locks in force, for the admin's eyes."""

    everywhere_until: datetime | None
    """The account is locked for every source until then."""
    sources: tuple[tuple[str, datetime], ...]
    """(source, until) for each source the account is locked from."""

    @property
    def locked(self) -> bool:
        return self.everywhere_until is not None or bool(self.sources)

    def as_dict(self) -> dict[str, Any]:
        return {
            "locked_until": self.everywhere_until.isoformat() if self.everywhere_until else None,
            "locked_from": {src: until.isoformat() for src, until in self.sources},
        }


def source_key(host: str | None) -> str:
    """The counting key of a client address. An IPv6 client counts as its /64: that is one
    subscriber's allocation, so one attacker holds all of it and could otherwise rotate freely."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return _CONTROL.sub("?", host)[:SOURCE_MAX]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


def account_key(username: str) -> str:
    """The username as typed, storable on every backend (no control characters, bounded)."""
    return _CONTROL.sub("?", username)[:USERNAME_MAX]


def _key(scope: str, account: str, source: str) -> ColumnElement[bool]:
    return and_(T.scope == scope, T.account == account, T.source == source)


def _reserve(session: Session, scope: str, account: str, source: str, now: datetime, window: timedelta) -> tuple[int, datetime | None]:
    """Count one more failure on a counter unless it is locked; (failures, locked_until) after."""
    at = literal(now, UtcDateTime())
    locked = T.locked_until > at
    values = {"scope": scope, "account": account, "source": source, "failures": 1, "last_failure_at": now}
    counted = {
        "failures": case((locked, T.failures), (T.last_failure_at < now - window, 1), else_=T.failures + 1),
        "last_failure_at": case((locked, T.last_failure_at), else_=at),
    }
    # Both dialects spell an upsert the same way, from different classes.
    stmt: postgresql.Insert | sqlite.Insert
    if session.get_bind().dialect.name == "postgresql":
        stmt = postgresql.insert(T).values(values).on_conflict_do_update(index_elements=_KEY, set_=counted)
    else:
        stmt = sqlite.insert(T).values(values).on_conflict_do_update(index_elements=_KEY, set_=counted)
    failures, until = session.execute(stmt.returning(T.failures, T.locked_until)).one()
    return int(failures), until if until is not None and until > now else None


def _give_back(session: Session, scope: str, account: str, source: str) -> None:
    session.execute(update(T).where(_key(scope, account, source), T.failures > 0)
                    .values(failures=T.failures - 1))


def admit(session: Session, account: str, source: str, limits: Limits, now: datetime) -> Decision:
    """Reserve this attempt's failure on all three counters, or refuse it.

    A refused attempt keeps its count on the source (hammering a locked account from one address
    ends in that address being throttled) but not on the account, so a lock ends when it should.
    """
    failures, until = _reserve(session, SOURCE, "", source, now, limits.lockout)
    if until is not None:
        return Decision(check_password=False, throttled_until=until)
    if failures > limits.source:
        # Only reached past the limit by attempts in flight when `failed` set the throttle.
        return Decision(check_password=False, throttled_until=now + limits.lockout)
    refused = False
    reserved: list[tuple[str, str]] = []
    for scope, src, limit in ((PAIR, source, limits.pair), (ACCOUNT, "", limits.account)):
        failures, until = _reserve(session, scope, account, src, now, limits.lockout)
        if until is not None:
            refused = True  # locked: nothing was counted
        elif failures > limit:
            # Past the limit only while earlier attempts are still being checked: refused unchecked.
            _give_back(session, scope, account, src)
            refused = True
        else:
            reserved.append((scope, src))
    if refused:
        for scope, src in reserved:
            _give_back(session, scope, account, src)
        return Decision(check_password=False)
    return Decision(check_password=True)


def prune(session: Session, limits: Limits, now: datetime) -> None:
    """Forget counters nobody has touched for a lockout period (unknown names' included).

    Run in a transaction of its own, before `admit`'s: holding these rows while reserving others
    could close a wait cycle with another sign-in. Rows someone holds are skipped, not waited for.
    """
    stale = (select(T.id).where(T.last_failure_at < now - limits.lockout,
                                or_(T.locked_until.is_(None), T.locked_until <= now))
             .limit(500).with_for_update(skip_locked=True))
    ids = list(session.scalars(stale))
    if ids:
        session.execute(delete(T).where(T.id.in_(ids)))


def succeeded(session: Session, account: str, source: str) -> None:
    """The password was right: the pair starts afresh, the others get their reservation back."""
    _give_back(session, SOURCE, "", source)
    session.execute(delete(T).where(_key(PAIR, account, source)))
    _give_back(session, ACCOUNT, account, "")


def failed(session: Session, account: str, source: str, limits: Limits, now: datetime) -> list[tuple[str, str, datetime]]:
    """The reserved failure stands; lock what reached its limit. Returns the locks this attempt set
    as (scope, key, until): set by exactly one transaction even when replicas race."""
    until = now + limits.lockout
    newly: list[tuple[str, str, datetime]] = []
    for scope, acc, src, limit in ((SOURCE, "", source, limits.source), (PAIR, account, source, limits.pair),
                                   (ACCOUNT, account, "", limits.account)):
        locked = session.execute(
            update(T)
            .where(_key(scope, acc, src), T.failures >= limit,
                   or_(T.locked_until.is_(None), T.locked_until <= now))
            .values(locked_until=until, failures=0)
            .returning(T.id)
        ).first()
        if locked is not None:
            newly.append((scope, src if scope == SOURCE else acc, until))
    return newly


def lock_states(session: Session, accounts: Iterable[str], now: datetime) -> dict[str, LockState]:
    """The locks in force of each of `accounts` (absent: not locked)."""
    names = list(accounts)
    rows = session.execute(
        select(T.scope, T.account, T.source, T.locked_until)
        .where(T.scope.in_([PAIR, ACCOUNT]), T.account.in_(names), T.locked_until > now)
        .order_by(T.source)
    ).all() if names else []
    everywhere: dict[str, datetime] = {}
    sources: dict[str, list[tuple[str, datetime]]] = {}
    for scope, acc, src, until in rows:
        assert until is not None  # selected by locked_until > now
        if scope == ACCOUNT:
            everywhere[acc] = until
        else:
            sources.setdefault(acc, []).append((src, until))
    return {a: LockState(everywhere.get(a), tuple(sources.get(a, ()))) for a in {*everywhere, *sources}}


def clear_account(session: Session, account: str) -> None:
    """Forget every count and lock of `account` (per source and everywhere); the sources' own
    throttles stay, since they are about the addresses, not this account."""
    session.execute(delete(T).where(T.scope.in_([PAIR, ACCOUNT]), T.account == account))
