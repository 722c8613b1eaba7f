"""Every form a scanner delivers, read into one `Code`; refusals with exact messages; round trips.

Vectors written for this project from the GS1 General Specifications (AI formats, check digits,
day 00), the GS1 Digital Link standard (path/query layout, custom domains, percent-encoding) and
the EPC Tag Data Standard (URN layout, company prefix split, escaping)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import date

import pytest

from gs1 import (
    GS,
    Code,
    CodeError,
    CodeErrorReason,
    parse_code,
    parse_epc_urn,
    sgln_urn,
    sgtin_urn,
    sscc_urn,
    to_digital_link,
    to_element_string,
    to_hri,
)

G = "09506000134352"
"""GS1 Global Office example GTIN-13 950600013435, check digit 2; company prefix 95060001343."""
UNIT = Code(form="element_string", gtin=G, serial="ABC123", batch="L42", expiry=date(2027, 1, 31),
            epc="urn:epc:id:sgtin:95060001343.05.ABC123")

VALID: list[tuple[str, Code]] = [
    # element strings: fixed-length AIs need no GS, the batch (variable) does when followed
    ("0109506000134352" "17270131" "10L42" + GS + "21ABC123", UNIT),
    ("]d2" "0109506000134352" "17270131" "10L42" + GS + "21ABC123", Code(**{**asdict(UNIT), "symbology": "]d2"})),
    ("]Q3" "0109506000134352" "17270131" "10L42" + GS + "21ABC123", Code(**{**asdict(UNIT), "symbology": "]Q3"})),
    ("]C1" "0109506000134352" "17270131" "10L42" + GS + "21ABC123", Code(**{**asdict(UNIT), "symbology": "]C1"})),
    ("]e0" "0109506000134352" "17270131" "10L42\u241d21ABC123", Code(**{**asdict(UNIT), "symbology": "]e0"})),
    # a leading FNC1 is the GS1 flag, dropped; trailing CR/LF from a keyboard wedge too
    (GS + "0109506000134352" "17270131" "10L42" + GS + "21ABC123\r\n", UNIT),
    # day 00 = the month's last day (2028 is a leap year)
    ("0109506000134352" "17280200" "21S1", Code(form="element_string", gtin=G, serial="S1", expiry=date(2028, 2, 29),
                                                 epc="urn:epc:id:sgtin:95060001343.05.S1")),
    ("(01)09506000134352(17)270100(10)L42(21)ABC123",
     Code(**{**asdict(UNIT), "form": "hri", "expiry": date(2027, 1, 31)})),
    ("https://id.gs1.org/01/09506000134352/10/L42/21/ABC123?17=270131", Code(**{**asdict(UNIT), "form": "digital_link"})),
    # custom resolver domain with a path prefix; the GTIN-13 in the path is padded to 14
    ("https://brand.example.com/p/q/01/9506000134352/10/L42/21/ABC123?17=270131",
     Code(**{**asdict(UNIT), "form": "digital_link"})),
    ("]Q1https://brand.example.com/01/09506000134352/21/AB%2FC",
     Code(form="digital_link", gtin=G, serial="AB/C", epc="urn:epc:id:sgtin:95060001343.05.AB%2FC", symbology="]Q1")),
    ("urn:epc:id:sgtin:0614141.812345.6789",
     Code(form="epc_urn", gtin="80614141123458", serial="6789", epc="urn:epc:id:sgtin:0614141.812345.6789")),
    ("urn:epc:id:sgtin:0614141.812345.A%2FB%25",
     Code(form="epc_urn", gtin="80614141123458", serial="A/B%", epc="urn:epc:id:sgtin:0614141.812345.A%2FB%25")),
    ("urn:epc:id:sscc:0614141.1234567890",
     Code(form="epc_urn", sscc="106141412345678908", epc="urn:epc:id:sscc:0614141.1234567890")),
    ("urn:epc:id:sgln:0614141.12345.400",
     Code(form="epc_urn", gln="0614141123452", extension="400", epc="urn:epc:id:sgln:0614141.12345.400")),
    ("urn:epc:class:lgtin:0614141.812345.L1",
     Code(form="epc_urn", gtin="80614141123458", batch="L1", epc="urn:epc:class:lgtin:0614141.812345.L1")),
    ("]C1" "00106141412345678908", Code(form="element_string", sscc="106141412345678908", symbology="]C1",
                                        epc="urn:epc:id:sscc:0614141.1234567890")),
    ("4006381333931", Code(form="ean", gtin="04006381333931")),
    ("]E0" "4006381333931", Code(form="ean", gtin="04006381333931", symbology="]E0")),
    ("036000291452", Code(form="ean", gtin="00036000291452")),
    ("96385074", Code(form="ean", gtin="00000096385074")),
]


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_reads_every_form(text: str, expected: Code) -> None:
    assert parse_code(text) == expected


INVALID: list[tuple[str, CodeErrorReason, str | None, str]] = [
    ("", CodeErrorReason.EMPTY, None, "Empty code ''"),
    ("]d2", CodeErrorReason.EMPTY, None, "Empty code ']d2'"),
    ("0109506000134353", CodeErrorReason.CHECK_DIGIT, "01",
     "AI (01) GTIN: expected check digit 2, found 3 in '09506000134353'"),
    ("010950600013435", CodeErrorReason.LENGTH, "01", "AI (01) GTIN: expected 14 characters, found 13 ('0950600013435')"),
    ("010950600013435217271331", CodeErrorReason.DATE, "17",
     "AI (17) expiry: expected a date YYMMDD with a month 01-12, found '271331'"),
    ("010950600013435217270230", CodeErrorReason.DATE, "17",
     "AI (17) expiry: expected a date YYMMDD with a day 00-28 (00 = end of month), found '270230'"),
    ("01095060001343521727013", CodeErrorReason.LENGTH, "17", "AI (17) expiry: expected 6 characters, found 5 ('27013')"),
    ("0109506000134352172701AB", CodeErrorReason.CHARSET, "17", "AI (17) expiry: expected digits, found '2701AB'"),
    ("0109506000134352" "21" + "A" * 21, CodeErrorReason.LENGTH, "21",
     "AI (21) serial: expected 1 to 20 characters, found 21 ('AAAAAAAAAAAAAAAAAAAAA')"),
    ("0109506000134352" "10L1" + GS + "21AB\u00e9", CodeErrorReason.CHARSET, "21",
     "AI (21) serial: expected GS1 character set 82, found '\u00e9' in 'AB\u00e9'"),
    ("0109506000134352" "23X", CodeErrorReason.UNKNOWN_AI, None, "No GS1 Application Identifier starts '23X' in "
     "'010950600013435223X'"),
    ("10L42" + GS + "21A", CodeErrorReason.NO_KEY, None, "No GTIN (01), SSCC (00) or GLN (414) in the code (AIs (10), (21))"),
    ("00106141412345678909", CodeErrorReason.CHECK_DIGIT, "00",
     "AI (00) SSCC: expected check digit 8, found 9 in '106141412345678909'"),
    ("(01)09506000134352(17)271300", CodeErrorReason.DATE, "17",
     "AI (17) expiry: expected a date YYMMDD with a month 01-12, found '271300'"),
    ("(01)0950600013435X", CodeErrorReason.CHARSET, "01", "AI (01) GTIN: expected digits, found '0950600013435X'"),
    ("https://id.gs1.org/01/09506000134353/21/X", CodeErrorReason.CHECK_DIGIT, "01",
     "AI (01) GTIN: expected check digit 2, found 3 in '09506000134353'"),
    ("https://id.gs1.org/01/09506000134352/21/X?17=271301", CodeErrorReason.DATE, "17",
     "Digital Link 'https://id.gs1.org/01/09506000134352/21/X?17=271301': AI (17) expiry: expected a date YYMMDD "
     "with a month 01-12, found '271301'"),
    ("https://example.com/products/42", CodeErrorReason.URI,
     None, "Digital Link 'https://example.com/products/42': Expected a primary identifier in the path, got "
     "'/products/42'."),
    ("urn:epc:id:sgtin:0614141.812345", CodeErrorReason.URN, None,
     "EPC URN 'urn:epc:id:sgtin:0614141.812345': sgtin expected 3 dot-separated parts"),
    ("urn:epc:id:sgtin:0614141.81234.1", CodeErrorReason.LENGTH, None,
     "EPC URN 'urn:epc:id:sgtin:0614141.81234.1': expected a company prefix of 6-12 digits and 13 digits in all "
     "before the check digit, found 7 and 12"),
    ("urn:epc:id:giai:0614141.1", CodeErrorReason.URN, None,
     "EPC URN 'urn:epc:id:giai:0614141.1': expected urn:epc:id:sgtin|sscc|sgln:… or urn:epc:class:lgtin:…"),
    ("4006381333932", CodeErrorReason.CHECK_DIGIT, "01", "GTIN '4006381333932': expected check digit 1, found 2"),
]


@pytest.mark.parametrize(("text", "reason", "ai", "message"), INVALID)
def test_refusals_say_which_ai_what_was_expected_and_found(
        text: str, reason: CodeErrorReason, ai: str | None, message: str) -> None:
    with pytest.raises(CodeError) as info:
        parse_code(text)
    assert (info.value.reason, info.value.ai, str(info.value)) == (reason, ai, message)


ROUND: list[Code] = [
    Code(form="x", gtin=G, serial="ABC123", batch="L42", expiry=date(2027, 1, 31)),
    Code(form="x", gtin="80614141123458", serial="A/B%&?"),
    Code(form="x", gtin=G, batch="B-7"),
    Code(form="x", sscc="106141412345678908"),
]


@pytest.mark.parametrize("code", ROUND)
def test_round_trips_through_every_written_form(code: Code) -> None:
    first = parse_code(to_element_string(code))
    for text, form in [(to_hri(code), "hri"), (to_digital_link(code), "digital_link"),
                       (to_digital_link(code, "https://brand.example.com/r"), "digital_link")]:
        again = parse_code(text)
        assert asdict(again) == {**asdict(first), "form": form}
    if first.epc and first.expiry is None and first.batch is None:
        assert parse_epc_urn(first.epc) == Code(**{**asdict(first), "form": "epc_urn"})


epcpy = pytest.importorskip("epcpy.epc_schemes", reason="epcpy (dev extra) checks our URNs independently")


@pytest.mark.parametrize(("gtin", "serial", "cpl"), [("80614141123458", "6789", 7), ("09506000134352", "A/B%", 11),
                                                     ("00036000291452", "1", 6), ("10614141000415", "x\"&?", 9)])
def test_sgtin_urn_agrees_with_epcpy(gtin: str, serial: str, cpl: int) -> None:
    ours = sgtin_urn(gtin, serial, cpl)
    theirs = epcpy.SGTIN.from_gs1_element_string(f"(01){gtin}(21){serial}", company_prefix_length=cpl).epc_uri
    assert ours == theirs
    assert epcpy.SGTIN(ours).gs1_key() == gtin
    back = parse_epc_urn(ours)
    assert (back.gtin, back.serial) == (gtin, serial)


def test_sscc_and_sgln_urns_agree_with_epcpy() -> None:
    urn = sscc_urn("106141412345678908", 7)
    assert urn == "urn:epc:id:sscc:0614141.1234567890"
    assert epcpy.SSCC(urn).gs1_element_string() == "(00)106141412345678908"
    urn = sgln_urn("0614141123452", "400", 7)
    assert urn == "urn:epc:id:sgln:0614141.12345.400"
    assert epcpy.SGLN(urn).gs1_element_string() == "(414)0614141123452(254)400"
    assert sgln_urn("0614141123452", None, 7) == "urn:epc:id:sgln:0614141.12345.0"
