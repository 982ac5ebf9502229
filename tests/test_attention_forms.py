"""torchvision's Swin window attention in its prunable form: its outputs, its cuts, their replay."""

from __future__ import annotations

import copy

import pytest
import torch

import prunekit as pk
from prunekit.errors import ApplyError
from prunekit.graph.groups import build_groups
from prunekit.structured import apply
from prunekit.structured.attention_forms import is_prunable_form, make_prunable, prunable_forms

swin = pytest.importorskip("torchvision.models.swin_transformer")


@pytest.mark.parametrize("cls", [swin.ShiftedWindowAttention, swin.ShiftedWindowAttentionV2])
@pytest.mark.parametrize(("size", "shift"), [((7, 9), [2, 2]), ((8, 8), [0, 0]), ((3, 3), [2, 2])])
def test_the_prunable_form_computes_what_torchvision_does(cls, size, shift) -> None:
    # (7, 9): padded to whole windows and shifted; (8, 8): no shift; (3, 3): one window, so no shift either
    torch.manual_seed(0)
    attn = cls(12, [4, 4], shift, num_heads=3).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, *size, 12)
    with torch.no_grad():
        ref = attn(x)
    keys = list(attn.state_dict())
    undo = make_prunable(attn)
    assert is_prunable_form(attn) and attn.head_dim == 4 and list(attn.state_dict()) == keys
    with torch.no_grad():
        assert torch.allclose(attn(x), ref, atol=1e-5)
    undo()
    assert type(attn) is cls and not hasattr(attn, "head_dim")


def _torchvision(name: str = "swin_t") -> torch.nn.Module:
    torch.manual_seed(0)
    return getattr(__import__("torchvision").models, name)().eval()


def test_a_trace_leaves_the_users_classes_alone() -> None:
    model = _torchvision()
    with prunable_forms(model):
        assert is_prunable_form(model.features[1][0].attn)
    assert type(model.features[1][0].attn) is swin.ShiftedWindowAttention
    build_groups(model, torch.randn(1, 3, 64, 64), stream=True)
    assert not any(is_prunable_form(m) for m in model.modules())


@pytest.mark.slow
def test_swin_heads_are_cut_exactly_and_its_stream_approximately() -> None:
    model, x = _torchvision(), torch.randn(1, 3, 64, 64)
    n = sum(p.numel() for p in model.parameters())
    report = pk.check(model, x, ratio=0.5)
    assert report.ok and report.status == "exact"
    # every stage's heads are prunable: before, each attention's split C // num_heads pinned them all
    assert report.params_ratio < 0.6
    stream_groups = [g for g in build_groups(model, x, stream=True).prunable_groups if g.approximate]
    assert {g.width for g in stream_groups} == {96, 192, 384, 768}  # each stage's residual stream

    work = copy.deepcopy(model)
    res = pk.prune(work, x, pk.PruneConfig(ratio=0.5, stream=True, data=[torch.randn(2, 3, 64, 64)],
                                           measure=False))  # fmt: skip
    assert work.features[1][0].norm1.normalized_shape == (48,)
    assert type(work.features[1][0].attn).__name__ == "PrunableShiftedWindowAttention"
    assert sum(p.numel() for p in work.parameters()) < 0.3 * n
    assert res.plan.approximate


def test_a_saved_plan_replays_on_a_fresh_swin(tmp_path) -> None:
    model, x = _torchvision(), torch.randn(1, 3, 32, 32)
    res = pk.prune(model, x, pk.PruneConfig(ratio=0.5, stream=True, data=[torch.randn(2, 3, 32, 32)],
                                            measure=False))  # fmt: skip
    with torch.no_grad():
        y = model(x)
    pk.save(model, tmp_path / "ck", plan=res.plan)
    back = pk.load(tmp_path / "ck")
    assert is_prunable_form(back.features[1][0].attn)
    with torch.no_grad():
        assert torch.equal(back(x), y)


def test_a_failed_apply_gives_the_attention_its_class_back() -> None:
    model, x = _torchvision(), torch.randn(1, 3, 32, 32)
    work = copy.deepcopy(model)
    plan, _ = pk.plan_prune(work, x, ratio=0.5)
    with pytest.raises(ApplyError):
        apply(work, plan, torch.randn(1, 3, 31, 17, 2))  # the verification forward fails
    assert not any(is_prunable_form(m) for m in work.modules())
    assert all(
        torch.equal(a, b)
        for a, b in zip(work.state_dict().values(), model.state_dict().values(), strict=True)
    )


def test_maxvit_attention_in_prunable_form_computes_what_torchvision_does() -> None:
    maxvit = pytest.importorskip("torchvision.models.maxvit")
    torch.manual_seed(0)
    attn = maxvit.RelativePositionalMultiHeadAttention(16, 4, 9).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 5, 9, 16)  # (batch, windows, positions, width)
    with torch.no_grad():
        ref = attn(x)
    undo = make_prunable(attn)
    assert is_prunable_form(attn)
    with torch.no_grad():
        assert torch.allclose(attn(x), ref, atol=1e-5)
    undo()
    assert type(attn) is maxvit.RelativePositionalMultiHeadAttention


@pytest.mark.slow
@pytest.mark.parametrize(("name", "px"), [("swin_v2_t", 64), ("maxvit_t", 224)])
def test_swin_v2_and_maxvit_heads_are_cut_exactly(name: str, px: int) -> None:
    # before: 0.695 (swin_v2_t) and 0.605 (maxvit_t), every attention's heads pinned
    model, x = _torchvision(name), torch.randn(1, 3, px, px)
    report = pk.check(model, x, ratio=0.5)
    assert report.ok and report.status == "exact"
    assert report.params_ratio < 0.55


def test_a_pruned_swin_pickles_and_unpickles_in_a_fresh_process(tmp_path) -> None:
    import subprocess
    import sys

    model, x = _torchvision(), torch.randn(1, 3, 32, 32)
    pk.prune(model, x, ratio=0.5)
    with torch.no_grad():
        y = model(x)
    torch.save({"model": model, "x": x, "y": y}, tmp_path / "m.pt")
    code = (
        "import torch; d = torch.load(r'%s', weights_only=False); m = d['model']; "
        "print(type(m.features[1][0].attn).__name__, torch.equal(m(d['x']), d['y']))" % (tmp_path / "m.pt")
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["PrunableShiftedWindowAttention", "True"]
