"""The project's GS1 facade (check digits, GTIN forms, element strings)."""

from __future__ import annotations

from datetime import date

import pytest

from gs1 import GS, CodeError, CodeErrorReason, GtinError, check_digit, element_string, is_valid_gtin, normalise_gtin


@pytest.mark.parametrize(
    ("value", "gtin14"),
    [("6901234567892", "06901234567892"), ("96385074", "00000096385074"), ("036000291452", "00036000291452"),
     (" 10614141000415 ", "10614141000415")],
)
def test_normalise(value: str, gtin14: str) -> None:
    assert normalise_gtin(value) == gtin14
    assert is_valid_gtin(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [("6901234567893", "Invalid GTIN check digit for '6901234567893': Expected 2, got 3."),
     ("12345", "GTIN '12345' must be 8, 12, 13 or 14 digits"),
     ("69012345678a2", "GTIN '69012345678a2' must be 8, 12, 13 or 14 digits")],
)
def test_bad_gtins_say_why(value: str, message: str) -> None:
    with pytest.raises(GtinError) as info:
        normalise_gtin(value)
    assert str(info.value) == message
    assert not is_valid_gtin(value)


def test_check_digit() -> None:
    assert check_digit("690123456789") == "2"
    assert check_digit("1061414100041") == "5"
    assert check_digit("37610425002123456") == "9"  # an SSCC's body, 17 digits
    for bad in ("12a", "\uff11\uff12", ""):  # full-width digits are digits to str.isdigit, not to GS1
        with pytest.raises(CodeError) as info:
            check_digit(bad)
        assert info.value.reason is CodeErrorReason.CHARSET and str(info.value) == f"GS1 keys are digits only, got {bad!r}"


def test_element_string() -> None:
    code = element_string("09506000134352", "ABC123", expiry=date(2027, 1, 31), lot="L42")
    assert code == "0109506000134352" + "17270131" + "10L42" + GS + "21ABC123"
