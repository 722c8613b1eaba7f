"""Event identifiers to unit keys: only ASCII digits make a GTIN (Python's `\\d` also takes other
scripts' digits, such as the full-width ones a CJK input method types)."""

from __future__ import annotations

import pytest

import gs1
from cloud.trace.keys import key_of

GTIN = "09506000134352"
WIDE = GTIN.translate({ord("0") + i: 0xFF10 + i for i in range(10)})
"""The same GTIN in full-width digits (U+FF10…U+FF19)."""


def test_a_canonical_unit_key_reads_without_biip() -> None:
    key, code = key_of(f"https://id.gs1.org/01/{GTIN}/21/ABC1")
    assert key == f"https://id.gs1.org/01/{GTIN}/21/ABC1"
    assert code is not None and code.gtin == GTIN and code.serial == "ABC1"


@pytest.mark.parametrize("identifier", [f"https://id.gs1.org/01/{WIDE}/21/ABC1", f"(01){WIDE}(21)ABC1"],
                         ids=["digital-link", "hri"])
def test_digits_of_other_scripts_are_not_a_gtin(identifier: str) -> None:
    key, code = key_of(identifier)  # the digital link raised ValueError from the check digit before
    assert code is None
    assert key == identifier


def test_hri_with_a_full_width_ai_is_refused() -> None:
    with pytest.raises(gs1.CodeError):
        gs1.parse_code(f"({WIDE[:2]}){GTIN}(21)ABC1")
