"""`prunekit check|prune --stream KIND --data DATA`: approximate residual-stream plans from the shell."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from prunekit.cli import app

NORMED = f"{__name__}:normed_model"
SHAPE = "2,6"
runner = CliRunner()


class Normed(nn.Module):
    """A residual stream of width 16 under a LayerNorm: only ``stream`` can cut it."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.norm = nn.LayerNorm(16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head(h + self.mlp(self.norm(h)))


def normed_model() -> Normed:
    torch.manual_seed(0)
    return Normed().eval()


def tiny_vit() -> nn.Module:
    """A torchvision ViT small enough for a CLI test (a model slicegpt follows)."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=4
    )
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    return model.eval()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "calib.pt"
    torch.save(torch.randn(16, 6, generator=torch.Generator().manual_seed(1)), path)
    return path


def check_stream(calib, *more):
    return invoke("check", NORMED, "--input-shape", SHAPE, "--ratio", "0.25", "--data", calib, *more)


def test_check_stream_is_approximate_with_its_error_and_exit_0(tmp_path, calib):
    js = tmp_path / "c.json"
    result = check_stream(calib, "--stream", "direct", "--json", js)
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert data["status"] == "approximate" and data["ok"] is False and data["stream"] == "direct"
    assert 0 < data["rel_err"] < 1 and data["removed_units"] == 8 + 4  # the MLP's 32 and the stream's 16
    assert data["approximate"] == ["LayerNorm statistics over a cut width"]
    text = " ".join(result.output.split())
    assert "approximate" in text and f"relative err {data['rel_err']:.2e}" in text
    assert "exact" not in text
    plain = invoke("check", NORMED, "--input-shape", SHAPE, "--ratio", "0.25", "--json", js)
    assert plain.exit_code == 0, plain.output  # without --stream the norm pins the stream: exact
    data = json.loads(js.read_text())
    assert data["status"] == "exact" and data["removed_units"] == 8
    assert data["stream"] is None and data["approximate"] == []
    assert "exact" in plain.output and "approximate" not in plain.output


@pytest.mark.parametrize("kind", ["direct-output", "direct-weighted"])
def test_check_stream_output_and_weighted_kinds_are_the_direct_cut_ranked_otherwise(tmp_path, calib, kind):
    js = tmp_path / "c.json"
    result = check_stream(calib, "--stream", kind, "--json", js)
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert data["status"] == "approximate" and data["stream"] == kind and data["removed_units"] == 8 + 4


def test_max_rel_err_above_the_bound_exits_1(tmp_path, calib):
    js = tmp_path / "c.json"
    assert check_stream(calib, "--stream", "direct", "--json", js).exit_code == 0
    rel_err = json.loads(js.read_text())["rel_err"]
    within = check_stream(calib, "--stream", "direct", "--max-rel-err", rel_err * 2)
    assert within.exit_code == 0, within.output
    above = check_stream(calib, "--stream", "direct", "--max-rel-err", rel_err / 2, "--json", js)
    assert above.exit_code == 1, above.output
    assert "above --max-rel-err" in " ".join(above.output.split())
    data = json.loads(js.read_text())
    assert data["status"] == "approximate" and data["max_rel_err"] == rel_err / 2


def test_slicegpt_of_a_followed_model_is_approximate(tmp_path):
    pytest.importorskip("torchvision")
    calib, js = tmp_path / "img.pt", tmp_path / "s.json"
    torch.save(torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(2)), calib)
    args = ["check", f"{__name__}:tiny_vit", "--input-shape", "2,3,16,16", "--ratio", "0.25"]
    result = invoke(*args, "--stream", "slicegpt", "--data", calib, "--json", js)
    assert result.exit_code == 0, result.output
    data = json.loads(js.read_text())
    assert data["status"] == "approximate" and data["stream"] == "slicegpt" and data["rel_err"] > 0
    assert any("SliceGPT" in why for why in data["approximate"])


@pytest.mark.parametrize(
    "more, message",
    [
        (("--stream", "direct"), "pass --data"),
        (("--stream", "direct", "--data", "{tmp}/none.pt"), "no such file"),
        (("--stream", "direct", "--data", "{wrong}"), "does not run through the model"),
        (("--stream", "slicegpt", "--data", "{calib}"), "Normed"),
        (("--stream", "sideways", "--data", "{calib}"), "'sideways' is not a stream kind"),
        (("--max-rel-err", "0.1"), "needs --stream"),
        (("--stream", "direct", "--data", "{calib}", "--max-rel-err", "-1"), "--max-rel-err must be >= 0"),
    ],
)
def test_bad_stream_input_is_one_error_line_exit_2(tmp_path, calib, more, message):
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.randn(4, 5), wrong)  # 5 features; the model reads 6
    args = [a.format(tmp=tmp_path, wrong=wrong, calib=calib) for a in more]
    js = tmp_path / "never.json"
    result = invoke("check", NORMED, "--input-shape", SHAPE, "--json", js, *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert not js.exists()


def test_a_bare_stream_flag_is_the_direct_cut(tmp_path, calib):
    reports = {}
    for flags in (["--stream"], ["--stream", "direct"]):
        js = tmp_path / f"{len(flags)}.json"
        result = invoke("check", NORMED, "--input-shape", SHAPE, *flags, "--data", calib, "--json", js)
        assert result.exit_code == 0, result.output
        reports[len(flags)] = json.loads(js.read_text())
    assert reports[1]["stream"] == reports[2]["stream"] == "direct"
    assert reports[1]["rel_err"] == reports[2]["rel_err"] > 0


def test_prune_stream_slicegpt_saves_a_checkpoint_that_reloads_to_the_same_outputs(tmp_path):
    pytest.importorskip("torchvision")
    from prunekit.deploy.checkpoint import load

    calib, js, out = tmp_path / "img.pt", tmp_path / "p.json", tmp_path / "vit_sliced"
    torch.save(torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(2)), calib)
    args = ["prune", f"{__name__}:tiny_vit", "--input-shape", "2,3,16,16", "--ratio", "0.25"]
    result = invoke(*args, "--stream", "slicegpt", "--data", calib, "--out", out, "--json", js)
    assert result.exit_code == 0, result.output
    assert "approximate cut" in result.output
    data = json.loads(js.read_text())
    assert any("SliceGPT" in why for why in data["plan"]["meta"]["approximate"])
    assert data["approx_error"] > 0 and data["params_ratio"] < 1
    model = load(out, trust_code=True)
    x = torch.randn(2, 3, 16, 16)
    assert model.conv_proj.out_channels < 16  # the stream itself is narrower
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
    again = load(out, trust_code=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), again(x), rtol=0, atol=0)


def test_prune_stream_needs_data(tmp_path):
    out = tmp_path / "never"
    result = invoke("prune", NORMED, "--input-shape", SHAPE, "--stream", "slicegpt", "--out", out)
    assert result.exit_code == 2 and result.output.startswith("error:") and "pass --data" in result.output
    assert not out.exists()
