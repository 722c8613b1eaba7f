"""The fast path of `parse_code` (GTIN + serial forms read without biip) agrees with biip's.

Hypothesis builds element strings and HRI strings from AIs (01) (17) (10) (21), valid and broken
(wrong check digits, impossible dates, day 00, values too long or outside character set 82, extra
AIs, duplicated AIs, stray separators); each is read by `parse_code` and by the biip path alone,
and both must give the same `Code` or the same refusal."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gs1 import GS, Code, CodeError, _codes, check_digit, parse_code

CSET82 = "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"


def _slow(raw: str) -> Code | CodeError:
    """What `parse_code` gave before the fast path: biip for every element string and HRI."""
    saved = _codes._fast_pairs, _codes._fast_hri
    _codes._fast_pairs = _codes._fast_hri = lambda _raw: None  # type: ignore[assignment]
    try:
        return parse_code(raw)
    except CodeError as exc:
        return exc
    finally:
        _codes._fast_pairs, _codes._fast_hri = saved


def _fast(raw: str) -> Code | CodeError:
    try:
        return parse_code(raw)
    except CodeError as exc:
        return exc


def _same(raw: str) -> None:
    fast, slow = _fast(raw), _slow(raw)
    if isinstance(slow, CodeError):
        assert isinstance(fast, CodeError), f"{raw!r}: biip refused ({slow}), the fast path read {fast}"
        assert (str(fast), fast.reason, fast.ai) == (str(slow), slow.reason, slow.ai)
    else:
        assert fast == slow, f"{raw!r}"


digits = st.text(string.digits, min_size=13, max_size=13)


@st.composite
def gtin(draw: st.DrawFn) -> str:
    body = draw(digits)
    good = check_digit(body)
    return body + draw(st.sampled_from([good, good, good, str((int(good) + 1) % 10)]))


@st.composite
def yymmdd(draw: st.DrawFn) -> str:
    return (f"{draw(st.integers(0, 99)):02d}{draw(st.integers(0, 13)):02d}"
            f"{draw(st.sampled_from([0, 1, 15, 28, 29, 30, 31, 32])):02d}")


value = st.one_of(st.text(CSET82, min_size=1, max_size=20), st.text(CSET82, min_size=0, max_size=24),
                  st.text(CSET82 + " é\t#", min_size=1, max_size=8))


@st.composite
def elements(draw: st.DrawFn) -> list[tuple[str, str]]:
    pairs = [("01", draw(gtin())), ("21", draw(value))]
    if draw(st.booleans()):
        pairs.append(("17", draw(yymmdd())))
    if draw(st.booleans()):
        pairs.append(("10", draw(value)))
    if draw(st.integers(0, 5)) == 0:
        pairs.append(draw(st.sampled_from([("11", "260101"), ("30", "12"), ("21", "DUP"), ("01", "09506000134352"),
                                           ("240", "X1"), ("99", "ZZ")])))
    if draw(st.integers(0, 9)) == 0:
        pairs = [p for p in pairs if p[0] != "01"]
    return draw(st.permutations(pairs))


VARIABLE = {"10", "21", "30", "240", "99"}


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(elements(), st.sampled_from(["", "]d2", "]Q3", "]C1"]), st.booleans())
@example([("01", "09506000134352"), ("17", "270100"), ("10", "L42"), ("21", "ABC123")], "]d2", False)
@example([("01", "09506000134352"), ("21", "A" * 21)], "", False)
def test_element_strings_agree(pairs: list[tuple[str, str]], symbology: str, extra_gs: bool) -> None:
    out = ""
    for i, (ai, v) in enumerate(pairs):
        out += ai + v
        if (ai in VARIABLE and i < len(pairs) - 1) or extra_gs:
            out += GS
    _same(symbology + out)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(elements())
@example([("01", "09506000134352"), ("17", "311200"), ("21", "A(1)")])
def test_hri_agrees(pairs: list[tuple[str, str]]) -> None:
    _same("".join(f"({ai}){v}" for ai, v in pairs))


@pytest.mark.parametrize("raw", [
    "0109506000134352" "17270131" "10L42" + GS + "21ABC123",
    "(01)09506000134352(17)270131(10)L42(21)ABC123",
])
def test_the_common_forms_take_the_fast_path(raw: str) -> None:
    """A code the fast path reads never reaches biip (else the hot path lost its speed silently)."""
    seen = []
    original = _codes._from_elements

    def spy(*args: object) -> Code:
        seen.append(args)
        return original(*args)  # type: ignore[arg-type]

    _codes._from_elements = spy  # type: ignore[assignment]
    try:
        code = parse_code(raw)
    finally:
        _codes._from_elements = original
    assert code.serial == "ABC123" and code.epc == "urn:epc:id:sgtin:95060001343.05.ABC123"
    assert seen == []


def test_century_window() -> None:
    """GS1 General Specifications 7.12: 49 years back, 50 ahead of the current year."""
    from datetime import date

    assert _codes._century(76, date(2026, 1, 1)) == 2000
    assert _codes._century(77, date(2026, 1, 1)) == 1900
    assert _codes._century(1, date(2099, 1, 1)) == 2100
