"""Reading a scanned code on the box, for the offline cache only (the cloud's reading is the one that
counts).

`read_code` is the single place the box interprets a code's content. It is a stop-gap over biip
until the project's `gs1` facade can read every form (element strings, HRI, Digital Link, EPC
URNs): at that point this function's body becomes one call to the facade and nothing else changes.
"""

from __future__ import annotations

from datetime import date

from broker.payloads import ParsedCode
from gs1 import GtinError, normalise_gtin

__all__ = ["GS1_AIM", "CodeError", "read_code", "split_aim"]

GS1_AIM = frozenset({"]d2", "]Q3", "]C1", "]e0", "]J1"})
"""AIM symbology identifiers that announce GS1 content (FNC1 in first position)."""


class CodeError(ValueError):
    """A code the box cannot read; the message says what is wrong with it."""


def split_aim(code: str) -> tuple[str | None, str]:
    """(AIM identifier, content) of a code as a scanner sent it (`]d2010950…` → `]d2`, `010950…`)."""
    if len(code) >= 3 and code[0] == "]" and code[1].isalpha() and code[2].isalnum():
        return code[:3], code[3:]
    return None, code


def read_code(code: str, symbology: str | None = None) -> ParsedCode:
    """The unit (or product) a scanned code names. `symbology` is the AIM identifier when known.

    Raises `CodeError` naming the problem (bad check digit, bad AI, no GTIN)."""
    from biip import ParseError, parse
    from biip.gs1_messages import GS1Message

    aim, text = split_aim(code.strip())
    aim = aim or (symbology if symbology and symbology.startswith("]") else None)
    if text.startswith("urn:epc:id:"):
        return ParsedCode(form="epc_urn", epc=text)
    form = "element_string"
    try:
        if text.startswith("("):
            form = "hri"
            message = GS1Message.parse_hri(text)
        elif text.startswith(("http://", "https://")):
            form = "digital_link"
            link = parse(text).gs1_digital_link_uri
            if link is None:
                raise CodeError(f"{text[:80]!r} is a URL but not a GS1 Digital Link (expected /01/<GTIN>/…)")
            message = link.as_gs1_message()
        elif text.isdigit() and len(text) in (8, 12, 13) and aim not in GS1_AIM:
            return ParsedCode(form="ean", gtin=normalise_gtin(text))
        else:
            result = parse((aim or "") + text)
            if result.gs1_message is None:
                raise CodeError(result.gs1_message_error or f"{text[:80]!r} is not a GS1 element string")
            message = result.gs1_message
    except (ParseError, GtinError) as exc:
        raise CodeError(str(exc)) from None
    fields: dict[str, str] = {}
    expiry: date | None = None
    for element in message.element_strings:
        if problem := element.gtin_error or element.sscc_error:
            raise CodeError(problem)
        fields.setdefault(element.ai.ai, element.value)
        if element.ai.ai == "17":
            expiry = element.date
    gtin, sscc = fields.get("01"), fields.get("00")
    if gtin is None and sscc is None:
        raise CodeError(f"{text[:80]!r} holds no GTIN (AI 01) or SSCC (AI 00)")
    return ParsedCode(form=form, gtin=gtin, serial=fields.get("21"), batch=fields.get("10"), expiry=expiry, sscc=sscc)
