"""timm models (``timm:NAME`` specs, ``pretrained=False``): a small sample prunes exactly, heads included."""

from __future__ import annotations

import pytest
import torch
from _engine_helpers import assert_exact, randomize

from prunekit.errors import ModelLoadError
from prunekit.models.spec import load_model

timm = pytest.importorskip("timm")
torch.set_num_threads(1)


@pytest.mark.parametrize(
    ("name", "kwargs", "side"),
    [
        ("vit_tiny_patch16_224", {"img_size": 32, "depth": 2}, 32),
        ("convnext_atto", {}, 32),
        ("mobilenetv3_small_050", {}, 32),
    ],
)
def test_timm_sample_prunes_exactly(name, kwargs, side):
    torch.manual_seed(0)
    model = randomize(timm.create_model(name, pretrained=False, **kwargs).eval())
    rep = assert_exact(model, torch.randn(1, 3, side, side), 0.5)
    assert rep.macs_ratio < 0.8
    if name.startswith("vit"):  # timm Attention: reshape(B, N, 3, self.num_heads, self.head_dim)
        assert rep.plan.attrs["blocks.0.attn"] == {"num_heads": [3, 1], "attn_dim": [192, 64]}


def test_timm_spec_builds_offline_and_rejects_unknown_names():
    assert type(load_model("timm:resnet10t")).__name__ == "ResNet"
    with pytest.raises(ModelLoadError, match="close names"):
        load_model("timm:resnet10tt")
