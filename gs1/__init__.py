"""GS1 identification keys for the whole project: one facade over biip.

Imports nothing else of omnishelf, so the cloud, the box and the tests share it.

- GTINs: `normalise_gtin`, `is_valid_gtin`, `element_string` (the catalogue, the box's generator);
  `check_digit` of any GS1 key's body (GTIN, SSCC, GLN; a `CodeError` for anything but ASCII digits).
- Any scanned code: `parse_code(text) -> Code` reads element strings (GS/FNC1, with or without a
  symbology identifier such as `]d2` `]Q3` `]C1` `]e0`), parenthesised HRI, GS1 Digital Link URIs on
  any domain, EPC URNs (sgtin, sscc, sgln, lgtin) and plain EAN/UPC. `CodeError.reason` (a
  `CodeErrorReason`) says what kind of problem; the message names the AI, the expectation and what
  was found. A printed expiry day 00 is the month's last day.
- Writing back: `to_element_string`, `to_hri`, `to_digital_link`, `sgtin_urn`, `sscc_urn`,
  `sgln_urn`, `lgtin_urn`; `parse_code` of each gives the same `Code` back (round trips).

Importing `gs1` is cheap: biip and its prefix tables load on the first parse.
"""

from __future__ import annotations

from datetime import date

from gs1._codes import (
    Code,
    CodeError,
    CodeErrorReason,
    Form,
    check_digit,
    lgtin_urn,
    parse_code,
    parse_epc_urn,
    sgln_urn,
    sgtin_urn,
    sscc_urn,
    to_digital_link,
    to_element_string,
    to_hri,
)

__all__ = [
    "GS",
    "Code",
    "CodeError",
    "CodeErrorReason",
    "Form",
    "GtinError",
    "check_digit",
    "element_string",
    "is_valid_gtin",
    "lgtin_urn",
    "normalise_gtin",
    "parse_code",
    "parse_epc_urn",
    "sgln_urn",
    "sgtin_urn",
    "sscc_urn",
    "to_digital_link",
    "to_element_string",
    "to_hri",
]

GS = "\x1d"
"""FNC1 as transmitted by scanners: ends a variable-length element that is not last."""


class GtinError(ValueError):
    """Not a usable GTIN; the message names the value, what was expected and what was found."""


def normalise_gtin(value: str) -> str:
    """A GTIN-8, -12, -13 or -14 as its 14-digit form; `GtinError` saying what is wrong otherwise."""
    code = value.strip()
    if not (code.isascii() and code.isdigit()) or len(code) not in (8, 12, 13, 14):
        raise GtinError(f"GTIN {code!r} must be 8, 12, 13 or 14 digits")
    if check_digit(code[:-1]) == code[-1]:
        # The common case, valid, without biip's full parse (a quarter of a bulk import's time).
        return code.zfill(14)
    # Imported here: biip's GS1 prefix tables cost ~14 MB, a quarter of a box's memory budget,
    # and most of the box never needs them.
    from biip import ParseError
    from biip.gtin import Gtin

    try:
        return Gtin.parse(code).as_gtin_14()
    except ParseError as exc:
        raise GtinError(str(exc)) from None


def is_valid_gtin(value: str) -> bool:
    try:
        normalise_gtin(value)
    except GtinError:
        return False
    return True


def element_string(gtin: str, serial: str, *, expiry: date | None = None, lot: str | None = None) -> str:
    """`01 GTIN [17 YYMMDD] [10 lot GS] 21 serial`, as a 2D scanner transmits it (the serial comes
    last, so it needs no separator)."""
    code = normalise_gtin(gtin)
    out = "01" + code
    if expiry is not None:
        out += "17" + expiry.strftime("%y%m%d")
    if lot is not None:
        out += "10" + lot + GS
    return out + "21" + serial
