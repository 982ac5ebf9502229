"""One criterion interface and registry: a criterion defined here (outside prunekit) works in every verb;
built-ins are usable wherever they make sense and say why where not; scores are checked in one place; a
data-driven criterion that torch's autograd cannot serve fails with one PruneError line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit import GradualPruner, check, lottery_ticket, prune, sparsify
from prunekit.criteria import Criterion, ScoreContext, get_criterion, register_criterion
from prunekit.criteria.magnitude import l1_magnitude
from prunekit.criteria.random import RandomScore
from prunekit.errors import ConfigError, PruneError
from prunekit.schedules.masking import UnstructuredMasks
from prunekit.sparse import get_mask, masks_from_scores
from prunekit.structured.api import plan_prune


@register_criterion("toy_cube")
class ToyCube(Criterion):
    """|w|³ per element: a third-party criterion, registered with one line."""

    def weight_scores(self, ctx, names):
        return {n: ctx.tensors[n].detach().abs() ** 3 for n in names if n in ctx.tensors}


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))


X = torch.randn(4, 6)


def test_registered_criterion_works_in_prune_check_sparsify_and_gradual():
    plan, _ = plan_prune(mlp(), X, ratio=0.5, criterion="toy_cube")
    assert plan.meta["criterion"] == "toy_cube"
    assert check(mlp(), X, ratio=0.5, criterion="toy_cube").ok
    pruned = mlp()
    res = prune(pruned, X, ratio=0.5, criterion="toy_cube")
    assert pruned[0].out_features == 6 and res.removed_units == 10

    sp = mlp()
    result = sparsify(sp, 0.5, criterion="toy_cube")
    assert result.criterion == "toy_cube" and result.layers["0"].pruned == 36
    keep = get_mask(sp[0]).bool()
    w = mlp()[0].weight.detach().abs()
    assert w[keep].min() >= w[~keep].max()  # cube ranks as |w|

    gp = mlp()
    pruner = GradualPruner(gp, 0.5, start_step=0, end_step=2, frequency=1, criterion="toy_cube")
    for _ in range(2):
        pruner.step()
    assert pruner.sparsity() == 0.5

    def train_fn(model, run):
        run.step()

    ticket = mlp()
    res = lottery_ticket(ticket, train_fn, rounds=1, rate=0.5, criterion="toy_cube")
    assert res.rounds[-1].remaining == 0.5


def test_structured_toy_scores_pick_the_lowest_units():
    net = mlp()
    plan, report = plan_prune(net, X, ratio=0.5, criterion="toy_cube")
    ctx = ScoreContext.of(net, X)
    for g in report.prunable_groups:
        s = ToyCube()(g, ctx)
        removed = sorted(plan.removals[g.members[0].name][g.members[0].dim]) if g.members else []
        assert sorted(removed) == sorted(torch.argsort(s)[: len(removed)].tolist())


def test_l1_and_magnitude_are_one_criterion_in_both_worlds():
    assert get_criterion("l1") is get_criterion("magnitude") is l1_magnitude
    a, b = mlp(), mlp()
    sparsify(a, 0.4, criterion="l1")
    sparsify(b, 0.4, criterion="magnitude")
    assert torch.equal(get_mask(a[0]), get_mask(b[0]))

    class Abs(Criterion):  # the generic element path of the base class
        def weight_scores(self, ctx, names):
            return {n: ctx.tensors[n].detach().abs() for n in names}

    net = mlp()
    for g in plan_prune(net, X, ratio=0.5)[1].prunable_groups:
        ctx = ScoreContext.of(net, X)
        assert torch.allclose(get_criterion("magnitude")(g, ctx), Abs()(g, ctx))


def test_random_has_one_seeding_policy():
    net = mlp()
    sparsify(net, 0.5, criterion="random", seed=7, include=["0"])
    ctx = ScoreContext.of(mlp(), None)
    scores = {"0": RandomScore(seed=7).weight_scores(ctx, ["0.weight"])["0.weight"]}
    assert torch.equal(get_mask(net[0]).bool(), masks_from_scores(mlp(), scores, 0.5)["0"])


def test_index_criteria_and_sparsegpt_say_where_they_apply():
    with pytest.raises(ConfigError, match=r"'fpgm' scores whole channels.*prunekit.prune"):
        sparsify(mlp(), 0.5, criterion="fpgm")
    with pytest.raises(ConfigError, match=r"'sparsegpt' is a method.*prunekit.sparsify"):
        plan_prune(mlp(), X, ratio=0.5, criterion="sparsegpt")
    with pytest.raises(ConfigError, match=r"'sparsegpt' makes its own masks.*no schedule"):
        UnstructuredMasks(mlp(), criterion="sparsegpt", data=[X])

    def group_only(group, ctx):
        return torch.ones(group.width)

    with pytest.raises(ConfigError, match=r"'group_only' scores structured groups only"):
        sparsify(mlp(), 0.5, criterion=group_only)
    with pytest.raises(ConfigError, match=r"unknown criterion 'nope': choose one of .*toy_cube"):
        sparsify(mlp(), 0.5, criterion="nope")
    assert sparsify(mlp(), 0.5, criterion="l2").layers["0"].pruned == 36  # every element criterion works


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda w: torch.full((w,), float("nan")), r"'bad' returned 12 non-finite scores"),
        (lambda w: torch.full((w,), float("inf")), r"'bad' returned 12 non-finite scores"),
        (lambda w: torch.ones(w + 1), r"'bad' returned 13 scores for group \d+ of width 12"),
        (lambda w: "high", r"'bad' returned str for group \d+, not a tensor"),
    ],
)
def test_bad_group_scores_raise_naming_the_criterion(bad, message):
    def crit(group, ctx):
        return bad(group.width)

    register_criterion("bad", crit)
    net = mlp()
    before = [p.clone() for p in net.parameters()]
    with pytest.raises(ConfigError, match=message):
        prune(net, X, ratio=0.5, criterion="bad")
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_bad_weight_scores_raise_naming_the_criterion():
    class NaNs(Criterion):
        name = "nans"

        def weight_scores(self, ctx, names):
            return {n: torch.full_like(ctx.tensors[n], float("nan")) for n in names}

    class Short(Criterion):
        name = "short"

        def weight_scores(self, ctx, names):
            return {n: torch.ones(3) for n in names}

    with pytest.raises(ConfigError, match=r"'nans' returned 72 non-finite scores .* layer '0'"):
        sparsify(mlp(), 0.5, criterion=NaNs())
    with pytest.raises(ConfigError, match=r"'short' returned \(3,\) scores for layer '0' of shape \(12, 6\)"):
        sparsify(mlp(), 0.5, criterion=Short())


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.out = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        q = self.q(x).view(x.shape[0], 2, 3, 4)
        return self.out(F.scaled_dot_product_attention(q, q, q).reshape(x.shape[0], 3, 8)).mean(1)


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.sigmoid(self.a(x))
        h.relu_()  # sigmoid's backward needs its output, which this overwrites
        return self.b(h)


Y = torch.tensor([0, 1, 0, 1])


@pytest.mark.parametrize(
    ("net", "x", "criterion", "loss_fn", "message"),
    [
        (
            Attention(),
            torch.randn(4, 3, 8),
            "hessian_hutchinson",
            None,
            r"^criterion 'hessian_hutchinson' needs second derivatives, which torch does not implement for "
            r"aten::_scaled_dot_product\w+_backward .*use criterion='hessian' \(Fisher\), 'taylor' or 'l1'$",
        ),
        (
            InPlace(),
            torch.randn(4, 4),
            "taylor",
            None,
            r"^criterion 'taylor' cannot backpropagate: the model modifies the output of Sigmoid in place .*"
            r"replace that in-place op by its out-of-place form",
        ),
        (
            InPlace(),
            torch.randn(4, 4),
            "hessian",
            None,
            r"^criterion 'hessian' cannot backpropagate: the model modifies the output of Sigmoid in place",
        ),
        (
            InPlace(),
            torch.randn(4, 4),
            "taylor",
            lambda out, target: torch.tensor(1.0),
            r"^criterion 'taylor': the loss reaches no trainable parameter .*make loss_fn depend on",
        ),
    ],
)
def test_autograd_failures_are_one_prune_error_line(net, x, criterion, loss_fn, message):
    with pytest.raises(PruneError, match=message) as info:
        prune(net, x, ratio=0.5, criterion=criterion, data=[(x, Y)], loss_fn=loss_fn)
    assert "\n" not in str(info.value)
    with pytest.raises(PruneError, match=message):
        sparsify(net, 0.5, criterion=criterion, data=[(x, Y)], loss_fn=loss_fn)


def test_score_functions_for_schedules_are_deprecated_but_work():
    net = mlp()

    def scores(layers):
        return {name: layer.weight.detach().abs() for name, layer in layers.items()}

    with pytest.warns(DeprecationWarning, match="register a prunekit.criteria.Criterion"):
        target = UnstructuredMasks(net, criterion=scores)
    target.prune_to(0.5)
    assert target.sparsity() == 0.5
