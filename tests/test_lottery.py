"""prunekit.lottery_ticket: rewinding restores saved weights exactly, exact remaining fractions, control."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunekit.errors import ConfigError
from prunekit.schedules import Snapshot, TrainRun, lottery_ticket
from prunekit.schedules.lottery import reinit_randomly
from prunekit.sparse import get_mask, is_masked, sparsify

LAYERS = ("conv1", "conv2", "fc")
N_WEIGHTS = 1 * 4 * 9 + 4 * 8 * 9 + 8 * 3  # 348


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is ~10x faster than two on the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv1(x)))
        x = F.relu(self.conv2(x)).mean(dim=(2, 3))
        return self.fc(x)


def small_net(seed: int = 0) -> SmallNet:
    torch.manual_seed(seed)
    return SmallNet()


def raw_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with the same keys masked or not: originals under their plain names, masks left out."""
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("parametrizations.weight.0.mask"):
            continue
        out[key.replace("parametrizations.weight.original", "weight")] = value.clone()
    return out


def kept(model: nn.Module) -> int:
    return sum(
        int(get_mask(getattr(model, n)).sum())
        if is_masked(getattr(model, n))
        else getattr(model, n).weight.numel()
        for n in LAYERS
    )


class Recorder:
    """A train_fn that logs what each run started from, and the weights after step 3 and at the end."""

    def __init__(self, steps: int = 5) -> None:
        self.steps = steps
        self.runs: list[dict] = []

    def __call__(self, model: nn.Module, run: TrainRun) -> None:
        log = {
            "round": run.round,
            "control": run.control,
            "start_step": run.start_step,
            "start": raw_state(model),
            "effective": {n: getattr(model, n).weight.detach().clone() for n in LAYERS},
            "masks": {n: get_mask(getattr(model, n)).clone() for n in LAYERS if is_masked(getattr(model, n))},
        }
        g = torch.Generator().manual_seed(run.round)
        opt = torch.optim.SGD(model.parameters(), lr=0.2)
        for _ in range(self.steps):
            x, y = torch.randn(16, 1, 6, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.step()
            if run.steps == 3:
                log["after3"] = raw_state(model)
        log["end"] = raw_state(model)
        self.runs.append(log)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_rewind_to_init_restores_every_saved_weight_and_buffer_exactly() -> None:
    model = small_net()
    init = raw_state(model)
    rec = Recorder()
    res = lottery_ticket(model, rec, rounds=3, rate=0.5, rewind="init")
    assert [r["round"] for r in rec.runs] == [0, 1, 2, 3]
    for log in rec.runs:
        assert log["start_step"] == 0
        assert_same(log["start"], init)  # originals and BatchNorm statistics
    for log in rec.runs[1:]:
        for name in LAYERS:
            # the effective weight is the initial weight exactly where the mask keeps it, zero elsewhere
            assert torch.equal(log["effective"][name], init[f"{name}.weight"] * log["masks"][name])
    assert res.rewind == "init" and [r.round for r in res.rounds] == [0, 1, 2, 3]


def test_rewind_to_iteration_k_restores_the_weights_saved_after_k_steps() -> None:
    model = small_net()
    rec = Recorder()
    lottery_ticket(model, rec, rounds=2, rate=0.3, rewind=3)
    saved = rec.runs[0]["after3"]
    assert_same(rec.runs[0]["start"], raw_state(small_net()))
    for log in rec.runs[1:]:
        assert log["start_step"] == 3
        assert_same(log["start"], saved)
        for name in LAYERS:
            assert torch.equal(log["effective"][name], saved[f"{name}.weight"] * log["masks"][name])


def test_remaining_fractions_are_exact_and_round_one_prunes_the_smallest_trained_weights() -> None:
    model = small_net()
    rec = Recorder()
    res = lottery_ticket(model, rec, rounds=4, rate=0.2, eval_fn=lambda m: 0.5)
    expected = [N_WEIGHTS - math.floor((1 - 0.8**r) * N_WEIGHTS + 0.5) for r in range(5)]
    assert (
        [sum(int(m.sum()) for m in r.masks.values()) for r in res.rounds]
        == expected
        == [348, 278, 223, 178, 143]
    )
    assert [r.remaining for r in res.rounds] == [k / N_WEIGHTS for k in expected]
    assert kept(model) == expected[-1]
    for earlier, later in zip(res.rounds, res.rounds[1:], strict=False):
        for name in LAYERS:
            assert bool((later.masks[name] <= earlier.masks[name]).all())  # masks only shrink
    # round 1: global magnitude ranking of the weights the dense run ended with
    trained = torch.cat([rec.runs[0]["end"][f"{n}.weight"].abs().flatten() for n in LAYERS])
    keep = torch.cat([res.rounds[1].masks[n].flatten() for n in LAYERS])
    assert trained[keep].min() > trained[~keep].max()
    assert [r.metric for r in res.rounds] == [0.5] * 5 and all(r.control_metric is None for r in res.rounds)
    data = json.loads(json.dumps(res.to_dict()))
    assert data["rounds"][4]["kept"] == {n: int(res.rounds[4].masks[n].sum()) for n in LAYERS}


def test_random_reinit_control_trains_the_same_mask_from_fresh_weights() -> None:
    model = small_net()
    init = raw_state(model)
    rec = Recorder()
    calls = []
    res = lottery_ticket(
        model,
        rec,
        rounds=2,
        rate=0.5,
        random_reinit_control=True,
        seed=7,
        eval_fn=lambda m: float(len(calls.append(1) or calls)),
    )
    kinds = [(log["round"], log["control"]) for log in rec.runs]
    assert kinds == [(0, False), (1, True), (1, False), (2, True), (2, False)]
    for r, control, ticket in ((1, rec.runs[1], rec.runs[2]), (2, rec.runs[3], rec.runs[4])):
        assert_same(ticket["start"], init)  # the control did not leak into the ticket's run
        for name in LAYERS:
            assert torch.equal(control["masks"][name], ticket["masks"][name])
            assert not torch.equal(control["start"][f"{name}.weight"], init[f"{name}.weight"])
        # the control starts from reinit_randomly(seed + round) of the initial state, exactly
        fresh = small_net()
        reinit_randomly(fresh, seed=7 + r)
        assert_same(control["start"], raw_state(fresh))
    assert [(x.metric, x.control_metric) for x in res.rounds] == [(1.0, None), (3.0, 2.0), (5.0, 4.0)]


def test_rewind_past_the_first_run_raises_and_restores_the_model() -> None:
    model = small_net()
    init = raw_state(model)
    with pytest.raises(ConfigError, match="rewind=9"):
        lottery_ticket(model, Recorder(steps=5), rounds=2, rewind=9)
    assert_same(raw_state(model), init)
    assert not any(is_masked(getattr(model, n)) for n in LAYERS)


def test_bad_arguments_raise_before_training() -> None:
    model = small_net()
    rec = Recorder()
    bad = [
        ({"rounds": 0}, "rounds"),
        ({"rounds": 2, "rate": 1.0}, "rate"),
        ({"rounds": 2, "rate": 0.0}, "rate"),
        ({"rounds": 2, "rewind": -1}, "rewind"),
        ({"rounds": 2, "rewind": "late"}, "rewind"),
        ({"rounds": 2, "scope": "nowhere"}, "scope"),
        ({"rounds": 2, "eval_fn": 3}, "eval_fn"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ConfigError, match=message):
            lottery_ticket(model, rec, **kwargs)
    with pytest.raises(ConfigError, match="train_fn"):
        lottery_ticket(model, None, rounds=1)  # type: ignore[arg-type]

    class NoReset(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) * self.scale

    with pytest.raises(ConfigError, match="reset_parameters"):
        lottery_ticket(NoReset(), rec, rounds=1, random_reinit_control=True)
    assert rec.runs == []


def test_snapshot_leaves_masks_alone() -> None:
    model = small_net()
    sparsify(model, 0.5)
    snap = Snapshot(model)
    before = get_mask(model.fc).clone()
    with torch.no_grad():
        get_mask(model.fc).zero_()
        model.conv1.parametrizations.weight.original.add_(1.0)
        model.bn.running_mean.add_(1.0)
    snap.restore()
    assert int(get_mask(model.fc).sum()) == 0 and not torch.equal(before, get_mask(model.fc))
    assert float(model.bn.running_mean.abs().sum()) == 0.0
