"""The doc-test runner's own rules (parsing console blocks, matching output)."""

from __future__ import annotations

import pytest

from tests.docs.runner import DocFailure, matches, parse_console


def test_console_blocks_fold_continuations_and_heredocs() -> None:
    block = "$ echo a \\\n>   b\na b\n$ cat > f <<'EOF'\nx\nEOF\n$ cat f\nx\n"
    cmds = parse_console(block, 10)
    assert [c.text for c in cmds] == ["echo a \\\n  b", "cat > f <<'EOF'\nx\nEOF", "cat f"]
    assert [c.expected for c in cmds] == [["a b"], [], ["x"]]
    assert [c.line for c in cmds] == [10, 13, 16]
    with pytest.raises(DocFailure, match="output before any"):
        parse_console("oops\n$ true", 1)


@pytest.mark.parametrize(
    ("expected", "actual", "ok"),
    [
        (["OK sha256:…"], ["OK sha256:0123"], True),
        (["a", "…", "z"], ["a", "b", "c", "z"], True),
        (["a", "…", "z"], ["a", "z"], True),
        (["a", "z"], ["a", "b", "z"], False),
        (["value 12"], ["value 13"], False),
        (["x  "], ["x"], True),
    ],
)
def test_output_matching(expected: list[str], actual: list[str], ok: bool) -> None:
    assert matches(expected, actual) is ok
