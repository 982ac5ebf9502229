"""Write one benchmark's section of ``docs/RESULTS.md`` and leave every other section as it is.

A section is the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``. Rewriting it replaces only
that block; a missing block is appended; a missing file is created with a short header. The file is replaced
atomically (temporary file + ``os.replace``), so a crash never leaves half a results file.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

HEADER = (
    "# Benchmark results\n\n"
    "Each section below is written by a script in `bench/` (its name is in the section's marker); rerun the\n"
    "script to refresh it. Numbers are from the machine and date given in each section.\n"
)
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def replace_section(text: str, name: str, markdown: str) -> str:
    """``text`` with the block of section ``name`` set to ``markdown`` (appended if the block is missing).

    >>> replace_section("# R\\n", "demo", "hello")
    '# R\\n\\n<!-- bench:demo -->\\nhello\\n<!-- /bench:demo -->\\n'
    >>> replace_section(_, "demo", "bye").count("bye"), "hello" in _
    (1, True)
    """
    if not _NAME.match(name):
        raise ValueError(f"section name must be letters, digits, '.', '_' or '-', got {name!r}")
    start, end = _markers(name)
    block = f"{start}\n{markdown.strip()}\n{end}"
    if text.count(start) > 1 or text.count(end) > 1:
        raise ValueError(f"section {name!r} appears more than once; fix the file by hand first")
    i, j = text.find(start), text.find(end)
    if i == -1 and j == -1:
        return text.rstrip("\n") + "\n\n" + block + "\n"
    if i == -1 or j == -1 or j < i:
        raise ValueError(
            f"section {name!r} has an unmatched or misordered marker; fix the file by hand first"
        )
    return text[:i] + block + text[j + len(end) :]


def write_section(name: str, markdown: str, path: str | Path = "docs/RESULTS.md") -> Path:
    """Set section ``name`` of the results file at ``path`` to ``markdown``, atomically; return the path.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "RESULTS.md"
    >>> _ = write_section("demo", "| a |", target)
    >>> target.read_text().startswith("# Benchmark results")
    True
    """
    path = Path(path)
    text = path.read_text() if path.exists() else HEADER
    new = replace_section(text, name, markdown)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x") as handle:
            handle.write(new)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
