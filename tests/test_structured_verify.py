"""What ``prune``/``apply`` verify: size attributes follow the cut, outputs equal the masked reference."""

from __future__ import annotations

import copy

import pytest
import torch
from _engine_helpers import randomize
from test_cli_structured import SHAPE, TINY
from test_structured_reshape import TwoShuffles
from torch import nn
from typer.testing import CliRunner

import prunekit.graph.rules_shape as rules_shape
from prunekit.cli import app
from prunekit.errors import ApplyError, ConfigError
from prunekit.structured import apply, check, pipeline, plan_prune, prune
from prunekit.structured.consistency import mismatches
from prunekit.structured.oracle import compare, masked_reference, run_outputs


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _exact_and_consistent(net: nn.Module, x, ratio: float = 0.5) -> nn.Module:
    model = copy.deepcopy(net)
    res = prune(model, x, ratio=ratio, measure=False)
    assert res.removed_units > 0
    assert mismatches(model) == []
    assert compare(run_outputs(model, x), run_outputs(masked_reference(net, res.plan), x)).ok
    return model


# ---------------------------------------------------------------------------------------------------------
# size attributes


class TiedConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.b.weight = self.a.weight
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.a(x)) + self.b(x))


class TiedEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 6)
        self.dec = nn.Linear(6, 10)
        self.emb = nn.Embedding(10, 6)
        self.emb.weight = self.dec.weight  # (10, 6): the Linear's in-features are the Embedding's columns
        self.out = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        return self.dec(h), self.out(self.emb(ids) * 2.0)


class MHAStream(nn.Module):
    def __init__(self, heads: int) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, heads, batch_first=True)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(self.attn(h, h, h, need_weights=False)[0])


class PReLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.act, self.b = nn.Conv2d(3, 8, 1), nn.PReLU(8), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.act(self.a(x)))


def test_second_holder_of_a_tied_conv_weight_follows_the_cut() -> None:
    model = _exact_and_consistent(randomize(TiedConvs()), torch.randn(1, 3, 4, 4))
    assert model.b.out_channels == model.b.weight.shape[0] == model.a.out_channels < 8


def test_embedding_tied_to_a_linear_follows_the_cut() -> None:
    x = (torch.randn(2, 3), torch.tensor([[1, 4, 7]]))
    model = _exact_and_consistent(randomize(TiedEmbedding()), x)
    assert model.emb.embedding_dim == model.dec.in_features == model.emb.weight.shape[1] < 6


@pytest.mark.parametrize("heads,ratio", [(1, 0.3), (4, 0.1), (4, 0.5), (2, 0.5)])
def test_multihead_attention_follows_a_cut_of_its_input_stream(heads: int, ratio: float) -> None:
    torch.manual_seed(0)
    model = _exact_and_consistent(randomize(MHAStream(heads)), torch.randn(2, 5, 6), ratio)
    attn = model.attn
    assert attn.embed_dim == attn.in_proj_weight.shape[1] == attn.out_proj.out_features
    assert attn.out_proj.in_features == attn.out_proj.weight.shape[1] == attn.num_heads * attn.head_dim


def test_prelu_num_parameters_follows_the_cut() -> None:
    model = _exact_and_consistent(randomize(PReLUNet()), torch.randn(1, 3, 4, 4))
    assert model.act.num_parameters == model.act.weight.numel() < 8


def test_apply_rolls_back_a_plan_that_leaves_an_attribute_stale() -> None:
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    before = copy.deepcopy(net)
    plan, _ = plan_prune(net, torch.randn(1, 3), ratio=0.5)
    del plan.attrs["2"]  # the consumer's in_features would keep saying 8
    with pytest.raises(ApplyError, match=r"consistency check.*2\.in_features says 8"):
        apply(net, plan, torch.randn(1, 3))
    assert _same_state(net, before) and net[0].out_features == 8


# ---------------------------------------------------------------------------------------------------------
# numerical verification


def _broken_split_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong rule (a split adds no constraint): the engine then plans a cut that is not exact."""
    monkeypatch.setattr(rules_shape, "_split_constraint", lambda tr, L, sizes, block, adapt: L)


def test_prune_refuses_a_cut_that_is_not_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    _broken_split_rule(monkeypatch)
    net = randomize(TwoShuffles(32, 8, 8))
    x = torch.randn(1, 3, 4, 4)
    assert not check(net, x, ratio=0.5).ok  # the wrong rule really plans an inexact cut
    model = copy.deepcopy(net)
    with pytest.raises(ApplyError, match=r"not exact: max_abs_err .* from the masked reference"):
        prune(model, x, ratio=0.5)
    assert _same_state(model, net) and model.a.out_channels == 32


def test_prune_verify_shapes_skips_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    _broken_split_rule(monkeypatch)
    model = randomize(TwoShuffles(32, 8, 8))
    res = prune(model, torch.randn(1, 3, 4, 4), ratio=0.5, verify="shapes")
    assert res.removed_units > 0 and model.a.out_channels < 32


def test_prune_leaves_the_model_bit_exact_while_taking_the_reference() -> None:
    net = randomize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)))
    x = torch.randn(1, 3, 8, 8)
    plan, _ = plan_prune(net, x, ratio=0.5)
    from prunekit.structured.oracle import reference_outputs

    before = copy.deepcopy(net)
    ref = reference_outputs(net, plan, x)
    assert _same_state(net, before)
    assert compare(ref.outputs, run_outputs(masked_reference(before, plan), x)).ok


def test_prune_rejects_an_unknown_verify() -> None:
    with pytest.raises(ConfigError, match="verify"):
        prune(nn.Linear(2, 2), torch.randn(1, 2), verify="fast")


def test_cli_prune_no_verify(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = pipeline.reference_outputs
    monkeypatch.setattr(pipeline, "reference_outputs", lambda *a, **k: seen.append(1) or real(*a, **k))
    for flags in ([], ["--no-verify"]):
        out = tmp_path / f"ck{len(flags)}"
        res = CliRunner().invoke(app, ["prune", TINY, "--input-shape", SHAPE, "--out", str(out), *flags])
        assert res.exit_code == 0, res.output
        assert (out / "prunekit.json").exists()
    assert seen == [1]  # the reference forward ran for the default only
