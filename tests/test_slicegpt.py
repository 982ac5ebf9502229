"""The SliceGPT invariant transform (``stream="slicegpt"``): exact before deletion, recorded, replayed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.structured import slicegpt

transformers = pytest.importorskip("transformers")
tv_vit = pytest.importorskip("torchvision.models.vision_transformer")


def _perturb_norms(model: nn.Module, kinds: tuple[type, ...] = ()) -> None:
    """Norm scales (and shifts) away from 1 (and 0), so folding them is tested."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, kinds) or type(m).__name__.endswith("RMSNorm"):
                m.weight.mul_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.add_(0.3 * torch.randn(m.bias.shape, generator=gen))


def llama(tied: bool = False) -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=tied,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg).eval()
    _perturb_norms(model)
    return model


def vit() -> nn.Module:
    torch.manual_seed(0)
    model = tv_vit.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10
    ).eval()
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    _perturb_norms(model, (nn.LayerNorm,))
    return model


def timm_vit() -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=10
    ).eval()
    with torch.no_grad():  # timm starts the position embedding and class token small
        for t in (model.pos_embed, model.cls_token):
            t.normal_()
    _perturb_norms(model, (nn.LayerNorm,))
    return model


def tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 64, (n, 12), generator=torch.Generator().manual_seed(seed))


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = model(x)
    return y.logits if hasattr(y, "logits") else y


CASES = {"llama": (llama, tokens), "vit": (vit, images), "timm_vit": (timm_vit, images)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rotated_model_equals_original(name):
    build, inputs = CASES[name]
    model, x = build(), inputs(2, 0)
    y0 = out(model, x)
    done = slicegpt.transform(model, [inputs(4, s) for s in (1, 2)])
    assert (out(model, x) - y0).abs().max() / y0.abs().max() < 1e-5
    ev = done.eigenvalues
    assert torch.all(ev[:-1] >= ev[1:]) and ev[0] > ev[-1]
    if name != "llama":  # LayerNorm made RMSNorm by centring the stream
        assert done.record["rmsnorm"] and all(
            type(model.get_submodule(n)) is slicegpt.CentredNorm for n in done.record["rmsnorm"]
        )
        assert ev[-1] / ev[0] < 1e-9  # the centred stream has nothing along the all-ones direction
    else:
        assert done.record["rmsnorm"] == []
    done.undo()
    assert torch.equal(out(model, x), y0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_prune_slicegpt_records_transform_and_is_approximate(name, tmp_path):
    build, inputs = CASES[name]
    model, x = build(), inputs(2, 0)
    data = [inputs(4, s) for s in (1, 2, 3)]
    y0 = out(model, x)
    res = pk.prune(model, x, ratio=0.25, stream="slicegpt", data=data)
    t = res.plan.meta["transform"]
    assert t["kind"] == "slicegpt" and t["width"] in (32, 64) and len(t["norms"]) == 5
    assert slicegpt.REASON in res.plan.approximate
    err = (out(model, x) - y0).abs().max() / y0.abs().max()
    assert res.approx_error == pytest.approx(float(err), rel=1e-4) and 0 < res.approx_error < 10
    assert res.params_after < res.params_before
    # the norms average over the kept channels: their weight is sqrt(D / D')
    norm = model.get_submodule(t["norms"][0]).weight
    assert torch.allclose(norm, torch.full_like(norm, (t["width"] / norm.shape[0]) ** 0.5))
    if name != "llama":  # save/load replays the LayerNorm -> RMSNorm change and the cut
        with pytest.warns(UserWarning, match="no spec rebuilds"):
            pk.save(model, tmp_path / "ck", plan=res.plan)
        back = pk.load(tmp_path / "ck", model=build())
        assert type(back.get_submodule(t["norms"][-1])) is slicegpt.CentredNorm
        assert torch.equal(out(back, x), out(model, x))


def test_check_slicegpt_reports_approximate_and_leaves_model():
    model, x = llama(), tokens(2, 0)
    before = copy.deepcopy(model.state_dict())
    rep = pk.check(model, x, ratio=0.25, stream="slicegpt", data=[tokens(4, 1)])
    assert rep.status == "approximate" and not rep.ok and 0 < rep.rel_err < 10
    assert rep.plan.meta["transform"]["kind"] == "slicegpt"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _unchanged(model: nn.Module, before: dict) -> bool:
    return all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "data, match",
    [
        (None, "PCA of the stream: pass data"),
        ([], "no batches"),
        ([torch.randn(2, 3, 16, 16)], "does not run through the model"),
    ],
)
def test_bad_calibration_data_is_one_error_and_model_restored(data, match):
    model, x = vit(), images(2, 0)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=match):
        pk.prune(model, x, ratio=0.25, stream="slicegpt", data=data)
    assert _unchanged(model, before) and type(model.encoder.ln) is nn.LayerNorm


def test_unsupported_model_names_its_norm():
    net = nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    with pytest.raises(
        ConfigError, match=r"Sequential is not one of them \(its first norm is 1 \(LayerNorm\)"
    ):
        pk.prune(net, torch.zeros(1, 3), ratio=0.25, stream="slicegpt", data=[torch.zeros(2, 3)])


class VisionTransformer(nn.Module):
    """A class with a followed bare name (torchvision's and timm's ViT) but from this module."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.head = nn.LayerNorm(8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x))


def test_a_class_of_a_followed_name_from_another_package_is_refused_by_its_module():
    model = VisionTransformer().eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(
        ConfigError, match=r"test_slicegpt\.VisionTransformer is not one of them \(its first norm"
    ):
        pk.prune(model, torch.randn(1, 8), ratio=0.25, stream="slicegpt", data=[torch.randn(2, 8)])
    assert _unchanged(model, before)


def test_a_timm_vit_with_layer_scale_is_refused_and_left_unchanged():
    timm = pytest.importorskip("timm")
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4, init_values=0.1
    ).eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=r"blocks\.0 scales its outputs \(LayerScale\)"):
        pk.prune(model, images(1, 0), ratio=0.25, stream="slicegpt", data=[images(2, 1)])
    assert _unchanged(model, before)


def test_tied_head_is_refused():
    model = llama(tied=True)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="ties lm_head"):
        pk.prune(model, tokens(2, 0), ratio=0.25, stream="slicegpt", data=[tokens(4, 1)])
    assert _unchanged(model, before)


def test_plan_prune_refuses_slicegpt():
    with pytest.raises(ConfigError, match="rotates its weights"):
        pk.plan_prune(vit(), images(1, 0), ratio=0.25, stream="slicegpt", data=[images(2, 1)])
