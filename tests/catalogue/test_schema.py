"""The row model's GTIN check agrees with the gs1 package on every code, valid or not."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

import gs1
from cloud.catalogue.schema import ProductRow


def _codes() -> list[str]:
    rnd = random.Random(7)
    codes = ["00000000", "000000000000", " 6901234567892 ", "12345670", "1234567", "123456789012345", "", "6901234567 892"]
    for length in range(6, 16):
        for _ in range(150):
            body = "".join(rnd.choice("0123456789") for _ in range(length - 1))
            good = body + gs1.check_digit(body) if body else body
            codes += [good, body + str((int(good[-1]) + 1) % 10) if body else "1"]
    return codes


def test_gtins_are_checked_exactly_as_gs1_does() -> None:
    for code in _codes():
        try:
            expected: str | None = gs1.normalise_gtin(code)
            message = ""
        except gs1.GtinError as exc:
            expected, message = None, str(exc)
        try:
            row = ProductRow.model_validate({"sku": "A", "gtins": [code]})
        except ValidationError as exc:
            assert expected is None, code
            assert exc.errors()[0]["msg"] == f"Value error, {message}", code
        else:
            assert row.gtins == (expected,), code


@pytest.mark.parametrize("code", ["\uff16\uff19\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19\uff12",
                                  "\u0669\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u0662"])
def test_digits_of_other_scripts_are_no_gtin(code: str) -> None:
    with pytest.raises(ValidationError, match="must be 8, 12, 13 or 14 digits"):
        ProductRow.model_validate({"sku": "A", "gtins": [code]})
