"""Reading a scanned code on the box, for the offline cache only (the cloud's reading is the one that
counts): the project's `gs1` facade, as the cloud uses it, into the contract's `ParsedCode`.
"""

from __future__ import annotations

from broker.payloads import ParsedCode
from gs1 import CodeError, parse_code

__all__ = ["GS1_AIM", "CodeError", "read_code", "split_aim"]

GS1_AIM = frozenset({"]d2", "]Q3", "]C1", "]e0", "]J1"})
"""AIM symbology identifiers that announce GS1 content (FNC1 in first position)."""


def split_aim(code: str) -> tuple[str | None, str]:
    """(AIM identifier, content) of a code as a scanner sent it (`]d2010950…` → `]d2`, `010950…`)."""
    if len(code) >= 3 and code[0] == "]" and code[1].isalpha() and code[2].isalnum():
        return code[:3], code[3:]
    return None, code


def read_code(code: str, symbology: str | None = None) -> ParsedCode:
    """The unit (or product) a scanned code names, as the cloud reads it (the same `gs1` facade).
    `symbology` is the AIM identifier when the scanner reported it apart from the content.

    Raises `CodeError` naming the AI, what was expected and what was found."""
    aim, text = split_aim(code.strip())
    aim = aim or (symbology if symbology and symbology.startswith("]") else None)
    read = parse_code((aim or "") + text)
    return ParsedCode(form=read.form, gtin=read.gtin, serial=read.serial, batch=read.batch, expiry=read.expiry,
                      sscc=read.sscc, epc=read.epc)
