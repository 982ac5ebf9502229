"""Layer pruning: residual-block discovery, exact removal of f(x)=0 blocks, shapes kept, replay."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from prunekit.errors import ApplyError, ConfigError
from prunekit.structured.layers import SkipBlock, find_blocks, load_removed, prune_layers, remove_blocks
from prunekit.structured.oracle import run_outputs


class Res(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


class Plain(nn.Module):  # same shapes, no residual: never a candidate
    def __init__(self, d: int) -> None:
        super().__init__()
        self.f = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), Res(8), Plain(8), Res(8), Res(8), nn.Linear(8, 3))


def test_zero_branch_block_is_found_scored_zero_and_removed_exactly() -> None:
    net = _mlp()
    with torch.no_grad():
        net[3].f[2].weight.zero_()
        net[3].f[2].bias.zero_()
    x = torch.randn(5, 6)
    ref = net(x)
    res = prune_layers(net, x, n=1)
    assert res.candidates == ["1", "3", "4"]
    assert res.scores["3"] == pytest.approx(0.0, abs=1e-12) and res.scores["1"] > 0 and res.scores["4"] > 0
    assert res.removed == ["3"] and isinstance(net[3], SkipBlock)
    assert torch.equal(net(x), ref)
    assert res.params_before - res.params_after == 2 * (8 * 8 + 8)


def test_resnet_zeroed_bn2_is_exact_and_shapes_kept() -> None:
    torch.manual_seed(0)
    m = torchvision.models.resnet18().eval()
    x = torch.randn(2, 3, 32, 32)
    assert find_blocks(m, x) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    with torch.no_grad():  # f(x) = bn2(...) = 0 and relu(x + 0) = x because x >= 0
        m.layer3[1].bn2.weight.zero_()
        m.layer3[1].bn2.bias.zero_()
    ref = m(x)
    res = prune_layers(m, x, n=1)
    assert res.removed == ["layer3.1"] and res.kinds["layer3.1"] == "BasicBlock"
    assert torch.allclose(m(x), ref, atol=1e-6, rtol=0)
    res2 = prune_layers(m, x, ratio=0.5)  # layer3.1 is a SkipBlock now: no longer a candidate
    assert len(res2.candidates) == 4 and len(res2.removed) == 2
    assert m(x).shape == (2, 1000) and res2.macs_after < res2.macs_before


def test_bottleneck_vit_and_bert_blocks_keep_output_shapes() -> None:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    r50 = torchvision.models.resnet50()
    assert len(find_blocks(r50, torch.zeros(1, 3, 32, 32))) == 12  # 16 Bottlenecks minus 4 downsampling
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=64)
    x = torch.randn(2, 3, 32, 32)
    res = prune_layers(vit, x, n=2)
    assert len(res.candidates) == 4 and res.candidates[0] == "encoder.layers.encoder_layer_0"
    assert vit(x).shape == (2, 1000) and len(res.removed) == 2
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, vocab_size=100
    )
    bert = transformers.BertModel(cfg).eval()
    inputs = {"input_ids": torch.randint(0, 100, (2, 7))}
    shapes = [o.shape for o in run_outputs(bert, inputs)]
    res = prune_layers(bert, inputs, n=3)
    assert res.candidates == [f"encoder.layer.{i}" for i in range(4)] and len(res.removed) == 3
    assert [o.shape for o in run_outputs(bert, inputs)] == shapes


def test_yolo_c2f_bottlenecks_with_shortcut_only() -> None:
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    y = tasks.DetectionModel("yolov8n.yaml", verbose=False).eval()
    x = torch.zeros(1, 3, 64, 64)
    blocks = find_blocks(y, x)
    assert blocks == [
        "model.2.m.0",
        "model.4.m.0",
        "model.4.m.1",
        "model.6.m.0",
        "model.6.m.1",
        "model.8.m.0",
    ]
    assert all(y.get_submodule(b).add for b in blocks)
    shapes = [o.shape for o in run_outputs(y, x)]
    prune_layers(y, x, n=2)
    assert [o.shape for o in run_outputs(y, x)] == shapes


def test_eval_drop_scores_saved_result_replays(tmp_path) -> None:
    net = _mlp()
    x = torch.randn(4, 6)
    fresh = copy.deepcopy(net)
    target = net(x).detach()
    res = prune_layers(net, x, n=1, eval_fn=lambda m: -float((m(x) - target).abs().mean()))
    assert res.score == "eval_drop" and set(res.scores) == {"1", "3", "4"}
    assert min(res.scores.values()) == res.scores[res.removed[0]]
    path = res.save(tmp_path / "layers.json")
    remove_blocks(fresh, load_removed(path), x)
    assert torch.equal(fresh(x), net(x))


def test_errors_leave_model_untouched() -> None:
    net = _mlp()
    x = torch.randn(2, 6)
    with pytest.raises(ConfigError, match="at least one must stay"):
        prune_layers(net, x, n=3)
    with pytest.raises(ConfigError, match="exactly one"):
        prune_layers(net, x)
    with pytest.raises(ConfigError, match="no block named"):
        remove_blocks(net, ["9"], x)
    with pytest.raises(ApplyError):  # removing the first Linear changes the shapes: rolled back
        remove_blocks(net, ["1", "0"], x)
    assert not any(isinstance(m, SkipBlock) for m in net.modules())


def test_hf_layers_are_deleted_reindexed_config_follows_and_checkpoint_replays(tmp_path):
    import json

    transformers = pytest.importorskip("transformers")
    from prunekit.deploy.checkpoint import load, save
    from prunekit.models.spec import load_model

    cfg = {"model_type": "qwen2", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 100,
           "architectures": ["Qwen2ForCausalLM"]}  # fmt: skip
    spec = "hf:" + json.dumps(cfg)
    model = load_model(spec)
    assert isinstance(model, transformers.Qwen2ForCausalLM)
    x = {"input_ids": torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))}
    res = prune_layers(model, x, n=2)
    assert len(res.removed) == 2 and not any(isinstance(m, SkipBlock) for m in model.modules())
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    assert len(model.config.layer_types) == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    assert all(k.startswith(("model.layers.0.", "model.layers.1.")) or ".layers." not in k
               for k in model.state_dict())  # fmt: skip
    out = model.generate(x["input_ids"][:1], max_new_tokens=3, do_sample=False)  # the cache has 2 layers
    assert out.shape == (1, 10)
    save(model, tmp_path / "ck", spec=spec)
    back = load(tmp_path / "ck")
    assert back.config.num_hidden_layers == 2
    assert torch.equal(back(**x).logits, model(**x).logits)
