"""GS1 element strings as a 2D scanner decodes them (what the simulator scans).

Only what a plausible scan needs: GTIN-14 with its check digit, and the AI layout where
fixed-length elements come first and a variable-length one is closed by the FNC1 separator (GS)
unless it is last.
"""

from __future__ import annotations

from datetime import date

__all__ = ["GS", "check_digit", "element_string", "gtin14", "is_valid_gtin"]

GS = "\x1d"
"""FNC1 as transmitted by scanners: ends a variable-length element."""


def check_digit(body: str) -> str:
    """The GS1 mod-10 check digit of `body` (weights 3,1,3,… from the right)."""
    if not body.isdigit():
        raise ValueError(f"GS1 numbers are digits only, got {body!r}")
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return str((10 - total % 10) % 10)


def gtin14(body13: str) -> str:
    """A GTIN-14 from its first 13 digits (indicator, company prefix, item reference)."""
    if len(body13) != 13:
        raise ValueError(f"a GTIN-14 body has 13 digits, got {len(body13)}")
    return body13 + check_digit(body13)


def is_valid_gtin(gtin: str) -> bool:
    return len(gtin) in (8, 12, 13, 14) and gtin.isdigit() and check_digit(gtin[:-1]) == gtin[-1]


def element_string(gtin: str, serial: str, *, expiry: date | None = None, lot: str | None = None) -> str:
    """`01 GTIN [17 YYMMDD] [10 lot GS] 21 serial`, as scanned (serial last needs no GS)."""
    if not is_valid_gtin(gtin) or len(gtin) != 14:
        raise ValueError(f"{gtin!r} is not a valid GTIN-14")
    out = "01" + gtin
    if expiry is not None:
        out += "17" + expiry.strftime("%y%m%d")
    if lot is not None:
        out += "10" + lot + GS
    return out + "21" + serial
