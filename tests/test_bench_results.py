"""bench/_results.py: sections of docs/RESULTS.md are replaced in place, appended, or the file is created."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_results", Path(__file__).resolve().parents[1] / "bench" / "_results.py"
)
results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(results)


def test_creates_the_file_with_a_header_then_appends_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "RESULTS.md"
    results.write_section("a", "first A", path)
    assert path.read_text() == results.HEADER + "\n<!-- bench:a -->\nfirst A\n<!-- /bench:a -->\n"
    results.write_section("b", "only B\n", path)
    results.write_section("a", "second A", path)
    text = path.read_text()
    assert text.count("<!-- bench:a -->") == 1 and "first A" not in text and "second A" in text
    assert text.index("second A") < text.index("only B")  # replaced in place, order kept
    assert text.endswith("<!-- bench:b -->\nonly B\n<!-- /bench:b -->\n")
    assert sorted(p.name for p in path.parent.iterdir()) == ["RESULTS.md"]  # no temporary file left


def test_text_outside_the_section_is_kept_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    before, after = "# Mine\n\nintro text\n\n", "\n\n## hand-written notes\nkeep me\n"
    path.write_text(before + "<!-- bench:x -->\nold\n<!-- /bench:x -->" + after)
    results.write_section("x", "new", path)
    assert path.read_text() == before + "<!-- bench:x -->\nnew\n<!-- /bench:x -->" + after


@pytest.mark.parametrize(
    "text",
    [
        "<!-- bench:x -->\nno end\n",
        "<!-- /bench:x -->\n<!-- bench:x -->\n",
        "<!-- bench:x -->\n<!-- /bench:x -->\n<!-- bench:x -->\n<!-- /bench:x -->\n",
    ],
)
def test_broken_markers_are_refused_and_the_file_is_untouched(tmp_path: Path, text: str) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(text)
    with pytest.raises(ValueError, match="section 'x'"):
        results.write_section("x", "new", path)
    assert path.read_text() == text


def test_section_names_are_checked() -> None:
    with pytest.raises(ValueError, match="section name"):
        results.replace_section("", "bad name -->", "x")
