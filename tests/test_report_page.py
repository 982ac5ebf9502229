"""`prunekit report` and `--report DIR`: a self-contained HTML page, every figure drawn in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from helpers_models import tiny_model
from typer.testing import CliRunner

from prunekit.cli import app

TINY = f"{tiny_model.__module__}:tiny_model"
SHAPE = "2,4,8,8"
runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.title = 'PROBE ' + JSON.stringify({n: imgs.length, drawn: imgs.filter(i => i.complete &&
    i.naturalWidth > 0).length, links: document.querySelectorAll('a[href], link[href], script[src]').length});
});</script>"""


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _pages(tmp_path):
    js = tmp_path / "prune.json"
    args = ("prune", TINY, "--input-shape", SHAPE, "--out", tmp_path / "ckpt", "--json", js)
    result = invoke(*args, "--report", tmp_path / "live")
    assert result.exit_code == 0, result.output
    assert invoke("report", js, "--out", tmp_path / "from-json").exit_code == 0
    assert invoke("report", tmp_path / "ckpt", "--out", tmp_path / "from-ckpt").exit_code == 0
    sens = tmp_path / "sens.json"
    assert (
        invoke("sensitivity", TINY, "--input-shape", SHAPE, "--ratios", "0.25,0.5", "--json", sens).exit_code
        == 0
    )
    assert invoke("report", sens, "--out", tmp_path / "sens").exit_code == 0
    return js


def test_report_pages_hold_the_numbers_the_command_and_embedded_figures(tmp_path):
    js = _pages(tmp_path)
    data = json.loads(js.read_text())
    page = (tmp_path / "live" / "report.html").read_text()
    assert f"{data['params_before']:,}" in page and f"{data['params_after']:,}" in page
    assert "prunekit prune" in page and "--report" in page  # the exact command
    assert (
        data["command"].startswith("prunekit prune ")
        and data["command"] in (tmp_path / "from-json" / "report.md").read_text()
    )
    assert re.findall(r'src="data:image/png;base64,', page) and not re.search(r'(href|src)="(?!data:)', page)
    assert "Per-layer widths" in (tmp_path / "from-ckpt" / "report.md").read_text()
    assert "Sensitivity curves" in (tmp_path / "sens" / "report.html").read_text()
    assert (tmp_path / "sens" / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"


def test_a_report_from_something_else_is_one_line_exit_2(tmp_path):
    junk = tmp_path / "junk.txt"
    junk.write_text("not json")
    result = invoke("report", junk, "--out", tmp_path / "r")
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless chromium (apt-get install chromium)")
def test_the_page_loads_in_a_headless_browser_with_every_image_drawn(tmp_path):
    _pages(tmp_path)
    for name in ("live", "sens"):
        page = tmp_path / name / "report.html"
        probe = tmp_path / f"{name}-probe.html"
        probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
        dom = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
             "--dump-dom", probe.as_uri()],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        found = json.loads(re.search(r"<title>PROBE (.*?)</title>", dom).group(1).replace("&quot;", '"'))
        assert found["n"] >= 1 and found["drawn"] == found["n"] and found["links"] == 0, found
        shot = tmp_path / f"{name}.png"
        subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600",
             f"--screenshot={shot}", page.as_uri()],
            capture_output=True, timeout=120, check=True,
        )  # fmt: skip
        from PIL import Image

        colours = Image.open(shot).convert("L").getextrema()
        assert colours[1] - colours[0] > 100  # not a blank page


def test_what_stayed_whole_and_why_lists_every_unpruned_group_with_its_reason(tmp_path):
    """A prune that ignores conv1: the page and its Markdown twin (live, from --json, from the checkpoint)
    name conv1's group as ignored by the user and the input/output groups with the trace's reasons; a
    check whose round_to keeps conv2 whole says so."""
    js = tmp_path / "p.json"
    args = ("prune", TINY, "--input-shape", SHAPE, "--ignore", "conv1", "--out", tmp_path / "ckpt")
    result = invoke(*args, "--json", js, "--report", tmp_path / "live")
    assert result.exit_code == 0, result.output
    assert invoke("report", js, "--out", tmp_path / "from-json").exit_code == 0
    assert invoke("report", tmp_path / "ckpt", "--out", tmp_path / "from-ckpt").exit_code == 0
    whole = json.loads(js.read_text())["plan"]["meta"]["kept_whole"]
    assert sorted(k["width"] for k in whole) == [4, 8, 10]  # input, conv1 (ignored), output; conv2 is cut
    for folder in ("live", "from-json", "from-ckpt"):
        md = (tmp_path / folder / "report.md").read_text()
        page = (tmp_path / folder / "report.html").read_text()
        section = md[md.index("## What stayed whole and why") :].split("\n## ")[0]
        assert "<h2>What stayed whole and why</h2>" in page
        rows = [line for line in section.splitlines() if line.startswith("| ") and "conv" in line]
        assert any("conv1.weight[0]" in r and "pinned: ignored by user (conv1)" in r for r in rows), section
        assert "model outputs keep their shape" in section and "model outputs keep their shape" in page
        assert "ignored by user (conv1)" in page
        assert "conv2.weight[0]" not in section  # conv2 lost channels: it did not stay whole
    cj = tmp_path / "c.json"
    result = invoke("check", TINY, "--input-shape", SHAPE, "--round-to", "16", "--json", cj)
    assert result.exit_code == 0, result.output
    assert invoke("report", cj, "--out", tmp_path / "check").exit_code == 0
    md = (tmp_path / "check" / "report.md").read_text()
    assert any(
        "conv2.weight[0]" in line and "round_to 16: the kept width rounds up to all 16" in line
        for line in md.splitlines()
    ), md


def test_groups_bn_scale_scored_by_its_fallback_have_their_own_section(tmp_path):
    """TinyNet's conv2 has no BatchNorm: bn_scale scores its group by l1, and the page (live, from the
    checkpoint) says so; an l2 prune scores every group itself and has no such section."""
    args = ("prune", TINY, "--input-shape", SHAPE, "--criterion", "bn_scale", "--out", tmp_path / "ckpt")
    assert invoke(*args, "--report", tmp_path / "live").exit_code == 0
    assert invoke("report", tmp_path / "ckpt", "--out", tmp_path / "from-ckpt").exit_code == 0
    for folder in ("live", "from-ckpt"):
        md = (tmp_path / folder / "report.md").read_text()
        section = md[md.index("## Groups scored by a fallback") :].split("\n## ")[0]
        assert "l1 (bn_scale fallback: no BatchNorm weight in the group)" in section
        assert "<h2>Groups scored by a fallback</h2>" in (tmp_path / folder / "report.html").read_text()
    args = ("prune", TINY, "--input-shape", SHAPE, "--out", tmp_path / "l2", "--report", tmp_path / "l2r")
    assert invoke(*args).exit_code == 0
    assert "scored by a fallback" not in (tmp_path / "l2r" / "report.md").read_text()
