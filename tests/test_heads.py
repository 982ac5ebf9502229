"""Attention heads: nn.MultiheadAttention (torchvision ViT) and attention code that sizes views by
attributes."""

from __future__ import annotations

import copy

import pytest
import torch
from _engine_helpers import assert_exact, pruned_copy, randomize
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

import prunekit.structured as ps
from prunekit.deploy.checkpoint import load, save
from prunekit.errors import ApplyError
from prunekit.structured.mha import PrunedMultiheadAttention

torch.set_num_threads(1)


class MHABlock(nn.Module):
    def __init__(self, batch_first: bool = True, need_weights: bool = False, kdim: int | None = None) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(16)
        self.att = nn.MultiheadAttention(16, 4, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.batch_first, self.need_weights = batch_first, need_weights
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(x)
        a, _ = self.att(h, h, h, need_weights=self.need_weights)
        return self.fc((x + a).mean(1 if self.batch_first else 0))


class ViewAttention(nn.Module):
    """timm-style: ``reshape(B, N, 3, self.num_heads, self.head_dim)``, ``reshape(B, N, self.attn_dim)``."""

    def __init__(self, dim: int = 24, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_dim = num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * self.attn_dim)
        self.proj = nn.Linear(self.attn_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, self.attn_dim))


class WidthFromInputAttention(nn.Module):
    """NextViT's ``E_MHSA``: merges the heads back to ``C``, a Python int read from its input's shape."""

    def __init__(self, dim: int = 16, head_dim: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = dim // head_dim, head_dim
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (
            f(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
            for f in (self.q, self.k, self.v)
        )
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


def mha_block_factory() -> nn.Module:
    torch.manual_seed(0)
    return MHABlock()


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_loses_whole_heads_exactly(batch_first):
    model = randomize(MHABlock(batch_first)).eval()
    x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
    rep = assert_exact(model, x, 0.5)
    assert rep.plan.attrs["att"] == {"num_heads": [4, 2]}
    pruned, _ = pruned_copy(model, x, 0.5)
    att = pruned.att
    assert type(att) is PrunedMultiheadAttention and att.num_heads == 2 and att.head_dim == 4
    assert att.embed_dim == 16 and tuple(att.in_proj_weight.shape) == (3 * 8, 16)
    assert tuple(att.out_proj.weight.shape) == (16, 8)
    assert type(model.att) is nn.MultiheadAttention  # check() and pruned_copy never touch the original
    rep2 = assert_exact(pruned, x, 0.5)  # prunes again, through PrunedMultiheadAttention's own rule
    assert rep2.plan.attrs["att"] == {"num_heads": [2, 1]}


def test_need_weights_and_kdim_pin_the_heads():
    x = torch.randn(2, 5, 16)
    rep = ps.groups(MHABlock(need_weights=True).eval(), x)
    heads = [g for g in rep.groups if any(m.name == "att.out_proj.weight" and m.dim == 1 for m in g.members)]
    assert heads and all(g.pinned for g in heads)
    assert any("need_weights=True" in r for g in heads for r in g.reasons)
    rep = ps.groups(MHABlock(kdim=16).eval(), x)  # kdim given but equal: packed weights, still prunable
    assert any(m.name == "att.out_proj.weight" for g in rep.prunable_groups for m in g.members)


def test_failed_apply_restores_the_multihead_attention_class():
    model = randomize(MHABlock()).eval()
    x = torch.randn(2, 5, 16)
    plan, _ = ps.plan_prune(model, x, ratio=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ApplyError):
        ps.apply(model, plan, torch.randn(2, 5, 7))  # wrong input width: the verification forward fails
    assert type(model.att) is nn.MultiheadAttention and model.att.num_heads == 4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_small_torchvision_vit_prunes_heads_and_mlp_and_round_trips(tmp_path):
    torch.manual_seed(0)
    vit = VisionTransformer(32, 8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=5)
    model = randomize(vit).eval()
    x = torch.randn(2, 3, 32, 32)
    rep = assert_exact(model, x, 0.5)
    for i in range(2):
        layer = f"encoder.layers.encoder_layer_{i}"
        assert rep.plan.attrs[f"{layer}.self_attention"] == {"num_heads": [4, 2]}
        assert rep.plan.attrs[f"{layer}.mlp.0"] == {"out_features": [64, 32]}
    pruned = copy.deepcopy(model)
    ps.apply(pruned, rep.plan, x)
    assert pruned(x).shape == (2, 5)


def test_view_sized_by_num_heads_keeps_working_after_the_cut():
    model = randomize(nn.Sequential(ViewAttention(), nn.ReLU(), nn.Linear(24, 2))).eval()
    x = torch.randn(2, 6, 24)
    rep = assert_exact(model, x, 0.5)
    assert rep.plan.attrs["0"] == {"num_heads": [4, 2], "attn_dim": [24, 12]}
    pruned, _ = pruned_copy(model, x, 0.5)
    assert pruned[0].num_heads == 2 and pruned[0].head_dim == 6 and pruned[0].qkv.out_features == 36


def test_pruned_multihead_attention_checkpoint_round_trip(tmp_path):
    model = mha_block_factory().eval()
    x = torch.randn(2, 5, 16)
    res = ps.prune(model, x, ratio=0.5, measure=False)
    save(model, tmp_path / "ck", spec="test_heads:mha_block_factory", plan=res.plan)
    back = load(tmp_path / "ck", trust_code=True)
    assert type(back.att) is PrunedMultiheadAttention and back.att.num_heads == 2
    assert torch.equal(back(x), model(x))


def test_width_read_from_another_tensors_shape_pins_that_tensor():
    # the heads are pinned (merged into a plain int); `c` is the input's width, so the input stream must keep
    # its width too, or reshape(b, n, c) breaks after the cut; the projection's output stays prunable
    model = randomize(nn.Sequential(nn.Linear(5, 16), WidthFromInputAttention(), nn.ReLU(), nn.Linear(16, 2)))
    x = torch.randn(2, 6, 5)
    rep = assert_exact(model.eval(), x, 0.5)
    assert "0.weight" not in rep.plan.removals and "1.q.weight" not in rep.plan.removals
    assert rep.plan.removals["1.proj.weight"] == {0: rep.plan.removals["3.weight"][1]}
    reasons = [r for g in ps.groups(model, x).pinned_groups for r in g.reasons]
    assert any("read as a Python int" in r for r in reasons), reasons
