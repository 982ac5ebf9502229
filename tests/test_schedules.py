"""prunekit.schedules: cubic schedule values, exact gradual/iterative/one-shot targets, resuming, SNIP."""

from __future__ import annotations

import copy
import doctest
import itertools
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import prunekit.regularize
import prunekit.schedules.at_init
import prunekit.schedules.cubic
import prunekit.schedules.iterative
import prunekit.schedules.lottery
import prunekit.schedules.masking
from prunekit.errors import ConfigError
from prunekit.schedules import (
    GradualPruner,
    cubic_sparsity,
    iterative_prune,
    one_shot,
    snip,
    snip_scores,
    step_targets,
)
from prunekit.sparse import get_mask, is_masked, masks_from_scores

N_WEIGHTS = 12 * 16 + 16 * 3  # 240


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is ~10x faster than two on the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))


def data(seed: int = 0, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 12, generator=g), torch.randint(0, 3, (n,), generator=g)


def pruned_count(model: nn.Module) -> int:
    return sum(int((get_mask(m) == 0).sum()) for m in model.modules() if is_masked(m))


def rounded(sparsity: float, n: int) -> int:
    return math.floor(sparsity * n + 0.5)


def sgd_steps(model: nn.Module, steps: int, pruner: GradualPruner | None = None, seed: int = 0) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for i in range(steps):
        x, y = data(seed + i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if pruner is not None:
            pruner.step()


# --- cubic_sparsity -------------------------------------------------------------------------------


def test_cubic_values_at_given_steps_match_the_formula_by_hand() -> None:
    kw = {"initial": 0.1, "final": 0.9, "start": 100, "frequency": 50, "n_steps": 4}
    # s_t = 0.9 + (0.1 - 0.9) * (1 - (t - 100) / 200)^3 at t = 100, 150, ..., 300; held in between.
    expected = {
        0: 0.1,
        99: 0.1,
        100: 0.1,
        149: 0.1,
        150: 0.9 - 0.8 * 0.75**3,  # 0.5625
        199: 0.5625,
        200: 0.9 - 0.8 * 0.5**3,  # 0.8
        250: 0.9 - 0.8 * 0.25**3,  # 0.8875
        299: 0.8875,
        300: 0.9,
        10**6: 0.9,
    }
    for step, value in expected.items():
        assert cubic_sparsity(step, **kw) == pytest.approx(value, abs=1e-12), step
    assert cubic_sparsity(150, **kw) == pytest.approx(0.5625, abs=1e-12)
    assert cubic_sparsity(200, **kw) == pytest.approx(0.8, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    initial=st.floats(0.0, 0.5),
    final=st.floats(0.5, 0.99),
    start=st.integers(0, 50),
    frequency=st.integers(1, 20),
    n_steps=st.integers(1, 10),
)
def test_cubic_is_monotone_and_reaches_the_target(initial, final, start, frequency, n_steps) -> None:
    kw = {"initial": initial, "final": final, "start": start, "frequency": frequency, "n_steps": n_steps}
    end = start + n_steps * frequency
    values = [cubic_sparsity(t, **kw) for t in range(end + 5)]
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(values))
    assert values[0] == initial and values[start] == initial
    assert values[end] == pytest.approx(final, abs=1e-12) and values[-1] == pytest.approx(final, abs=1e-12)
    # it only changes on pruning steps
    changes = [t for t in range(1, end + 5) if values[t] != values[t - 1]]
    assert all((t - start) % frequency == 0 for t in changes)


def test_cubic_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="frequency"):
        cubic_sparsity(3, initial=0.0, final=0.5, start=0, frequency=0, n_steps=2)
    with pytest.raises(ConfigError, match="n_steps"):
        cubic_sparsity(3, initial=0.0, final=0.5, start=0, frequency=1, n_steps=0)


# --- GradualPruner --------------------------------------------------------------------------------


def test_gradual_pruner_holds_exact_counts_at_every_step_and_ends_at_the_target() -> None:
    model = mlp()
    pruner = GradualPruner(model, 0.9, start_step=4, end_step=24, frequency=5)
    assert pruner.n_steps == 4 and is_masked(model[0]) and pruned_count(model) == 0
    prev = {name: get_mask(model[int(name)]).clone() for name in ("0", "2")}
    opt = torch.optim.SGD(model.parameters(), lr=0.05)  # made after masking: same Parameter objects
    for t in range(1, 31):
        x, y = data(t)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        asked = pruner.step()
        assert asked == pruner.sparsity_at(t)
        assert pruned_count(model) == rounded(pruner.sparsity_at(t), N_WEIGHTS), t
        for name, old in prev.items():
            new = get_mask(model[int(name)])
            assert bool((new <= old).all()), "a pruned weight came back"
            prev[name] = new.clone()
        assert int((model[0].weight[get_mask(model[0]) == 0] != 0).sum()) == 0
    assert [s for s, _ in pruner.history] == [4, 9, 14, 19, 24]
    expected = [
        rounded(cubic_sparsity(s, initial=0, final=0.9, start=4, frequency=5, n_steps=4), 240)
        for s in (4, 9, 14, 19, 24)
    ]
    assert [rounded(v, 240) for _, v in pruner.history] == expected == [0, 125, 189, 213, 216]
    assert pruner.done and pruner.sparsity() == 0.9
    pruner.finalize()
    assert not is_masked(model[0]) and not is_masked(model[2])
    zeros = int((model[0].weight == 0).sum()) + int((model[2].weight == 0).sum())
    assert zeros == 216


def test_gradual_local_scope_prunes_every_layer_exactly() -> None:
    model = mlp()
    pruner = GradualPruner(
        model, 0.75, initial_sparsity=0.25, start_step=0, end_step=6, frequency=3, scope="local"
    )
    assert pruned_count(model) == rounded(0.25, 192) + rounded(0.25, 48)  # step 0 prunes to initial at once
    sgd_steps(model, 6, pruner)
    assert int((get_mask(model[0]) == 0).sum()) == 144 and int((get_mask(model[2]) == 0).sum()) == 36


def test_gradual_block_pattern_prunes_whole_tiles() -> None:
    model = mlp()
    pruner = GradualPruner(
        model, 0.5, start_step=0, end_step=2, frequency=1, pattern="block:4x4", include=["0"]
    )
    sgd_steps(model, 2, pruner)
    mask = get_mask(model[0])
    tiles = mask.reshape(4, 4, 3, 4).sum(dim=(1, 3))
    assert set(tiles.unique().tolist()) <= {0.0, 16.0} and int((tiles == 0).sum()) == 6  # 12 tiles, half gone
    assert not is_masked(model[2])


def test_gradual_custom_criterion_decides_what_goes() -> None:
    model = mlp()

    def first_weights_least_important(layers):
        return {
            name: torch.arange(m.weight.numel(), dtype=torch.float32).reshape(m.weight.shape)
            for name, m in layers.items()
        }

    pruner = GradualPruner(
        model,
        0.5,
        start_step=0,
        end_step=1,
        frequency=1,
        scope="local",
        criterion=first_weights_least_important,
    )
    pruner.step()
    assert get_mask(model[0]).flatten().tolist() == [0.0] * 96 + [1.0] * 96


def test_gradual_resume_from_state_dicts_matches_an_uninterrupted_run() -> None:
    kw = {"start_step": 2, "end_step": 14, "frequency": 3}
    straight = mlp()
    pruner = GradualPruner(straight, 0.8, **kw)
    sgd_steps(straight, 16, pruner)

    first = mlp()
    p1 = GradualPruner(first, 0.8, **kw)
    sgd_steps(first, 7, p1)
    model_state = {k: v.clone() for k, v in first.state_dict().items()}
    pruner_state = json.loads(json.dumps(p1.state_dict()))  # survives JSON

    resumed = mlp(seed=123)  # different init: everything must come from the saved state
    p2 = GradualPruner(resumed, 0.8, **kw)
    resumed.load_state_dict(model_state)
    p2.load_state_dict(pruner_state)
    assert p2.last_step == 7
    sgd_steps(resumed, 9, p2, seed=7)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert p2.history == pruner.history

    with pytest.raises(ConfigError, match="end_step"):
        GradualPruner(mlp(), 0.8, start_step=2, end_step=20, frequency=3).load_state_dict(pruner_state)


def test_gradual_validates_before_touching_the_model() -> None:
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = [
        ({"start_step": 0, "end_step": 10, "frequency": 3}, "multiple of frequency"),
        ({"start_step": 5, "end_step": 5, "frequency": 1}, "positive multiple"),
        ({"start_step": 0, "end_step": 4, "frequency": 1, "initial_sparsity": 0.95}, "must not exceed"),
        ({"start_step": 0, "end_step": 4, "frequency": 1, "pattern": "2:4"}, "fixes the sparsity"),
        ({"start_step": 0, "end_step": 4, "frequency": 1, "pattern": "structured"}, "not available yet"),
        ({"start_step": 0, "end_step": 4, "frequency": 1, "scope": "everywhere"}, "unknown scope"),
        ({"start_step": 0, "end_step": 4, "frequency": 1, "criterion": "vibes"}, "unknown criterion"),
        ({"start_step": 0, "end_step": 4, "frequency": 1, "exclude": ["nope"]}, "matches no module"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ConfigError, match=message):
            GradualPruner(model, 0.9, **kwargs)
    with pytest.raises(ConfigError, match="final_sparsity"):
        GradualPruner(model, 1.0, start_step=0, end_step=4, frequency=1)
    assert not is_masked(model[0]) and model.state_dict().keys() == before.keys()
    pruner = GradualPruner(model, 0.5, start_step=0, end_step=4, frequency=1)
    with pytest.raises(ConfigError, match="ends at step 4"):
        pruner.finalize()


# --- one-shot and iterative -----------------------------------------------------------------------


def test_step_targets_by_hand() -> None:
    assert step_targets(0.9, 2) == pytest.approx([1 - 0.1**0.5, 0.9])
    assert step_targets(0.75, 2, "geometric") == pytest.approx([0.5, 0.75])
    assert step_targets(0.8, 4, "linear") == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert step_targets(0.8, 2, "cubic") == pytest.approx([0.8 * (1 - 0.125), 0.8])
    assert step_targets(0.9, 1) == [0.9]
    with pytest.raises(ConfigError, match="unknown schedule"):
        step_targets(0.9, 3, "exponential")
    with pytest.raises(ConfigError, match="steps"):
        step_targets(0.9, 0)


def test_iterative_prune_fine_tunes_between_exact_steps() -> None:
    model = mlp()
    calls: list[int] = []

    def train_fn(m: nn.Module) -> None:
        calls.append(pruned_count(m))
        sgd_steps(m, 3, seed=len(calls) * 10)

    res = iterative_prune(
        model, train_fn, final_sparsity=0.9, steps=3, eval_fn=lambda m: float(pruned_count(m))
    )
    targets = step_targets(0.9, 3)
    assert calls == [rounded(t, N_WEIGHTS) for t in targets] == [129, 188, 216]
    assert [s.sparsity for s in res.steps] == [c / N_WEIGHTS for c in calls]
    assert [s.metric for s in res.steps] == [float(c) for c in calls]
    assert res.sparsity == 0.9 and json.loads(json.dumps(res.to_dict()))["steps"][2]["index"] == 3


def test_one_shot_equals_iterative_with_one_step_and_prunes_smallest_magnitudes() -> None:
    model = mlp()
    weights = torch.cat([model[0].weight.detach().abs().flatten(), model[2].weight.detach().abs().flatten()])
    threshold = weights.sort().values[rounded(0.6, N_WEIGHTS) - 1]
    res = one_shot(model, 0.6)
    assert res.method == "one-shot" and len(res.steps) == 1 and res.sparsity == 0.6
    pruned = torch.cat([(get_mask(model[0]) == 0).flatten(), (get_mask(model[2]) == 0).flatten()])
    assert bool((weights[pruned] <= threshold).all()) and bool((weights[~pruned] >= threshold).all())


def test_iterative_requires_a_train_fn() -> None:
    with pytest.raises(ConfigError, match="train_fn"):
        iterative_prune(mlp(), None, final_sparsity=0.5, steps=2)  # type: ignore[arg-type]


# --- SNIP -----------------------------------------------------------------------------------------


def test_snip_scores_match_a_hand_computation_on_a_tiny_layer() -> None:
    layer = nn.Linear(3, 2, bias=False)
    w = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.25, -1.0]])
    with torch.no_grad():
        layer.weight.copy_(w)
    x1, y1 = torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[1.0, -1.0]])
    x2, y2 = torch.tensor([[0.0, 1.0, 1.0]]), torch.tensor([[2.0, 1.0]])

    def loss_fn(out, y):
        return (out * y).sum()  # dL/dW = y^T x

    # g = mean(y1^T x1, y2^T x2) = ([[1,0,2],[-1,0,-2]] + [[0,2,2],[0,1,1]]) / 2
    g = torch.tensor([[0.5, 1.0, 2.0], [-0.5, 0.5, -0.5]])
    expected = (g * w).abs()  # [[0.5, 2.0, 1.0], [1.5, 0.125, 0.5]]
    scores = snip_scores(nn.Sequential(layer), [(x1, y1), (x2, y2)], loss_fn=loss_fn)
    assert torch.allclose(scores["0"], expected)
    model = nn.Sequential(layer)
    res = snip(model, [(x1, y1), (x2, y2)], 0.5, loss_fn=loss_fn)
    # the three smallest |g*w|: 0.125, 0.5 (two of them, position breaks the tie: [0,0] first), 0.5 -> keep 3
    assert get_mask(layer).tolist() == [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
    assert res.pruned == 3 and res.criterion == "snip"


def test_snip_changes_only_the_masks_and_matches_plain_autograd() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    model.eval()
    before = list(model.modules())
    batches = [data(1), data(2)]
    params = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    # reference: mean over batches of d(cross-entropy)/dW in train mode, same dropout draws, on a copy
    ref = copy.deepcopy(model).train()
    grads = {"0": torch.zeros(16, 12), "4": torch.zeros(3, 16)}
    for x, y in batches:
        ref.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        for name in grads:
            grads[name] += ref.get_submodule(name).weight.grad / 2
    torch.set_rng_state(rng)
    expected = masks_from_scores(
        model, {n: (g * model.get_submodule(n).weight).abs() for n, g in grads.items()}, 0.8, scope="global"
    )

    res = snip(model, batches, 0.8)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(not m.training for m in before)
    for name in grads:
        assert torch.equal(get_mask(model.get_submodule(name)).bool(), expected[name])
    state = model.state_dict()
    for key, value in params.items():
        live = (
            state[key] if key in state else state[key.replace("weight", "parametrizations.weight.original")]
        )
        assert torch.equal(live, value), key
    assert all(p.grad is None for p in model.parameters())
    assert res.pruned == rounded(0.8, 12 * 16 + 16 * 3) == pruned_count(model)


def test_snip_rejects_empty_batches_and_bad_sparsity() -> None:
    model = mlp()
    with pytest.raises(ConfigError, match="empty"):
        snip(model, [], 0.5)
    with pytest.raises(ConfigError, match="sparsity"):
        snip(model, [data()], 1.5)
    assert not is_masked(model[0])


# --- docstring examples ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    [
        prunekit.schedules,
        prunekit.schedules.cubic,
        prunekit.schedules.iterative,
        prunekit.schedules.lottery,
        prunekit.schedules.masking,
        prunekit.schedules.at_init,
        prunekit.regularize,
    ],
    ids=lambda m: m.__name__,
)
def test_docstring_examples_run(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
