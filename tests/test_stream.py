"""Approximate cuts of a LayerNorm/RMSNorm-ed residual stream (``stream=True``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.plan import Plan
from prunekit.structured import apply
from prunekit.structured.consistency import mismatches

C, HEADS, VOCAB, SEQ = 32, 4, 50, 6


class Block(nn.Module):
    def __init__(self, rms: bool) -> None:
        super().__init__()
        self.ln1 = nn.RMSNorm(C) if rms else nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)
        self.ln2 = nn.RMSNorm(C) if rms else nn.LayerNorm(C)
        self.fc1 = nn.Linear(C, 2 * C)
        self.fc2 = nn.Linear(2 * C, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n = x.shape[:2]
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Tiny(nn.Module):
    """Token embedding + position embedding, two pre-norm blocks, a final norm and a classifier head."""

    def __init__(self, rms: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, C)
        self.pos = nn.Parameter(torch.randn(1, SEQ, C) * 0.1)
        self.blocks = nn.Sequential(Block(rms), Block(rms))
        self.norm = nn.RMSNorm(C) if rms else nn.LayerNorm(C)
        self.head = nn.Linear(C, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.emb(ids) + self.pos)).mean(1))


def _ids(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed))


def _model(rms: bool = False) -> Tiny:
    torch.manual_seed(0)
    return Tiny(rms).eval()


def _zero_channel(model: Tiny, k: int) -> None:
    """Make stream channel ``k`` exactly zero everywhere (nothing writes into it), and MLP hidden unit ``k``
    of every block dead (zero weights in and out: l2 ranks it first, and its removal is exact)."""
    with torch.no_grad():
        for blk in model.blocks:
            blk.fc1.weight[k] = 0
            blk.fc1.bias[k] = 0
            blk.fc2.weight[:, k] = 0
        model.emb.weight[:, k] = 0
        model.pos[..., k] = 0
        for blk in model.blocks:
            for lin in (blk.proj, blk.fc2):
                lin.weight[k] = 0
                lin.bias[k] = 0


CALIB = [_ids(8, 1), _ids(8, 2)]


@pytest.mark.parametrize("rms", [False, True])
def test_stream_cut_runs_and_attributes_follow(rms: bool) -> None:
    model = _model(rms)
    x = _ids()
    res = pk.prune(model, x, ratio=0.25, stream=True, data=CALIB)
    assert model.emb.weight.shape == (VOCAB, C - 8)
    assert model.pos.shape == (1, SEQ, C - 8)
    assert model.norm.weight.shape == (C - 8,) and model.norm.normalized_shape == (C - 8,)
    assert model.blocks[1].fc2.out_features == C - 8 and model.head.in_features == C - 8
    assert mismatches(model) == []
    assert res.plan.approximate == ["LayerNorm statistics over a cut width"]
    assert res.plan.meta["stream"] == "activation"
    assert 0 < res.approx_error < 10
    assert model(x).shape == (4, 5)


def test_without_the_option_the_stream_stays() -> None:
    model = _model()
    res = pk.prune(model, _ids(), ratio=0.25)
    assert model.emb.weight.shape == (VOCAB, C)  # the stream is pinned by its norms
    assert model.blocks[0].fc1.out_features == 2 * C - 16  # the MLP is cut, exactly
    assert res.plan.approximate == [] and res.approx_error is None


def test_a_zero_channel_is_chosen_first_and_costs_little() -> None:
    model = _model()
    _zero_channel(model, 7)
    x = _ids()
    ratio = 0.6 / C  # one stream channel, one MLP unit per block, no head
    rep = pk.check(model, x, ratio=ratio, stream=True, data=CALIB)
    assert rep.plan.removals["emb.weight"] == {1: [7]}  # mean x**2 of channel 7 is exactly 0
    assert rep.status == "approximate" and not rep.ok
    assert rep.plan.removals["blocks.0.fc1.weight"] == {0: [7], 1: [7]}
    rand = pk.check(model, x, ratio=ratio, stream="random")
    assert rand.plan.removals["emb.weight"] != {1: [7]}
    # only the norms' statistics change (over C - 1 channels instead of C): an error of order 1/C
    assert rep.rel_err < 0.1
    assert rep.rel_err < rand.rel_err / 2


def test_check_never_calls_an_approximate_cut_exact() -> None:
    model = _model()
    rep = pk.check(model, _ids(), ratio=0.5, stream=True, data=CALIB)
    assert rep.status == "approximate" and rep.ok is False and rep.rel_err > 0
    assert rep.to_dict()["status"] == "approximate"
    exact = pk.check(model, _ids(), ratio=0.5)
    assert exact.status == "exact" and exact.ok


def test_verify_exact_of_an_approximate_plan_is_one_config_error() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="verify='exact' cannot hold"):
        pk.prune(model, _ids(), ratio=0.5, stream=True, data=CALIB, verify="exact")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_exact_reference_for_an_approximate_plan_is_one_config_error() -> None:
    from prunekit.structured.oracle import reference_outputs

    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = pk.plan_prune(model, _ids(), ratio=0.5, stream=True, data=CALIB)[0]
    assert plan.approximate
    ref = reference_outputs(model, plan, _ids())
    with pytest.raises(ConfigError, match=r"the plan is approximate .*an exact check against the masked"):
        apply(model, plan, _ids(), reference=ref)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    apply(model, plan, _ids())  # without the reference the same plan cuts


def test_bad_calibration_data() -> None:
    model = _model()
    with pytest.raises(ConfigError, match="pass data="):
        pk.prune(model, _ids(), ratio=0.5, stream=True)
    with pytest.raises(ConfigError, match="calibration batch 0 does not run"):
        pk.prune(model, _ids(), ratio=0.5, stream=True, data=[torch.zeros(2, 3, 4)])
    with pytest.raises(ConfigError, match="stream must be"):
        pk.prune(model, _ids(), ratio=0.5, stream="pca", data=CALIB)
    assert model.emb.weight.shape == (VOCAB, C)


@pytest.mark.filterwarnings("ignore:no spec rebuilds")
def test_plan_round_trips_and_replays(tmp_path) -> None:
    model = _model()
    x = _ids()
    res = pk.prune(model, x, ratio=0.5, stream=True, data=CALIB)
    plan = Plan.load(res.plan.save(tmp_path / "plan.json"))
    assert plan == res.plan and plan.approximate
    fresh = _model()
    apply(fresh, plan, x)
    assert fresh.norm.normalized_shape == (C // 2,)
    assert torch.equal(fresh(x), model(x))
    out = tmp_path / "ckpt"
    pk.save(model, out, plan=res.plan)
    loaded = pk.load(out, model=_model())
    assert torch.equal(loaded(x), model(x))


class Patches(nn.Module):
    """A patch embedding reshaped by a width: ``self.hidden_dim`` (followed by the cut) or a literal int."""

    def __init__(self, literal: bool) -> None:
        super().__init__()
        self.hidden_dim, self.literal = (None if literal else C), literal
        self.conv = nn.Conv2d(3, C, 2, stride=2)
        self.norm = nn.LayerNorm(C)
        self.head = nn.Linear(C, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = C if self.literal else self.hidden_dim
        x = self.conv(x).reshape(x.shape[0], width, -1).permute(0, 2, 1)
        return self.head(self.norm(x).mean(1))


@pytest.mark.parametrize("literal", [False, True])
def test_a_view_sized_by_the_width_follows_or_pins(literal: bool) -> None:
    torch.manual_seed(0)
    model = Patches(literal).eval()
    x = torch.randn(2, 3, 8, 8)
    pk.prune(model, x, ratio=0.25, stream=True, data=[torch.randn(4, 3, 8, 8)])
    kept = C if literal else C - 8
    assert model.conv.out_channels == kept and model.norm.normalized_shape == (kept,)
    assert model.hidden_dim == (None if literal else kept)
    assert model(x).shape == (2, 3)


def test_config_carries_stream_and_checks_it() -> None:
    cfg = pk.PruneConfig(ratio=0.25, stream=True, data=CALIB)
    assert cfg.verify is None and pk.PruneConfig.from_dict(cfg.to_dict()) == cfg.replace(data=None)
    with pytest.raises(ConfigError, match="stream must be"):
        pk.PruneConfig(stream="pca")
    with pytest.raises(ConfigError, match="does not combine with target"):
        pk.PruneConfig(stream=True, target=pk.Target(macs=0.5))
    with pytest.raises(ConfigError, match="verify must be"):
        pk.PruneConfig(verify="fast")
    by_config, by_keywords = _model(), _model()
    res = pk.prune(by_config, _ids(), cfg)
    assert res.plan == pk.prune(by_keywords, _ids(), ratio=0.25, stream=True, data=CALIB).plan
    assert res.plan.meta["config"]["stream"] is True and res.approx_error is not None
    with pytest.raises(ConfigError, match="conflicts"):
        pk.prune(_model(), _ids(), cfg, stream="random")


def test_verify_approximate_of_an_exact_plan_measures_the_error() -> None:
    res = pk.prune(_model(), _ids(), ratio=0.25, verify="approximate")
    assert res.plan.approximate == [] and 0 < res.approx_error < 10  # the MLP cut, against the original
    shapes = pk.prune(_model(), _ids(), ratio=0.25, stream=True, data=CALIB, verify="shapes")
    assert shapes.approx_error is None


def test_a_plan_whose_normalized_shape_disagrees_with_the_cut_is_refused() -> None:
    from prunekit.errors import PlanError

    x = _ids()
    plan, _ = pk.plan_prune(_model(), x, ratio=0.25, stream=True, data=CALIB)
    assert plan.attrs["norm"]["normalized_shape"] == [[C], [C - 8]]
    for wrong in ([[C], [C - 9]], [C, C - 8]):
        bad = Plan.from_dict(plan.to_dict())
        bad.attrs["norm"]["normalized_shape"] = wrong
        model = _model()
        with pytest.raises(PlanError, match=r"norm\.normalized_shape"):
            apply(model, bad, x)
        assert model.norm.normalized_shape == (C,)


def stream_model() -> nn.Module:
    """The CLI's model factory: a patch embedding sized by ``self.hidden_dim``."""
    torch.manual_seed(0)
    return Patches(literal=False).eval()


def stream_calib() -> list[torch.Tensor]:
    """The CLI's calibration batches."""
    return [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))]


def test_cli_prune_stream(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from prunekit.cli import app

    args = ["prune", f"{__name__}:stream_model", "--input-shape", "2,3,8,8", "--ratio", "0.25"]
    args += ["--data", f"{__name__}:stream_calib"]
    reports = {}
    for flags in ([], ["--stream"]):
        out = tmp_path / f"ck{len(flags)}"
        res = CliRunner().invoke(app, [*args, *flags, "--out", str(out), "--json", str(out) + ".json"])
        assert res.exit_code == 0, res.output
        reports[len(flags)] = json.loads((tmp_path / f"ck{len(flags)}.json").read_text())
    assert reports[0]["approx_error"] is None and "approximate" not in reports[0]["plan"]["meta"]
    assert reports[1]["approx_error"] > 0 and reports[1]["plan"]["meta"]["approximate"]
    assert reports[1]["plan"]["attrs"]["norm"]["normalized_shape"] == [[C], [C - 8]]


@pytest.mark.parametrize(("how", "expected"), [("output", 3), ("weighted", 0)])
def test_output_and_weighted_importance_see_the_norm_scale_and_the_consumers(how: str, expected: int) -> None:
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.LayerNorm(4), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [3, 3, 3]]))
        net[1].weight.copy_(torch.tensor([1.0, 2.0, 2.0, 0.01]))  # channel 3: largest input, tiny output
        net[2].weight.copy_(torch.tensor([[0.0, 1, 1, 100], [0.0, 1, 1, 100]]))  # nothing reads channel 0
    data = [torch.randn(64, 3, generator=torch.Generator().manual_seed(0))]
    first = {}
    for kind in ("activation", how):
        plan, _ = pk.plan_prune(net, data[0][:2], ratio=0.25, stream=kind, data=data)
        first[kind] = plan.removals["0.weight"][0]
    assert first[how] == [expected]
    assert first["activation"] != [3]  # the input's energy alone ranks channel 3 first to keep
    assert plan.meta["stream"] == how


def test_an_unknown_stream_importance_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match="'output', 'weighted'"):
        pk.plan_prune(_model(), _ids(), ratio=0.1, stream="energy", data=CALIB)


def test_gpt2_conv1d_views_follow_a_stream_cut(tmp_path) -> None:
    # transformers' Conv1D sizes its output view by self.nf: before, that int pinned every stream, head and
    # FFN group of GPT-2 in stream mode (nothing was cut)
    transformers = pytest.importorskip("transformers")

    def build() -> nn.Module:
        torch.manual_seed(0)
        cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=16,
                                      bos_token_id=0, eos_token_id=0)  # fmt: skip
        return transformers.GPT2LMHeadModel(cfg).eval()

    model, ids = build(), {"input_ids": _ids(1)}
    res = pk.prune(model, ids, pk.PruneConfig(ratio=0.5, stream=True, data=[{"input_ids": _ids(2, 1)}]))
    assert res.plan.approximate and model.transformer.wte.weight.shape == (VOCAB, 16)
    assert model.lm_head.weight is model.transformer.wte.weight  # the tie kept
    assert model.generate(**ids, max_new_tokens=2, do_sample=False).shape == (1, SEQ + 2)
    with pytest.warns(UserWarning, match="no spec rebuilds"):
        pk.save(model, tmp_path / "ck", plan=res.plan)
    back = pk.load(tmp_path / "ck", model=build())
    with torch.no_grad():
        assert torch.equal(back(**ids).logits, model(**ids).logits)
