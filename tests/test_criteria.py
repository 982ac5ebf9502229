"""Importance criteria: scores vs hand-computed values on tiny layers, data handling, SparseGPT, exactness."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunekit.criteria import ScoreContext, get_criterion
from prunekit.criteria.activation import Activation
from prunekit.criteria.bnscale import BNScale
from prunekit.criteria.fpgm import FPGM
from prunekit.criteria.hessian import Hessian
from prunekit.criteria.magnitude import Magnitude
from prunekit.criteria.random import RandomScore
from prunekit.criteria.taylor import Taylor
from prunekit.criteria.wanda import Wanda
from prunekit.errors import ConfigError
from prunekit.graph.groups import build_groups
from prunekit.sparse import get_mask, sparsify
from prunekit.sparse.patterns import parse_pattern
from prunekit.sparse.sparsegpt import sparsegpt_layer
from prunekit.structured.api import check, plan_prune

W1 = torch.tensor(
    [[1.0, -2.0, 0.5], [0.0, 3.0, -1.0], [2.0, 1.0, 1.0], [-0.5, 0.5, -4.0]]
)  # a fixed 4x3 weight
B1 = torch.tensor([0.1, -0.2, 0.3, 0.0])
W2 = torch.tensor([[1.0, 0.0, -1.0, 2.0], [0.5, -3.0, 1.0, 0.0]])
X1 = torch.tensor([[1.0, 0.0, 2.0], [-1.0, 1.0, 1.0]])
X2 = torch.tensor([[0.5, -2.0, 1.0]])


def mlp() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(W1)
        net[0].bias.copy_(B1)
        net[2].weight.copy_(W2)
    return net


def hidden_group(net: nn.Module):
    (g,) = build_groups(net, torch.zeros(1, 3)).prunable_groups
    assert g.width == 4
    return g


def sum_loss(out: torch.Tensor) -> torch.Tensor:
    return out.sum()


def test_magnitude_reductions_by_hand():
    net = mlp()
    g = hidden_group(net)
    ctx = ScoreContext.of(net, None)
    # elements each hidden unit removes: its row of W1, its bias, its column of W2 (6 entries)
    rows = [[*W1[i].abs().tolist(), abs(B1[i].item()), *W2[:, i].abs().tolist()] for i in range(4)]
    assert Magnitude(1)(g, ctx).tolist() == pytest.approx([sum(r) for r in rows])
    assert Magnitude(1, "mean")(g, ctx).tolist() == pytest.approx([sum(r) / 6 for r in rows])
    assert Magnitude(1, "max")(g, ctx).tolist() == pytest.approx([max(r) for r in rows])
    assert Magnitude(2)(g, ctx).tolist() == pytest.approx([sum(v * v for v in r) for r in rows])
    # the registered l1 (engine's) and the new interface agree
    assert get_criterion("l1")(g, ctx).tolist() == pytest.approx(Magnitude(1)(g, ctx).tolist())
    with pytest.raises(ConfigError, match="reduction"):
        Magnitude(1, "median")


def test_random_is_seeded_and_order_free():
    net = mlp()
    g = hidden_group(net)
    a = RandomScore(seed=3)(g, ScoreContext.of(net, None))
    b = RandomScore(seed=3)(g, ScoreContext.of(net, None))
    c = RandomScore(seed=4)(g, ScoreContext.of(net, None))
    assert torch.equal(a, b) and not torch.equal(a, c)
    ctx = ScoreContext.of(net, None)
    one = RandomScore(seed=3).weight_scores(ctx, ["2.weight", "0.weight"])
    assert torch.equal(one["0.weight"], RandomScore(seed=3).weight_scores(ctx, ["0.weight"])["0.weight"])


def conv_bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1), nn.Flatten()
    )
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.5, -2.0, 1.0]))
        net[1].bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    return net


def test_bn_scale_is_abs_gamma_and_falls_back_to_l1_without_a_bn():
    net = conv_bn_net()
    (g,) = build_groups(net, torch.zeros(1, 2, 4, 4)).prunable_groups
    assert BNScale()(g, ScoreContext.of(net, None)).tolist() == [0.5, 2.0, 1.0]
    with pytest.raises(ConfigError, match=r"bn_scale.*cannot score group"):
        BNScale(fallback=None)(hidden_group(mlp()), ScoreContext.of(mlp(), None))
    ctx = ScoreContext.of(mlp(), None)
    with pytest.warns(UserWarning, match=r"no BatchNorm weight.*scored by 'l1'"):
        got = get_criterion("bn_scale")(hidden_group(mlp()), ctx)
    assert got.tolist() == get_criterion("l1")(hidden_group(mlp()), ctx).tolist()


def test_groups_bn_scale_scores_by_its_fallback_are_named_in_the_plan():
    import prunekit as pk

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 6), nn.ReLU(),
        nn.Linear(6, 2),
    )  # fmt: skip
    x = torch.randn(1, 2, 6, 6)
    with pytest.warns(UserWarning, match="no BatchNorm weight"):
        plan = pk.prune(net, x, ratio=0.5, criterion="bn_scale").plan
    by_fallback = {g.id for g in plan.groups if {"name": "4.weight", "dim": 0} in plan_members(g)}
    assert len(by_fallback) == 1  # the Linear between the conv block and the output has no BatchNorm
    assert plan.meta["scored_by"] == {
        str(gid): "l1 (bn_scale fallback: no BatchNorm weight in the group)" for gid in by_fallback
    }
    assert type(plan).from_dict(plan.to_dict()) == plan
    assert "scored_by" not in pk.prune(mlp(), X1, ratio=0.5).plan.meta  # l2 scores every group itself


def plan_members(group) -> list[dict]:
    return [{"name": m["name"], "dim": m["dim"]} for m in group.members]


def test_taylor_by_hand_over_all_batches():
    net = mlp()
    ctx = ScoreContext.of(net, None, data=[X1, X2], loss_fn=sum_loss)
    # first layer: y = W1 x + b, loss = sum(W2 relu(y)); dL/dW1[i, j] = sum_n [y_ni > 0] * colsum(W2)_i * x_nj
    v = W2.sum(0)
    terms = []
    for x in (X1, X2):
        active = (x @ W1.t() + B1 > 0).float()
        g = (active * v).t() @ x
        terms.append((W1 * g).abs())
    want = (terms[0] + terms[1]) / 2
    got = Taylor(per_sample=False).weight_scores(ctx, ["0.weight"])["0.weight"]
    assert torch.allclose(got.float(), want, atol=1e-6)
    assert not torch.allclose(got.float(), terms[1], atol=1e-6)  # not the last batch only
    assert all(p.grad is None for p in net.parameters())  # .grad untouched


def test_taylor_counts_batchnorm_parameters():
    net = conv_bn_net()
    (g,) = build_groups(net, torch.zeros(1, 2, 4, 4)).prunable_groups
    torch.manual_seed(1)
    data = [torch.randn(2, 2, 4, 4) for _ in range(2)]
    got = Taylor(per_sample=False)(g, ScoreContext.of(net, None, data=data, loss_fn=lambda o: (o**2).mean()))
    names = ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight"]
    dims = [0, 0, 0, 0, 1]
    params = dict(net.named_parameters())
    want = torch.zeros(3, dtype=torch.float64)
    bn_part = torch.zeros(3, dtype=torch.float64)
    net.eval()
    for x in data:
        grads = torch.autograd.grad((net(x) ** 2).mean(), [params[n] for n in names])
        for n, d, gr in zip(names, dims, grads, strict=True):
            t = (params[n].detach() * gr).abs().double().movedim(d, 0).reshape(3, -1).sum(1) / len(data)
            want += t
            if n.startswith("1."):
                bn_part += t
    assert torch.allclose(got, want, rtol=1e-5)
    assert (bn_part > 0).all() and net[1].training is False


def test_hessian_accumulates_every_batch():
    net = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
    # loss = sum(w . x) -> gradient of a batch = sum of its rows
    g1, g2 = X1.sum(0), X2.sum(0)
    w2 = net.weight.detach()[0] ** 2
    both = Hessian(per_sample=False).weight_scores(
        ScoreContext.of(net, None, data=[X1, X2], loss_fn=sum_loss), ["weight"]
    )
    last = Hessian(per_sample=False).weight_scores(
        ScoreContext.of(net, None, data=[X2], loss_fn=sum_loss), ["weight"]
    )
    assert both["weight"][0].tolist() == pytest.approx(((g1**2 + g2**2) / 2 * w2 / 2).tolist())
    assert last["weight"][0].tolist() == pytest.approx((g2**2 * w2 / 2).tolist())
    assert not torch.allclose(both["weight"], last["weight"])


def test_per_sample_taylor_and_fisher_by_hand():
    """Each row's own gradient: mean over the 3 rows of |w * g_i| and of g_i**2 (not the batch gradient)."""
    net = mlp()
    data = [X1, X2]
    ctx = ScoreContext.of(net, None, data=data, loss_fn=sum_loss)
    v = W2.sum(0)
    rows = [x[None] for x in torch.cat(data)]
    g = [((x @ W1.t() + B1 > 0).float() * v).t() @ x for x in rows]  # dL_i/dW1 for each row
    want_taylor = sum((W1 * gi).abs() for gi in g) / 3
    want_fisher = sum(gi**2 for gi in g) / 3 * W1**2 / 2
    got = Taylor().weight_scores(ctx, ["0.weight"])["0.weight"]
    assert torch.allclose(got.float(), want_taylor, atol=1e-6)
    assert not torch.allclose(got, Taylor(per_sample=False).weight_scores(ctx, ["0.weight"])["0.weight"])
    got = Hessian().weight_scores(ctx, ["0.weight"])["0.weight"]
    assert torch.allclose(got.float(), want_fisher, atol=1e-5)
    assert all(p.grad is None for p in net.parameters())


class _Branchy(nn.Module):
    """A forward with data-dependent control flow, which torch.func.vmap cannot batch."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if bool(h.sum() > 0):
            h = h * 2
        return self.b(torch.relu(h))


def test_per_sample_gradients_fall_back_to_one_backward_per_row():
    torch.manual_seed(0)
    net = _Branchy()
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    got = Hessian().weight_scores(ScoreContext.of(net, None, data=[(x, y)]), ["a.weight"])["a.weight"]
    want = torch.zeros_like(net.a.weight)
    for i in range(5):
        loss = nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1])
        gi = torch.autograd.grad(loss, net.a.weight)[0]
        want += gi**2 / 5
    assert torch.allclose(got.float(), want * net.a.weight.detach() ** 2 / 2, rtol=1e-5, atol=1e-9)


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(3.0)
    data = [torch.tensor([[1.0], [2.0]]), torch.tensor([[4.0]])]
    ctx = ScoreContext.of(net, None, data=data, loss_fn=lambda o: (o**2).sum() / 2)
    # d2L/dw2 = sum x^2 per batch: 5 and 16, mean 10.5; saliency 10.5 * 9 / 2
    got = Hessian(method="hutchinson", samples=2).weight_scores(ctx, ["weight"])["weight"]
    assert got.item() == pytest.approx(10.5 * 9 / 2)


def test_fpgm_by_hand():
    net = mlp()
    got = FPGM()(hidden_group(net), ScoreContext.of(net, None))
    want = [sum(math.dist(W1[i].tolist(), W1[j].tolist()) for j in range(4)) for i in range(4)]
    assert got.tolist() == pytest.approx(want)


def test_activation_and_apoz_by_hand():
    net = mlp()
    g = hidden_group(net)
    ctx = ScoreContext.of(net, None, data=[X1, (X2, torch.tensor([0]))])  # targets are ignored
    out = torch.cat([X1, X2]) @ W1.t() + B1  # the first layer's output, 3 rows
    assert Activation()(g, ctx).tolist() == pytest.approx(out.abs().mean(0).tolist())
    assert Activation("apoz")(g, ctx).tolist() == pytest.approx((1 - (out <= 0).float().mean(0)).tolist())


def test_wanda_by_hand_linear_and_conv():
    net = mlp()
    got = Wanda().weight_scores(ScoreContext.of(net, None, data=[X1, X2]), ["0.weight"])["0.weight"]
    norms = torch.cat([X1, X2]).pow(2).sum(0).sqrt()
    assert torch.allclose(got.float(), W1.abs() * norms)
    conv = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False))
    x = torch.randn(2, 2, 3, 3)
    got = Wanda().weight_scores(ScoreContext.of(conv, None, data=[x]), ["0.weight"])["0.weight"]
    per_channel = x.pow(2).sum((0, 2, 3)).sqrt()
    assert torch.allclose(got.float(), conv[0].weight.abs() * per_channel.reshape(1, 2, 1, 1), rtol=1e-5)


def test_data_criteria_without_data_raise_before_touching():
    net = mlp()
    before = [p.clone() for p in net.parameters()]
    for name in ("taylor", "hessian", "activation", "apoz", "wanda"):
        with pytest.raises(ConfigError, match="data-driven"):
            plan_prune(net, torch.zeros(1, 3), ratio=0.5, criterion=name)
    for name in ("taylor", "hessian", "wanda", "sparsegpt"):
        with pytest.raises(ConfigError, match="data-driven"):
            sparsify(net, 0.5, criterion=name)
    with pytest.raises(ConfigError, match="needs a loss"):
        plan_prune(net, torch.zeros(1, 3), ratio=0.5, criterion="taylor", data=[X1])
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert get_mask(net[0]) is None


def test_sparsify_with_wanda_and_taylor_keeps_the_best_scored():
    net = mlp()
    res = sparsify(net, 0.5, criterion="wanda", data=[X1, X2], include=["0"])
    score = W1.abs() * torch.cat([X1, X2]).pow(2).sum(0).sqrt()
    keep = get_mask(net[0]).bool()
    assert res.layers["0"].pruned == 6
    assert score[keep].min() >= score[~keep].max()
    net = mlp()
    res = sparsify(net, 0.25, criterion="taylor", data=[X1, X2], loss_fn=sum_loss, include=["0"])
    assert res.layers["0"].pruned == 3 and res.criterion == "taylor"


def correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=gen) * 0.3 + torch.eye(d)
    scale = torch.rand(d, generator=gen) * 3 + 0.2
    return (torch.randn(n, d, generator=gen) @ mix) * scale


def test_sparsegpt_beats_magnitude_and_keeps_exact_counts():
    torch.manual_seed(0)
    layer = nn.Linear(64, 32, bias=False)
    x = correlated_inputs(512, 64)
    dense = x @ layer.weight.detach().t()

    def error(model: nn.Module) -> float:
        with torch.no_grad():
            return float((model(x) - dense).pow(2).sum() / dense.pow(2).sum())

    errs = {}
    for crit in ("magnitude", "wanda", "sparsegpt"):
        for pattern in ("unstructured", "2:4"):
            m = nn.Sequential(nn.Linear(64, 32, bias=False))
            m[0].weight.data.copy_(layer.weight.data)
            res = sparsify(
                m, None if pattern == "2:4" else 0.5, pattern=pattern, criterion=crit, data=[x[:256], x[256:]]
            )
            assert res.layers["0"].pruned == 1024
            keep = get_mask(m[0]).bool()
            if pattern == "2:4":
                assert (keep.reshape(32, 16, 4).sum(-1) == 2).all()
            assert int((m[0].weight == 0).sum()) >= 1024
            errs[crit, pattern] = error(m)
    for pattern in ("unstructured", "2:4"):
        assert errs["sparsegpt", pattern] < 0.7 * errs["magnitude", pattern]
        assert errs["sparsegpt", pattern] < errs["wanda", pattern]


def test_sparsegpt_layer_with_identity_hessian_is_magnitude():
    w = torch.tensor([[1.0, -3.0, 0.5, 2.0], [0.1, 0.2, -0.3, 4.0]])
    new, keep = sparsegpt_layer(w, torch.eye(4), 0.5, parse_pattern("unstructured"), percdamp=0.0)
    # H = I: no error is propagated, the 4 largest |w| stay unchanged
    assert torch.equal(keep, w.abs() >= 1.0)
    assert torch.allclose(new.float(), w * keep)


def test_sparsegpt_conv_nm_along_input_channels():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    res = sparsify(
        net, None, pattern="2:4", criterion="sparsegpt", data=[torch.randn(4, 8, 6, 6)], include=["0"]
    )
    keep = get_mask(net[0]).bool()  # (4, 8, 3, 3): groups of 4 input channels at each kernel position
    assert res.layers["0"].pruned == 4 * 8 * 9 // 2
    assert (keep.permute(0, 2, 3, 1).reshape(-1, 4).sum(-1) == 2).all()
    with pytest.raises(ConfigError, match="scope='local'"):
        sparsify(nn.Sequential(nn.Linear(4, 4)), 0.5, criterion="sparsegpt", scope="global", data=[X1])


class Res(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.relu(h + self.b(self.a(h)))
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize(
    "criterion",
    [
        "l1",
        "l2",
        "magnitude",
        "random",
        "bn_scale",
        "taylor",
        "hessian",
        "fpgm",
        "activation",
        "apoz",
        "wanda",
    ],
)
def test_structured_prune_with_each_criterion_is_exact(criterion):
    torch.manual_seed(0)
    net = Res().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.2, 1.5)
            m.running_mean.uniform_(-0.2, 0.2)
    x = torch.randn(2, 1, 8, 8)
    data = [(torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))) for _ in range(2)]
    rep = check(net, x, ratio=0.5, criterion=criterion, data=data)
    assert rep.ok and rep.removed_units > 0 and rep.plan.meta["criterion"] == criterion


def test_load_batches_from_files(tmp_path):
    from prunekit.models.data import load_batches

    x, y = torch.randn(10, 3), torch.arange(10)
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    got = load_batches(str(tmp_path / "d.pt"), batch_size=4)
    assert [len(b[0]) for b in got] == [4, 4, 2] and torch.equal(got[2][1], y[8:])
    import numpy as np

    np.savez(tmp_path / "d.npz", x=x.numpy())
    got = load_batches(str(tmp_path / "d.npz"), batch_size=6, max_batches=1)
    assert len(got) == 1 and torch.equal(got[0], x[:6])
    torch.save((x, y[:3]), tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="one entry per row"):
        load_batches(str(tmp_path / "bad.pt"))
    with pytest.raises(ConfigError, match="no such file"):
        load_batches(str(tmp_path / "missing.pt"))
    # a CLI-style run: taylor on the digits demo model with file data
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
    data = load_batches("digits", batch_size=32, max_batches=2)
    assert data[0][0].shape == (32, 1, 8, 8) and data[0][1].dtype == torch.int64
    rep = check(net, torch.zeros(1, 1, 8, 8), ratio=0.5, criterion="taylor", data=data)
    assert rep.ok and rep.removed_units > 0


def test_fpgm_scores_attention_heads_and_embedding_columns():
    """Groups with no output filter (heads, embedding columns) are judged on the weight slices they cut."""
    from prunekit.structured import check

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(32, 16)
            self.mha = nn.MultiheadAttention(16, 4, batch_first=True)
            self.fc = nn.Linear(16, 3)

        def forward(self, t):
            x = self.emb(t)
            return self.fc(self.mha(x, x, x, need_weights=False)[0].mean(1))

    torch.manual_seed(0)
    rep = check(Net().eval(), torch.randint(0, 32, (2, 5)), ratio=0.5, criterion="fpgm")
    assert rep.ok and rep.removed_units > 0


def test_per_sample_gradients_vmap_matches_one_backward_per_row_with_masks_and_tied_weights(monkeypatch):
    from prunekit.criteria import _data

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    net[2].weight = net[0].weight  # tied: both names get the same gradient
    sparsify(net, 0.5, criterion="magnitude", include=["4"])  # a masked weight: its unmasked original
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    ctx = ScoreContext.of(net, None, data=[(x, y)])
    named, params = _data._trainable(ctx, "t")
    by_id = {id(p): g for p, g in zip(params, _data._looped(ctx, params, x, y, 5, "t"), strict=True)}
    monkeypatch.setattr(_data, "_looped", lambda *a: pytest.fail("vmap should handle this model"))
    got = next(_data.per_sample_grads(ctx, "t"))
    assert "4.parametrizations.weight.original" in got and got["0.weight"].shape == (5, 4, 4)
    for name, p in named:
        assert torch.allclose(got[name], by_id[id(p)], atol=1e-6), name
    assert torch.equal(got["0.weight"], got["2.weight"])
