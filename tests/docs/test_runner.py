"""The doc-test runner's own rules (parsing console blocks, matching output)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest
from sybil import Example

from tests.docs.runner import DocFailure, directive, matches, parse_console


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


def _example(text: str) -> Example:
    """The block that starts at the last fence of `text`, as far as `directive` reads a Sybil example."""
    start = text.rindex("```")
    return cast(Example, SimpleNamespace(document=SimpleNamespace(text=text), region=SimpleNamespace(start=start), line=1))


def test_a_directive_steers_only_the_block_right_after_it() -> None:
    first = "<!-- doctest: file=a.csv -->\n```csv\nsku\n```\n\n"
    assert directive(_example(first)) == {}
    assert directive(_example(first + "<!-- doctest: exit=1 -->\n```console")) == {"exit": "1"}
    assert directive(_example(first + "Text.\n\n```console")) == {}
    assert directive(_example(first + "<!-- example-engine -->\n```python")) == {}
    assert directive(_example("<!-- doctest: skip — it runs forever -->\n```sh")) == {"skip": "it runs forever"}
    with pytest.raises(DocFailure, match="must say why"):
        directive(_example("<!-- doctest: skip -->\n```sh"))
