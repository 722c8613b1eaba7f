"""Reading a scanned code in any form into one `Code` (biip does the GS1 parsing; this module adds
the forms biip lacks, EPC URNs, and error messages a caller can branch on)."""

from __future__ import annotations

import calendar
import enum
import functools
import re
from dataclasses import dataclass
from datetime import date
from urllib.parse import quote, unquote

GS = "\x1d"
_GS_SYMBOL = "\u241d"
"""'␝': some keyboard-wedge scanners send the picture of GS instead of the control character."""

_SYMBOLOGY = re.compile(r"^\][A-Za-z][0-9A-Za-z]")
_URN_ESCAPE = '"%&/<>?'
"""Characters the EPC Tag Data Standard percent-encodes inside URN components."""
_URN_ESCAPE_SET = frozenset(_URN_ESCAPE)


class CodeErrorReason(enum.StrEnum):
    """Why a code was refused (a caller branches on this; the message says it to a person)."""

    EMPTY = "empty"
    UNKNOWN_AI = "unknown_ai"
    LENGTH = "length"
    CHARSET = "charset"
    CHECK_DIGIT = "check_digit"
    DATE = "date"
    NO_KEY = "no_key"
    """Well-formed, but carries neither a GTIN nor an SSCC."""
    URI = "uri"
    URN = "urn"
    FORMAT = "format"


class CodeError(ValueError):
    """A code that cannot be read; `str()` names the AI, what was expected and what was found."""

    def __init__(self, reason: CodeErrorReason, message: str, *, ai: str | None = None,
                 expected: str | None = None, found: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.ai = ai
        """The Application Identifier at fault ('17'), when one is."""
        self.expected = expected
        self.found = found


class Form(enum.StrEnum):
    """How a code was written (the values are `broker.payloads.ParsedCode.form`)."""

    ELEMENT_STRING = "element_string"
    HRI = "hri"
    DIGITAL_LINK = "digital_link"
    EPC_URN = "epc_urn"
    EAN = "ean"


@dataclass(frozen=True, slots=True)
class Code:
    """A scanned code read into the unit's identity and its printed attributes. Field for field
    the contract's `ParsedCode` (plus `symbology`, `gln`, `extension`), so the cloud and the box
    convert it with `ParsedCode(**dataclasses.asdict(code))`."""

    form: str
    """A `Form` value."""
    gtin: str | None = None
    """14 digits (shorter GTINs are zero-padded)."""
    serial: str | None = None
    """AI (21), as printed (not URN-escaped)."""
    batch: str | None = None
    """AI (10)."""
    expiry: date | None = None
    """AI (17); a printed day 00 is the month's last day."""
    sscc: str | None = None
    """AI (00), 18 digits: a case or pallet."""
    epc: str | None = None
    """The pure-identity EPC URN (`urn:epc:id:sgtin:…`, `…:sscc:…`, `…:sgln:…`), or
    `urn:epc:class:lgtin:…` for a GTIN with a batch and no serial; None for a bare product code."""
    symbology: str | None = None
    """The AIM symbology identifier the scanner sent (']d2', ']Q3', ']C1', ']e0', …)."""
    gln: str | None = None
    """AI (414) / SGLN: a location's 13-digit GLN."""
    extension: str | None = None
    """AI (254): a GLN extension (SGLN's third component; None for '0')."""

    @property
    def is_unit(self) -> bool:
        """GTIN + serial: one item, one code (what traceability follows)."""
        return self.gtin is not None and self.serial is not None


def _err(reason: CodeErrorReason, message: str, **kw: str | None) -> CodeError:
    return CodeError(reason, message, **kw)


def check_digit(body: str) -> str:
    """The GS1 mod-10 check digit of `body`, a key without its check digit (weights 3,1,3,… from
    the right). The project's one implementation (`gs1.check_digit`)."""
    if not (body.isascii() and body.isdigit()):
        raise _err(CodeErrorReason.CHARSET, f"GS1 keys are digits only, got {body!r}", found=body)
    backwards = body[::-1]
    total = 3 * sum(map(int, backwards[0::2])) + sum(map(int, backwards[1::2]))
    return str(-total % 10)


# --- element strings: diagnosis of what biip refused ------------------------------------------

_NAMES = {"00": "SSCC", "01": "GTIN", "02": "GTIN", "10": "batch", "11": "production date", "13": "packaging date",
          "15": "best before date", "17": "expiry", "21": "serial", "414": "GLN", "254": "GLN extension"}
_CSET82 = re.compile(r"""^[!"%&'()*+,\-./0-9:;<=>?A-Z_a-z]*$""")


def _format_parts(fmt: str) -> list[tuple[str, int, int]]:
    """'N2+X..20' → [('X', 1, 20)] (the AI itself dropped); 'N2+N6' → [('N', 6, 6)]."""
    out: list[tuple[str, int, int]] = []
    for part in fmt.split("+")[1:]:
        m = re.fullmatch(r"\[?([NXYZ])(\.\.)?(\d+)\]?", part)
        if m is None:
            continue
        n = int(m.group(3))
        out.append((m.group(1), 1 if m.group(2) else n, n))
    return out


def _date_problem(value: str) -> str | None:
    if not (len(value) == 6 and value.isdigit()):
        return "6 digits"
    month, day = int(value[2:4]), int(value[4:6])
    if not 1 <= month <= 12:
        return "a month 01-12"
    year = 2000 + int(value[:2])
    if day > calendar.monthrange(year, month)[1]:
        return f"a day 00-{calendar.monthrange(year, month)[1]:02d} (00 = end of month)"
    return None


def _diagnose(body: str, biip_message: str) -> CodeError:
    """Walk the element string AI by AI, as biip did, and say what the first bad element is."""
    from biip import ParseError
    from biip.gs1_application_identifiers import GS1ApplicationIdentifier

    rest = body
    while rest:
        if rest[0] == GS:
            rest = rest[1:]
            continue
        try:
            ai = GS1ApplicationIdentifier.extract(rest)
        except ParseError:
            head = rest[:4]
            return _err(CodeErrorReason.UNKNOWN_AI, f"No GS1 Application Identifier starts {head!r} in {body!r}",
                        expected="a GS1 Application Identifier", found=head)
        rest = rest[len(ai.ai):]
        parts = _format_parts(ai.format)
        if ai.separator_required:
            value, _, rest = rest.partition(GS)
        else:
            value, rest = rest[: sum(p[2] for p in parts)], rest[sum(p[2] for p in parts):]
        name = f"AI ({ai.ai}) {_NAMES.get(ai.ai, ai.data_title)}"
        low, high = sum(p[1] for p in parts), sum(p[2] for p in parts)
        digits_only = all(p[0] == "N" for p in parts)
        if digits_only and not value.isdigit():
            return _err(CodeErrorReason.CHARSET, f"{name}: expected digits, found {value!r}",
                        ai=ai.ai, expected="digits", found=value)
        if not low <= len(value) <= high:
            want = f"{high}" if low == high else f"{low} to {high}"
            return _err(CodeErrorReason.LENGTH,
                        f"{name}: expected {want} characters, found {len(value)} ({value!r})",
                        ai=ai.ai, expected=want, found=value)
        if not digits_only and not _CSET82.match(value):
            bad = next(c for c in value if not _CSET82.match(c))
            return _err(CodeErrorReason.CHARSET,
                        f"{name}: expected GS1 character set 82, found {bad!r} in {value!r}",
                        ai=ai.ai, expected="GS1 character set 82", found=value)
        if ai.ai in ("11", "13", "15", "16", "17") and (problem := _date_problem(value)):
            return _err(CodeErrorReason.DATE, f"{name}: expected a date YYMMDD with {problem}, found {value!r}",
                        ai=ai.ai, expected="YYMMDD", found=value)
        if ai.ai in ("00", "01", "02", "414") and check_digit(value[:-1]) != value[-1]:
            return _check_error(ai.ai, value)
    return _err(CodeErrorReason.FORMAT, f"Unreadable GS1 element string {body!r}: {biip_message}", found=body)


def _check_error(ai: str, value: str) -> CodeError:
    want = check_digit(value[:-1])
    return _err(CodeErrorReason.CHECK_DIGIT,
                f"AI ({ai}) {_NAMES[ai]}: expected check digit {want}, found {value[-1]} in {value!r}",
                ai=ai, expected=want, found=value[-1])


def _from_elements(form: Form, elements: list[tuple[str, str, date | None]], symbology: str | None) -> Code:
    gtin = serial = batch = sscc = gln = ext = None
    expiry: date | None = None
    for ai, value, when in elements:
        if ai in ("00", "01", "414") and check_digit(value[:-1]) != value[-1]:
            raise _check_error(ai, value)
        if ai == "01":
            gtin = value
        elif ai == "21":
            serial = value
        elif ai == "10":
            batch = value
        elif ai == "17":
            expiry = when
        elif ai == "00":
            sscc = value
        elif ai == "414":
            gln = value
        elif ai == "254":
            ext = value
    if gtin is None and sscc is None and gln is None:
        raise _err(CodeErrorReason.NO_KEY, f"No GTIN (01), SSCC (00) or GLN (414) in the code "
                   f"(AIs {', '.join('(' + e[0] + ')' for e in elements)})",
                   expected="AI (01), (00) or (414)", found=",".join(e[0] for e in elements))
    code = Code(form=form.value, gtin=gtin, serial=serial, batch=batch, expiry=expiry, sscc=sscc,
                symbology=symbology, gln=gln, extension=ext)
    return _with_epc(code)


def _with_epc(code: Code) -> Code:
    from dataclasses import replace

    try:
        if code.gtin and code.serial:
            epc = sgtin_urn(code.gtin, code.serial)
        elif code.gtin and code.batch:
            epc = lgtin_urn(code.gtin, code.batch)
        elif code.sscc:
            epc = sscc_urn(code.sscc)
        elif code.gln:
            epc = sgln_urn(code.gln, code.extension)
        else:
            return code
    except CodeError:
        # A serial with characters the URN cannot carry: the code is still readable, only unkeyed.
        return code
    return replace(code, epc=epc)


# --- the fast path: the forms a 2D scanner sends every second ------------------------------------
# GTIN + serial (+ expiry, + batch) as an element string or HRI, every value already valid: read
# here without biip (a tenth of its cost per code, on the counter's hot path). Anything else, and
# anything this path finds wrong, goes to biip, which says what is wrong; `tests/gs1` checks with
# hypothesis that both paths agree.

_FAST_AIS = {"01": 14, "17": 6, "10": 0, "21": 0}
"""AIs the fast path reads (length for fixed ones, 0 for variable ones closed by GS or the end)."""
_COMMON = re.compile("01([0-9]{14})(?:17([0-9]{6}))?(?:10([!\"%-?A-Z_a-z]{1,20})\x1d)?21([!\"%-?A-Z_a-z]{1,20})")
"""`01 GTIN [17 YYMMDD] [10 batch GS] 21 serial`, every value of the right length and characters."""
_CSET82_CHARS = frozenset("!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz")


def _century(two_digit_year: int, today: date | None = None) -> int:
    """GS1 General Specifications 7.12: a two-digit year is within 49 years past and 50 ahead."""
    current = (today or date.today()).year
    century, now = current - current % 100, current % 100
    if 51 <= two_digit_year - now <= 99:
        return century - 100
    if -99 <= two_digit_year - now <= -50:
        return century + 100
    return century


def _fast_date(value: str) -> date | None:
    return _fast_date_in(value, date.today().year)


@functools.lru_cache(maxsize=4096)
def _fast_date_in(value: str, this_year: int) -> date | None:
    # Cached: a batch's codes print one expiry (the current year is in the key: the century window moves).
    if not value.isdigit():
        return None
    yy, month, day = int(value[:2]), int(value[2:4]), int(value[4:6])
    if not 1 <= month <= 12:
        return None
    year = yy + _century(yy, date(this_year, 1, 1))
    last = calendar.monthrange(year, month)[1]
    if day > last:
        return None
    return date(year, month, day or last)


def _fast_pairs(raw: str) -> list[tuple[str, str]] | None:
    """An element string of AIs (01) (17) (10) (21) only, each once, as (AI, value); None otherwise."""
    m = _COMMON.fullmatch(raw)
    if m is not None:
        # What a 2D scanner sends nearly always, in the order `element_string` writes it: one
        # regular expression instead of the loop below (which gives the same pairs for it).
        gtin, expiry, batch, serial = m.groups()
        common = [("01", gtin)]
        if expiry is not None:
            common.append(("17", expiry))
        if batch is not None:
            common.append(("10", batch))
        common.append(("21", serial))
        return common
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    i, n = 0, len(raw)
    while i < n:
        ai = raw[i:i + 2]
        size = _FAST_AIS.get(ai)
        if size is None or ai in seen:
            return None
        seen.add(ai)
        i += 2
        if size:
            value = raw[i:i + size]
            i += size
        else:
            end = raw.find(GS, i)
            end = n if end < 0 else end
            value = raw[i:end]
            i = end
        pairs.append((ai, value))
        while i < n and raw[i] == GS:
            i += 1
    return pairs


def _fast_code(pairs: list[tuple[str, str]], form: Form, symbology: str | None) -> Code | None:
    gtin = serial = batch = None
    expiry: date | None = None
    for ai, value in pairs:
        if ai == "01":
            if len(value) != 14 or not value.isdigit() or not _gtin_checks(value):
                return None
            gtin = value
        elif ai == "17":
            if len(value) != 6 or (expiry := _fast_date(value)) is None:
                return None
        elif not 1 <= len(value) <= 20 or not _CSET82_CHARS.issuperset(value):
            return None
        elif ai == "10":
            batch = value
        else:
            serial = value
    if gtin is None or serial is None:
        return None
    try:
        epc: str | None = _sgtin_head(gtin) + _urn_escape(serial, "Serial")
    except CodeError:
        epc = None
    return Code(form=form.value, gtin=gtin, serial=serial, batch=batch, expiry=expiry, epc=epc, symbology=symbology)


@functools.lru_cache(maxsize=1024)
def _gtin_checks(gtin: str) -> bool:
    # Cached: a brand prints a handful of GTINs on millions of units.
    return check_digit(gtin[:13]) == gtin[13]


@functools.lru_cache(maxsize=1024)
def _sgtin_head(gtin: str) -> str:
    """`sgtin_urn` up to its serial (`urn:epc:id:sgtin:CompanyPrefix.IndicatorItemRef.`), per GTIN."""
    return sgtin_urn(gtin, "0")[:-1]


_HRI_PAIR = re.compile(r"\(([0-9]{2})\)([^(]*)")


def _fast_hri(raw: str) -> list[tuple[str, str]] | None:
    pairs = _HRI_PAIR.findall(raw)
    if sum(len(a) + len(v) + 2 for a, v in pairs) != len(raw) or len({a for a, _ in pairs}) != len(pairs) \
            or any(a not in _FAST_AIS for a, _ in pairs):
        return None
    return pairs


def _elements_of(message: object) -> list[tuple[str, str, date | None]]:
    return [(e.ai.ai, e.value, e.date) for e in message.element_strings]  # type: ignore[attr-defined]


def parse_code(text: str) -> Code:
    """Read a code as a scanner delivers it: a GS1 element string (FNC1 as GS, with or without a
    symbology identifier), a parenthesised HRI string, a GS1 Digital Link URI (any domain), an EPC
    URN (`sgtin`, `sscc`, `sgln`, `lgtin`) or a plain EAN/UPC/GTIN-14. Raises `CodeError`."""
    raw = text.strip("\r\n").replace(_GS_SYMBOL, GS)
    symbology = None
    if _SYMBOLOGY.match(raw):
        symbology, raw = raw[:3], raw[3:]
    raw = raw.strip(" ")
    if not raw:
        raise _err(CodeErrorReason.EMPTY, f"Empty code {text!r}", expected="a code", found="")
    if raw.startswith(GS):
        raw = raw.lstrip(GS)  # a leading FNC1 is the GS1 flag, not a separator
    lowered = raw[:8].lower()
    if lowered.startswith("urn:epc:"):
        return parse_epc_urn(raw, symbology=symbology)
    if lowered.startswith(("http://", "https://")):
        return _parse_digital_link(raw, symbology)
    if raw.startswith("("):
        return _parse_hri(raw, symbology)
    if raw.isdigit() and len(raw) in (8, 12, 13, 14):
        if check_digit(raw[:-1]) != raw[-1]:
            want = check_digit(raw[:-1])
            raise _err(CodeErrorReason.CHECK_DIGIT,
                       f"GTIN {raw!r}: expected check digit {want}, found {raw[-1]}",
                       ai="01", expected=want, found=raw[-1])
        return Code(form=Form.EAN.value, gtin=raw.zfill(14), symbology=symbology)
    return _parse_element_string(raw, symbology)


def _parse_element_string(raw: str, symbology: str | None) -> Code:
    pairs = _fast_pairs(raw)
    if pairs is not None and (fast := _fast_code(pairs, Form.ELEMENT_STRING, symbology)) is not None:
        return fast
    from biip import ParseError
    from biip.gs1_messages import GS1Message

    try:
        message = GS1Message.parse(raw)
    except ParseError as exc:
        raise _diagnose(raw, str(exc)) from None
    return _from_elements(Form.ELEMENT_STRING, _elements_of(message), symbology)


def _parse_hri(raw: str, symbology: str | None) -> Code:
    pairs = _fast_hri(raw)
    if pairs is not None and (fast := _fast_code(pairs, Form.HRI, symbology)) is not None:
        return fast
    from biip import ParseError
    from biip.gs1_messages import GS1Message

    try:
        message = GS1Message.parse_hri(raw)
    except ParseError as exc:
        # Diagnose the same elements written as an element string (every AI closed by GS).
        pairs = re.findall(r"\(([0-9]{2,4})\)([^(]*)", raw)
        if not pairs or "".join(f"({a}){v}" for a, v in pairs) != raw:
            raise _err(CodeErrorReason.FORMAT, f"HRI {raw!r}: expected (AI)value pairs, found {raw!r}",
                       expected="(AI)value…", found=raw) from None
        raise _diagnose(GS.join(a + v for a, v in pairs), str(exc)) from None
    return _from_elements(Form.HRI, _elements_of(message), symbology)


def _parse_digital_link(raw: str, symbology: str | None) -> Code:
    from biip import ParseError
    from biip.gs1_digital_link_uris import GS1DigitalLinkURI

    try:
        uri = GS1DigitalLinkURI.parse(raw)
    except ParseError as exc:
        message = str(exc)
        # biip checks each element with the AI's pattern: say which one in our words.
        m = re.search(r"Failed to match '(\d+)(.*)' with GS1 AI \((\d+)\)", message)
        if m:
            err = _diagnose(m.group(1) + m.group(2), message)
            raise CodeError(err.reason, f"Digital Link {raw!r}: {err}", ai=err.ai, expected=err.expected,
                            found=err.found) from None
        raise _err(CodeErrorReason.URI, f"Digital Link {raw!r}: {message}", found=raw) from None
    return _from_elements(Form.DIGITAL_LINK, _elements_of(uri), symbology)


# --- EPC URNs (Tag Data Standard, pure identity) ---------------------------------------------

def _company_prefix_length(key: str, first: int) -> int:
    """Length of the GS1 Company Prefix inside a key (from biip's prefix table; 7 when unknown)."""
    return _prefix_length(key[first:])


@functools.lru_cache(maxsize=4096)
def _prefix_length(digits: str) -> int:
    # Cached: a brand has a handful of prefixes and the table walk is a third of a code's parse.
    from biip.gs1_prefixes import GS1CompanyPrefix

    prefix = GS1CompanyPrefix.extract(digits)
    return len(prefix.value) if prefix is not None else 7


def _urn_escape(value: str, what: str) -> str:
    if not value or not _CSET82.match(value):
        raise _err(CodeErrorReason.CHARSET, f"{what} {value!r}: expected GS1 character set 82",
                   expected="GS1 character set 82", found=value)
    return value if _URN_ESCAPE_SET.isdisjoint(value) else quote(value, safe="!'()*+,-.:;=_")


def sgtin_urn(gtin: str, serial: str, company_prefix_length: int | None = None) -> str:
    """`urn:epc:id:sgtin:CompanyPrefix.IndicatorItemRef.Serial` for a 14-digit GTIN and a serial."""
    g = gtin.zfill(14)
    cpl = company_prefix_length or _company_prefix_length(g, 1)
    return f"urn:epc:id:sgtin:{g[1:1 + cpl]}.{g[0]}{g[1 + cpl:13]}.{_urn_escape(serial, 'Serial')}"


def lgtin_urn(gtin: str, batch: str, company_prefix_length: int | None = None) -> str:
    """`urn:epc:class:lgtin:…`: a GTIN's batch (EPCIS quantities are counted per class)."""
    g = gtin.zfill(14)
    cpl = company_prefix_length or _company_prefix_length(g, 1)
    return f"urn:epc:class:lgtin:{g[1:1 + cpl]}.{g[0]}{g[1 + cpl:13]}.{_urn_escape(batch, 'Batch')}"


def sscc_urn(sscc: str, company_prefix_length: int | None = None) -> str:
    """`urn:epc:id:sscc:CompanyPrefix.ExtensionSerialRef` for an 18-digit SSCC."""
    cpl = company_prefix_length or _company_prefix_length(sscc, 1)
    return f"urn:epc:id:sscc:{sscc[1:1 + cpl]}.{sscc[0]}{sscc[1 + cpl:17]}"


def sgln_urn(gln: str, extension: str | None = None, company_prefix_length: int | None = None) -> str:
    """`urn:epc:id:sgln:CompanyPrefix.LocationRef.Extension` ('0' when there is no extension)."""
    cpl = company_prefix_length or _company_prefix_length(gln, 0)
    ext = _urn_escape(extension, "Extension") if extension else "0"
    return f"urn:epc:id:sgln:{gln[:cpl]}.{gln[cpl:12]}.{ext}"


_URN = re.compile(r"^urn:epc:(id|class):(sgtin|sscc|sgln|lgtin):(\d+)\.(\d*)(?:\.(.+))?$", re.IGNORECASE)
_URN_DIGITS = {"sgtin": 13, "lgtin": 13, "sscc": 17, "sgln": 12}


def parse_epc_urn(urn: str, *, symbology: str | None = None) -> Code:
    """An EPC pure-identity URN (or an LGTIN class) as a `Code`; `CodeError` naming the part at fault."""
    m = _URN.match(urn)
    if m is None:
        raise _err(CodeErrorReason.URN, f"EPC URN {urn!r}: expected urn:epc:id:sgtin|sscc|sgln:… "
                   "or urn:epc:class:lgtin:…", expected="urn:epc:id:<scheme>:<parts>", found=urn)
    kind, scheme, cp, ref, last = m.group(1).lower(), m.group(2).lower(), m.group(3), m.group(4), m.group(5)
    if (kind == "class") != (scheme == "lgtin"):
        raise _err(CodeErrorReason.URN, f"EPC URN {urn!r}: {scheme} belongs under urn:epc:"
                   f"{'class' if scheme == 'lgtin' else 'id'}", found=urn)
    digits = cp + ref
    if len(digits) != _URN_DIGITS[scheme] or not 6 <= len(cp) <= 12:
        raise _err(CodeErrorReason.LENGTH, f"EPC URN {urn!r}: expected a company prefix of 6-12 digits and "
                   f"{_URN_DIGITS[scheme]} digits in all before the check digit, found {len(cp)} and {len(digits)}",
                   expected=str(_URN_DIGITS[scheme]), found=str(len(digits)))
    needs_last = scheme in ("sgtin", "sgln", "lgtin")
    if needs_last != (last is not None):
        raise _err(CodeErrorReason.URN, f"EPC URN {urn!r}: {scheme} expected "
                   f"{'3' if needs_last else '2'} dot-separated parts", found=urn)
    value = unquote(last) if last is not None else None
    if value is not None and (not _CSET82.match(value) or len(value) > 20):
        raise _err(CodeErrorReason.CHARSET, f"EPC URN {urn!r}: expected at most 20 characters of GS1 "
                   f"character set 82 in the last part, found {value!r}", expected="X..20", found=value)
    if scheme in ("sgtin", "lgtin"):
        body = ref[0] + cp + ref[1:]
        gtin = body + check_digit(body)
        if scheme == "sgtin":
            return Code(form=Form.EPC_URN.value, gtin=gtin, serial=value, epc=urn, symbology=symbology)
        return Code(form=Form.EPC_URN.value, gtin=gtin, batch=value, epc=urn, symbology=symbology)
    if scheme == "sscc":
        body = ref[0] + cp + ref[1:]
        return Code(form=Form.EPC_URN.value, sscc=body + check_digit(body), epc=urn, symbology=symbology)
    body = cp + ref
    return Code(form=Form.EPC_URN.value, gln=body + check_digit(body), extension=None if value == "0" else value,
                epc=urn, symbology=symbology)


# --- writing a code back out -----------------------------------------------------------------

def _pairs(code: Code) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if code.sscc:
        out.append(("00", code.sscc))
    if code.gtin:
        out.append(("01", code.gtin))
    if code.expiry:
        out.append(("17", code.expiry.strftime("%y%m%d")))
    if code.batch:
        out.append(("10", code.batch))
    if code.serial:
        out.append(("21", code.serial))
    if code.gln:
        out.append(("414", code.gln))
    if code.extension:
        out.append(("254", code.extension))
    return out


def to_hri(code: Code) -> str:
    """`(01)…(17)…(10)…(21)…`, as printed under a barcode."""
    return "".join(f"({ai}){value}" for ai, value in _pairs(code))


def to_element_string(code: Code) -> str:
    """The element string a scanner transmits (fixed-length AIs first, GS after variable ones)."""
    out = ""
    pairs = _pairs(code)
    for i, (ai, value) in enumerate(pairs):
        out += ai + value
        if ai in ("10", "21", "254") and i < len(pairs) - 1:
            out += GS
    return out


def to_digital_link(code: Code, domain: str = "https://id.gs1.org") -> str:
    """The code's GS1 Digital Link URI on `domain` (scheme, host and an optional path prefix):
    key qualifiers in the path (GTIN, batch, serial), other data attributes in the query."""
    base = domain.rstrip("/")
    if code.gtin:
        path = f"/01/{code.gtin}"
        if code.batch:
            path += f"/10/{quote(code.batch, safe='')}"
        if code.serial:
            path += f"/21/{quote(code.serial, safe='')}"
        query = f"?17={code.expiry.strftime('%y%m%d')}" if code.expiry else ""
        return base + path + query
    if code.sscc:
        return f"{base}/00/{code.sscc}"
    if code.gln:
        return f"{base}/414/{code.gln}" + (f"/254/{quote(code.extension, safe='')}" if code.extension else "")
    raise _err(CodeErrorReason.NO_KEY, "A Digital Link needs a GTIN, SSCC or GLN", expected="a key", found="none")


def last_day(year: int, month: int) -> date:
    """The date a printed day 00 stands for."""
    return date(year, month, calendar.monthrange(year, month)[1])
