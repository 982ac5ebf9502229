"""Atomic outputs: umask-honouring modes, no planted symlink followed, crash-safe directory replacement."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers_models import tiny_model
from typer.testing import CliRunner

import prunekit._atomic as atomic
from prunekit.cli import app
from prunekit.demo.model import build_model
from prunekit.deploy import load, save
from prunekit.deploy.onnx_export import export_onnx

torch.set_num_threads(1)
DIGITS = "prunekit.demo.model:build_model"
TINY = f"{tiny_model.__module__}:tiny_model"
X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=[0o022, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_umask_is_read_without_changing_it(umask):
    assert atomic.umask() == umask
    assert atomic.umask() == umask


def test_save_honours_the_umask(tmp_path, umask):
    save(build_model(0), tmp_path / "ck", spec=DIGITS)
    assert _mode(tmp_path / "ck") == 0o777 & ~umask  # not mkdtemp's 0o700
    for f in (tmp_path / "ck").iterdir():
        assert _mode(f) == 0o666 & ~umask, f.name


def test_cli_prune_out_honours_the_umask(tmp_path, umask):
    out = tmp_path / "pruned"
    args = ["prune", TINY, "--ratio", "0.5", "--input-shape", "1,4,8,8", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert _mode(out) == 0o777 & ~umask
    assert {_mode(f) for f in out.iterdir()} == {0o666 & ~umask}


def test_export_onnx_honours_the_umask(tmp_path, umask):
    path = tmp_path / "m.onnx"
    export_onnx(build_model(0).eval(), X, path, verify=False)
    assert _mode(path) == 0o666 & ~umask  # not mkstemp's 0o600


def test_writers_share_one_helper_that_honours_the_umask(tmp_path, umask):
    """Plans, sparse storage and torch.save outputs (as the YOLO writer does) through the one helper."""
    from prunekit.plan import Plan
    from prunekit.sparse.storage import save_sparse

    Plan().save(tmp_path / "p.json")
    save_sparse(torch.nn.Linear(4, 2), tmp_path / "w.pksparse")
    atomic.atomic_write(tmp_path / "t.pt", lambda tmp: torch.save({"a": 1}, tmp))
    for name in ("p.json", "w.pksparse", "t.pt"):
        assert _mode(tmp_path / name) == 0o666 & ~umask, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json", "t.pt", "w.pksparse"]


def test_planted_symlink_at_the_old_temp_name_is_not_followed(tmp_path, monkeypatch):
    """``ln -s victim .out.pt.PID.tmp`` must neither overwrite the victim nor make out.pt a link to it."""
    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    victim.chmod(0o600)
    pid = os.getpid()
    for name in (f".out.pt.{pid}.tmp", f".report.json.{pid}.tmp"):
        (tmp_path / name).symlink_to(victim)
    args = ["sparsify", TINY, "--sparsity", "0.5", "--out", "out.pt", "--json", "report.json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious" and _mode(victim) == 0o600
    for name in ("out.pt", "report.json"):
        assert not (tmp_path / name).is_symlink() and (tmp_path / name).stat().st_size > 0


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "out.json").symlink_to(victim)
    atomic.write_text(tmp_path / "out.json", "new")
    assert victim.read_text() == "precious"
    assert not (tmp_path / "out.json").is_symlink() and (tmp_path / "out.json").read_text() == "new"


def test_interrupt_while_writing_leaves_no_temp(tmp_path):
    def interrupted(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.write_text(tmp_path / "a.txt", "old")
        atomic.atomic_write(tmp_path / "a.txt", interrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "old"


CHILD = """
import os, signal, sys, torch
from prunekit.demo.model import build_model
from prunekit.deploy import save
torch.manual_seed(1)
net = build_model(0)
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if {where!r} == "between renames":  # old checkpoint moved aside, the new one not yet in place
    real, calls = os.rename, []
    def rename(src, dst):
        calls.append(src)
        if len(calls) == 2:
            die()
        real(src, dst)
    os.rename = rename
else:
    import safetensors.torch
    safetensors.torch.save_file = lambda *a, **k: (open(a[1], "wb").write(b"x" * 1000), die())
save(net, {path!r}, spec={spec!r})
"""


def _killed_save(path: Path, where: str) -> None:
    code = textwrap.dedent(CHILD).format(where=where, path=str(path), spec=DIGITS)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


@pytest.mark.parametrize("where", ["between renames", "while writing"])
def test_sigkill_during_a_replacing_save_keeps_a_loadable_checkpoint(tmp_path, where):
    old = build_model(0).eval()
    save(old, tmp_path / "ck", spec=DIGITS)
    _killed_save(tmp_path / "ck", where)
    assert [p.name for p in tmp_path.iterdir() if p.name != "ck"]  # the kill left its files behind
    assert torch.equal(load(tmp_path / "ck", trust_code=True)(X), old(X))  # the old one, recovered
    assert all(p.name.startswith(".ck.pk-") for p in tmp_path.iterdir() if p.name != "ck")  # ours
    save(build_model(0), tmp_path / "ck", spec=DIGITS)  # the next save removes what the dead writer left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_stale_cleanup_removes_only_our_temps_of_dead_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(dead.stdout)
    ours = tmp_path / f".out.pt.pk-{dead_pid}-abcd1234.tmp"
    alive = tmp_path / f".out.pt.pk-{os.getpid()}-abcd1234.tmp"
    foreign = tmp_path / f".out.pt.{dead_pid}.tmp"  # not our naming: never touched
    other = tmp_path / f".other.pt.pk-{dead_pid}-abcd1234.tmp"  # another target's: left for its writer
    for p in (ours, alive, foreign, other):
        p.write_text("x")
    atomic.write_text(tmp_path / "out.pt", "new")
    assert not ours.exists() and alive.exists() and foreign.exists() and other.exists()
