"""`broker.pins`: which PINs are refused and why, the hash format, and the bounds a box enforces on
a stored hash's parameters (a forged roster must not make a box burn CPU or memory)."""

from __future__ import annotations

import pytest

from broker.pins import (
    DEFAULT,
    PinHashError,
    PinParams,
    PinProblem,
    WeakPin,
    check_pin,
    hash_pin,
    parse_hash,
    verify_pin,
)

REFUSED = [
    ("", PinProblem.FORMAT),
    ("123", PinProblem.FORMAT),
    ("123456789", PinProblem.FORMAT),
    ("12 34", PinProblem.FORMAT),
    ("\uff11\uff12\uff13\uff15", PinProblem.FORMAT),  # full-width digits
    ("0000", PinProblem.SAME_DIGIT),
    ("99999999", PinProblem.SAME_DIGIT),
    ("0123", PinProblem.RUN),
    ("6789", PinProblem.RUN),
    ("7890", PinProblem.RUN),  # a run wraps round the keypad too
    ("3210", PinProblem.RUN),
    ("87654321", PinProblem.RUN),
]
ACCEPTED = ["2580", "1357", "1123", "0912", "13579024", "7410"]


@pytest.mark.parametrize(("pin", "problem"), REFUSED)
def test_refused(pin: str, problem: PinProblem) -> None:
    with pytest.raises(WeakPin) as err:
        check_pin(pin)
    assert err.value.problem is problem
    assert pin == "" or pin not in str(err.value)


@pytest.mark.parametrize("pin", ACCEPTED)
def test_accepted(pin: str) -> None:
    check_pin(pin)


def test_hash_round_trip_salted_and_self_describing() -> None:
    a, b = hash_pin("2580"), hash_pin("2580")
    assert a != b and a.startswith(f"scrypt${DEFAULT.log2_n}${DEFAULT.r}${DEFAULT.p}$")
    assert verify_pin("2580", a) and verify_pin("2580", b)
    assert not verify_pin("2581", a) and not verify_pin("25800", a) and not verify_pin("abcd", a)
    # Raised parameters verify with what the string says, not with the defaults.
    raised = hash_pin("2580", PinParams(15, 8, 1))
    assert raised.startswith("scrypt$15$8$1$") and verify_pin("2580", raised)


BAD_HASHES = [
    ("scrypt$22$8$1$c2FsdHNhbHQ=$" + "A" * 43 + "=", "log2 n = 22 is outside 12..16"),
    ("scrypt$14$64$1$c2FsdHNhbHQ=$" + "A" * 43 + "=", "r = 64 is outside 1..16"),
    ("scrypt$14$8$9$c2FsdHNhbHQ=$" + "A" * 43 + "=", "p = 9 is outside 1..4"),
    ("scrypt$16$16$1$c2FsdHNhbHQ=$" + "A" * 43 + "=", "cost more than a box accepts (memory 129 MiB of at most 65"),
    ("scrypt$16$8$4$c2FsdHNhbHQ=$" + "A" * 43 + "=", "work 2097152 of at most 1048576"),
    ("scrypt$14$8$1$c2FsdA==$" + "A" * 43 + "=", "4-byte salt"),
    ("scrypt$14$8$1$c2FsdHNhbHQ=$QUJD", "3-byte hash"),
    ("scrypt$14$8$1$c2FsdHNhbHQ$" + "A" * 43 + "=", "not valid base64"),
    ("bcrypt$2b$12$abc", "is not 'scrypt$<log2 n>$<r>$<p>$<salt>$<hash>'"),
]


@pytest.mark.parametrize(("stored", "why"), BAD_HASHES)
def test_out_of_bounds_or_malformed_hash(stored: str, why: str) -> None:
    with pytest.raises(PinHashError) as err:
        parse_hash(stored)
    assert why in str(err.value)
    with pytest.raises(PinHashError):
        verify_pin("2580", stored)
