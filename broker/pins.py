"""Clerks' PINs: the rule a PIN must meet, and the hash format that travels in a store's roster.

A PIN is short by nature (4-8 digits), so what protects it is cost, not length: the hash is
scrypt (standard library), salted per clerk, with its parameters written into the stored string
(`scrypt$<log2 n>$<r>$<p>$<salt b64>$<hash b64>`) so that they can be raised later without
invalidating the PINs already set. The box only accepts parameters within `BOUNDS`: a forged or
corrupt roster cannot make it burn minutes of CPU or hundreds of megabytes per sign-in.

The hash is part of the bus contract (the cloud makes it, the box checks it), hence here.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import itertools
import re
import secrets
from dataclasses import dataclass

__all__ = [
    "BOUNDS",
    "DEFAULT",
    "PIN_MAX",
    "PIN_MIN",
    "PinHashError",
    "PinParams",
    "PinProblem",
    "WeakPin",
    "check_pin",
    "hash_pin",
    "parse_hash",
    "verify_pin",
]

PIN_MIN = 4
PIN_MAX = 8
_PIN = re.compile(r"[0-9]+")
_SALT_BYTES = 16
_KEY_BYTES = 32
_HASH = re.compile(r"scrypt\$([0-9]{1,2})\$([0-9]{1,3})\$([0-9]{1,2})\$([A-Za-z0-9+/=]{1,64})\$([A-Za-z0-9+/=]{1,64})")


@dataclass(frozen=True, slots=True)
class PinParams:
    """scrypt's cost parameters."""

    log2_n: int
    """CPU and memory cost: n = 2**log2_n."""
    r: int
    """Block size."""
    p: int
    """Parallelism."""

    @property
    def memory(self) -> int:
        """Bytes scrypt needs (128 · n · r), plus a margin for OpenSSL's bookkeeping."""
        return 128 * (1 << self.log2_n) * self.r + 1024 * 1024


DEFAULT = PinParams(log2_n=14, r=8, p=1)
"""~16 MiB and ~50 ms on a laptop core, a few hundred ms on a Pi-class box: fine once per sign-in,
ruinous for someone trying 10,000 PINs from a stolen roster."""


@dataclass(frozen=True, slots=True)
class _Bounds:
    log2_n: tuple[int, int] = (12, 16)
    r: tuple[int, int] = (1, 16)
    p: tuple[int, int] = (1, 4)
    max_memory: int = 64 * 1024 * 1024 + 1024 * 1024
    max_work: int = (1 << 16) * 8 * 2
    """n · r · p: twice the cost of n = 2**16, r = 8, p = 1."""


BOUNDS = _Bounds()
"""What a box accepts in a roster: room to raise `DEFAULT` a few steps, not to exhaust the box."""


class PinProblem(enum.StrEnum):
    FORMAT = "format"
    SAME_DIGIT = "same_digit"
    RUN = "run"


class WeakPin(ValueError):
    """A PIN refused when it is set; `problem` says which rule, the message says it in words (and
    never repeats the PIN)."""

    def __init__(self, problem: PinProblem, message: str) -> None:
        super().__init__(message)
        self.problem = problem


class PinHashError(ValueError):
    """A stored PIN hash that is malformed or whose parameters are outside `BOUNDS`."""


def check_pin(pin: str) -> None:
    """Raise `WeakPin` unless `pin` is 4-8 digits and not trivially guessable."""
    if not (PIN_MIN <= len(pin) <= PIN_MAX) or not _PIN.fullmatch(pin) or not pin.isascii():
        raise WeakPin(PinProblem.FORMAT, f"a PIN is {PIN_MIN} to {PIN_MAX} digits (0-9), nothing else: "
                                         f"got {len(pin)} character(s)")
    if len(set(pin)) == 1:
        raise WeakPin(PinProblem.SAME_DIGIT, "a PIN of one digit repeated (like 1111) is too easy to guess: choose another")
    steps = {(int(b) - int(a)) % 10 for a, b in itertools.pairwise(pin)}
    if steps in ({1}, {9}):
        raise WeakPin(PinProblem.RUN, "a PIN of consecutive digits, up or down (like 1234 or 9876), is too easy to "
                                      "guess: choose another")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def hash_pin(pin: str, params: PinParams = DEFAULT, *, salt: bytes | None = None) -> str:
    """The stored form of `pin` (checked with `check_pin` first: raises `WeakPin`)."""
    check_pin(pin)
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    key = hashlib.scrypt(pin.encode(), salt=salt, n=1 << params.log2_n, r=params.r, p=params.p,
                         maxmem=params.memory, dklen=_KEY_BYTES)
    return f"scrypt${params.log2_n}${params.r}${params.p}${_b64(salt)}${_b64(key)}"


def parse_hash(stored: str) -> tuple[PinParams, bytes, bytes]:
    """(params, salt, key) of a stored hash; `PinHashError` if it is malformed or out of `BOUNDS`."""
    m = _HASH.fullmatch(stored)
    if m is None:
        raise PinHashError("PIN hash is not 'scrypt$<log2 n>$<r>$<p>$<salt>$<hash>' (base64 salt and hash)")
    params = PinParams(int(m[1]), int(m[2]), int(m[3]))
    for name, (lo, hi) in (("log2 n", BOUNDS.log2_n), ("r", BOUNDS.r), ("p", BOUNDS.p)):
        value = getattr(params, name.replace("log2 n", "log2_n"))
        if not lo <= value <= hi:
            raise PinHashError(f"PIN hash parameter {name} = {value} is outside {lo}..{hi}")
    work = (1 << params.log2_n) * params.r * params.p
    if params.memory > BOUNDS.max_memory or work > BOUNDS.max_work:
        raise PinHashError(f"PIN hash parameters n=2^{params.log2_n}, r={params.r}, p={params.p} cost more than a "
                           f"box accepts (memory {params.memory // 2**20} MiB of at most {BOUNDS.max_memory // 2**20}, "
                           f"work {work} of at most {BOUNDS.max_work})")
    try:
        salt, key = base64.b64decode(m[4], validate=True), base64.b64decode(m[5], validate=True)
    except ValueError:
        raise PinHashError("PIN hash salt or hash is not valid base64") from None
    if len(salt) < 8 or len(key) != _KEY_BYTES:
        raise PinHashError(f"PIN hash has a {len(salt)}-byte salt and a {len(key)}-byte hash: expected at least 8 "
                           f"and exactly {_KEY_BYTES}")
    return params, salt, key


def verify_pin(pin: str, stored: str) -> bool:
    """Whether `pin` matches `stored` (constant-time compare). Slow by design: call it off any event
    loop. Raises `PinHashError` for a stored hash `parse_hash` refuses."""
    params, salt, key = parse_hash(stored)
    if not (PIN_MIN <= len(pin) <= PIN_MAX) or not pin.isascii() or not _PIN.fullmatch(pin):
        return False
    got = hashlib.scrypt(pin.encode(), salt=salt, n=1 << params.log2_n, r=params.r, p=params.p,
                         maxmem=params.memory, dklen=_KEY_BYTES)
    return hmac.compare_digest(got, key)
