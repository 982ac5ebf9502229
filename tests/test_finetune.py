"""prunekit.recover: finetune, distillation, PruneCallbacks, zero-keeping, evaluation, early stopping."""

from __future__ import annotations

import copy
import io
import json
import math

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.nn import functional as F

from prunekit.errors import ConfigError
from prunekit.recover import FinetuneResult, PruneCallbacks, distill_loss, finetune, kd_loss
from prunekit.recover.distill import FeatureKD
from prunekit.sparse import get_mask, remove_masks, sparsify


def blobs(n: int = 96, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three Gaussian blobs in 4-D, as 3 batches of 32."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 4, generator=g) * 0.5 + torch.eye(4)[y] * 2.0
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, n, 32)]


def mlp(seed: int = 0, dropout: float = 0.0) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 3))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- distillation loss ---------------------------------------------------------------------------------


def test_kd_loss_matches_a_hand_computation() -> None:
    s = [[1.0, 2.0, 0.0], [0.5, -1.0, 0.0]]
    t = [[0.0, 1.0, 3.0], [2.0, 0.0, 0.0]]
    temp = 2.0

    def softmax(row: list[float]) -> list[float]:
        e = [math.exp(v / temp) for v in row]
        return [v / sum(e) for v in e]

    rows = []
    for srow, trow in zip(s, t, strict=True):
        ps, pt = softmax(srow), softmax(trow)
        rows.append(sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt, strict=True)))
    expected = sum(rows) / len(rows) * temp**2  # KL(teacher || student), mean over samples, times T^2
    got = kd_loss(torch.tensor(s), torch.tensor(t), temperature=temp)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.0421, abs=1e-4)  # rows 0.4730 and 0.0480 on paper, mean x T^2
    # (batch, seq, classes) logits: every position is one row
    assert kd_loss(torch.tensor([s]), torch.tensor([t]), temp).item() == pytest.approx(expected, rel=1e-6)
    # mixing with the task loss
    task = torch.tensor(0.8)
    mixed = distill_loss(task, torch.tensor(s), torch.tensor(t), alpha=0.3, temperature=temp)
    assert mixed.item() == pytest.approx(0.7 * 0.8 + 0.3 * expected, rel=1e-6)


def test_kd_with_alpha_one_and_the_student_as_teacher_gives_zero_loss() -> None:
    model = mlp(dropout=0.0)
    teacher = copy.deepcopy(model)
    x, y = blobs()[0]
    with PruneCallbacks(model, teacher=teacher, kd_alpha=1.0, kd_temperature=3.0) as cb:
        loss = cb.loss(model(x), y, x)
        assert abs(loss.item()) < 1e-6
        loss.backward()
        assert max(p.grad.abs().max().item() for p in model.parameters()) < 1e-6
        cb.after_step()
        assert cb.last["task"] > 0.5 and abs(cb.last["kd"]) < 1e-6  # the task loss was there, weight 0
    # alpha=0: exactly the task loss
    with PruneCallbacks(model, teacher=mlp(seed=5), kd_alpha=0.0) as cb:
        assert cb.loss(model(x), y, x).item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-6)


def test_distillation_pulls_the_student_towards_the_teacher() -> None:
    teacher, student = mlp(seed=1), mlp(seed=2)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(32, 4, generator=g), torch.zeros(32, dtype=torch.long)) for _ in range(4)]
    x = torch.cat([b[0] for b in data])
    before = kd_loss(student(x), teacher(x), 1.0).item()
    res = finetune(student, data, steps=60, lr=0.03, teacher=teacher, kd_alpha=1.0, kd_temperature=1.0,
                   progress=False)  # fmt: skip
    after = kd_loss(student(x), teacher(x), 1.0).item()
    assert res.distilled and res.steps == 60
    assert after < 0.05 * before
    assert all(p.grad is None for p in teacher.parameters())  # the teacher only ran under no_grad


def test_feature_kd_is_the_mse_of_hooked_outputs_and_needs_equal_shapes() -> None:
    student, teacher = mlp(seed=1), mlp(seed=2)
    x = blobs()[0][0]
    fkd = FeatureKD(student, teacher, ["1"])  # the ReLU after the first Linear: 32 wide in both
    student(x), teacher(x)
    expected = F.mse_loss(torch.relu(student[0](x)), torch.relu(teacher[0](x)))
    assert fkd.loss().item() == pytest.approx(expected.item(), rel=1e-6)
    fkd.close()
    assert not student[1]._forward_hooks and not teacher[1]._forward_hooks

    narrow = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.0), nn.Linear(16, 3))  # "pruned" width
    before = state(narrow)
    with pytest.raises(ConfigError, match=r"feature_kd: student '1' gives \(32, 16\).*equal shapes"):
        finetune(narrow, blobs(), steps=3, teacher=teacher, feature_kd=["1"], progress=False)
    assert same_state(before, state(narrow))  # checked on the first batch, before any step
    assert not narrow[1]._forward_hooks and not teacher[1]._forward_hooks


def test_feature_kd_adds_its_weighted_term_to_the_loss() -> None:
    student, teacher = mlp(seed=1), mlp(seed=2)
    x, y = blobs()[0]
    with PruneCallbacks(
        student, teacher=teacher, kd_alpha=0.5, feature_kd=["1"], feature_kd_weight=2.0
    ) as cb:
        loss = cb.loss(student(x), y, x).item()
        cb.after_step()
    task = F.cross_entropy(student(x), y).item()
    kd = kd_loss(student(x), teacher(x), 4.0).item()
    mse = F.mse_loss(torch.relu(student[0](x)), torch.relu(teacher[0](x))).item()
    assert loss == pytest.approx(0.5 * task + 0.5 * kd + 2.0 * mse, rel=1e-5)
    assert cb.last["feature"] == pytest.approx(mse, rel=1e-5)


# -- masks and zeros --------------------------------------------------------------------------------------


def test_masked_weights_stay_zero_and_their_original_gets_zero_gradient() -> None:
    model = mlp()
    sparsify(model, 0.75)
    masks = [get_mask(model[i]).clone() for i in (0, 3)]
    before = [model[i].parametrizations.weight.original.detach().clone() for i in (0, 3)]
    res = finetune(model, blobs(), epochs=4, lr=0.05, weight_decay=0.1, progress=False)
    assert res.steps == 12
    for i, mask, old in zip((0, 3), masks, before, strict=True):
        original = model[i].parametrizations.weight.original
        assert int(mask.eq(0).sum()) == round(0.75 * mask.numel())
        assert torch.all(model[i].weight[mask == 0] == 0)  # effective weights: exactly zero
        assert torch.all(original.grad[mask == 0] == 0)  # the last step's gradient: zero where masked
        assert torch.all(original.grad[mask == 1].abs().sum() > 0)
        assert torch.all(original[mask == 1] != old[mask == 1])  # kept weights trained
    remove_masks(model)
    assert int((model[0].weight == 0).sum()) == 96 and int((model[3].weight == 0).sum()) == 72


def test_keep_zeros_freezes_plain_zeros_and_without_it_they_move() -> None:
    base = mlp()
    sparsify(base, 0.5)
    remove_masks(base)  # plain zeros now, no masks
    zeros = [base[i].weight.detach() == 0 for i in (0, 3)]
    assert [int(z.sum()) for z in zeros] == [64, 48]

    kept = copy.deepcopy(base)
    finetune(kept, blobs(), steps=10, lr=0.05, weight_decay=0.1, keep_zeros=True, progress=False)
    for i, z in zip((0, 3), zeros, strict=True):
        weight = kept[i].weight
        assert torch.equal(weight.detach() == 0, z)  # the same positions, exactly zero
        assert torch.all(weight.grad[z] == 0) and weight.grad[~z].abs().sum() > 0
        assert not weight._backward_hooks  # hooks removed afterwards

    moved = copy.deepcopy(base)
    finetune(moved, blobs(), steps=10, lr=0.05, weight_decay=0.1, progress=False)
    left = [int((moved[i].weight == 0).sum()) for i in (0, 3)]
    assert left[0] <= 64 // 2 and left[1] <= 48 // 4  # most zeros trained away (dead ReLU units stay)


def test_keep_zeros_on_a_dense_model_warns_that_nothing_is_frozen() -> None:
    with pytest.warns(UserWarning, match="nothing is frozen"):
        finetune(mlp(), blobs(), steps=1, keep_zeros=True, progress=False)


# -- evaluation, best weights, early stopping -------------------------------------------------------------


class ScriptedEval:
    """An eval_fn returning scripted metrics and remembering the weights it saw at each call."""

    def __init__(self, metrics: list[float]) -> None:
        self.metrics, self.seen = list(metrics), []

    def __call__(self, model: nn.Module) -> float:
        assert not model.training and not torch.is_grad_enabled()
        self.seen.append(state(model))
        return self.metrics[len(self.seen) - 1]


def test_best_weights_are_restored_and_history_records_every_evaluation() -> None:
    model, data = mlp(), blobs()
    scripted = ScriptedEval([0.1, 0.5, 0.3, 0.4, 0.2])
    res = finetune(model, data, epochs=4, lr=0.05, eval_fn=scripted, progress=False)
    assert [p.step for p in res.history] == [0, 3, 6, 9, 12]  # step 0, then once per epoch (3 batches)
    assert [p.metric for p in res.history] == [0.1, 0.5, 0.3, 0.4, 0.2]
    assert math.isnan(res.history[0].train_loss) and all(p.train_loss > 0 for p in res.history[1:])
    assert (res.best_metric, res.best_step, res.final_metric) == (0.5, 3, 0.5)
    assert res.restored_best and not res.stopped_early
    assert same_state(state(model), scripted.seen[1])  # the model holds the step-3 weights
    assert not same_state(scripted.seen[1], scripted.seen[4])

    other, last = mlp(), ScriptedEval([0.1, 0.5, 0.3, 0.4, 0.2])
    res = finetune(other, data, epochs=4, lr=0.05, eval_fn=last, restore_best=False, progress=False)
    assert not res.restored_best and res.final_metric == 0.2
    assert same_state(state(other), last.seen[4]) and same_state(last.seen[4], scripted.seen[4])


def test_early_stopping_after_patience_evaluations_without_improvement() -> None:
    model = mlp()
    scripted = ScriptedEval([0.2, 0.6, 0.6, 0.65, 0.5, 0.9, 0.9])
    res = finetune(model, blobs(), steps=100, eval_fn=scripted, eval_every=2, patience=2, min_delta=0.1,
                   progress=False)  # fmt: skip
    # evals at steps 0, 2, 4, 6: 0.6 and 0.65 do not beat 0.6 by more than 0.1 -> stop at step 6
    assert res.stopped_early and res.steps == 6 and len(res.losses) == 6
    assert [p.step for p in res.history] == [0, 2, 4, 6]
    assert (res.best_metric, res.best_step) == (0.6, 2)
    assert same_state(state(model), scripted.seen[1])


def test_steps_cycle_through_the_data_and_always_evaluate_the_last_step() -> None:
    res = finetune(mlp(), blobs(), steps=7, eval_fn=lambda m: 0.5, progress=False)
    assert res.steps == 7 and res.steps_per_epoch == 3 and len(res.losses) == 7
    assert [p.step for p in res.history] == [0, 3, 6, 7]
    assert res.best_step == 0  # never strictly better than step 0
    payload = json.loads(json.dumps(res.to_dict()))
    assert payload["steps"] == 7 and payload["history"][0] == {"step": 0, "metric": 0.5, "train_loss": None}
    assert payload["world_size"] == 1 and payload["wall_seconds"] > 0 and isinstance(res, FinetuneResult)


def test_finetune_learns_and_restores_training_flags() -> None:
    model, data = mlp(dropout=0.2), blobs()
    model.eval()
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])

    def acc(m: nn.Module) -> float:
        return float((m(x).argmax(1) == y).float().mean())

    res = finetune(model, data, epochs=10, lr=0.02, eval_fn=acc, seed=0, progress=False)
    assert res.history[0].metric < 0.7 and res.best_metric == 1.0 and res.final_metric == 1.0
    assert res.losses[-1] < 0.3 * res.losses[0]
    assert not model.training  # flags put back as they were


def test_seeded_runs_are_identical_and_leave_the_global_rng_alone() -> None:
    runs = []
    rng = torch.random.get_rng_state()
    for _ in range(2):
        model = mlp(dropout=0.3)
        finetune(model, blobs(), steps=5, seed=3, progress=False)
        runs.append(state(model))
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert same_state(runs[0], runs[1])


def test_callbacks_in_a_users_own_loop_match_finetune_exactly() -> None:
    data, teacher = blobs(), mlp(seed=9)
    auto = mlp()
    finetune(auto, data, steps=6, lr=0.05, optimizer="sgd", momentum=0.0, teacher=teacher, kd_alpha=0.7,
             progress=False)  # fmt: skip

    manual = mlp()
    opt = torch.optim.SGD(manual.parameters(), lr=0.05)
    cb = PruneCallbacks(manual, teacher=teacher, kd_alpha=0.7)
    for x, y in data + data:
        loss = cb.loss(manual(x), y, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert not cb.after_step()
    cb.close()
    assert cb.step == 6
    assert all(
        torch.allclose(a, b, atol=1e-6)
        for a, b in zip(state(auto).values(), state(manual).values(), strict=True)
    )


def test_epoch_lines_say_at_which_step_the_best_evaluation_was() -> None:
    scores = iter([0.9, 0.5, 0.6])  # step 0 (before training) stays the best
    buffer = io.StringIO()
    console = Console(file=buffer, width=120)
    finetune(mlp(), blobs(), epochs=2, eval_fn=lambda m: next(scores), console=console, progress=False)
    lines = buffer.getvalue().splitlines()
    assert lines[0].endswith("metric 0.5000 (best 0.9000 at step 0)")
    assert lines[1].endswith("metric 0.6000 (best 0.9000 at step 0)")


@pytest.mark.parametrize("progress", [None, False, True])
def test_epoch_lines_go_to_the_given_console_and_the_bar_to_stderr_only_when_on(
    progress: bool | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from prunekit import progress as bars

    monkeypatch.delenv(bars.ENV, raising=False)
    monkeypatch.setattr(bars, "_cli", {"on": False})  # the command line with --quiet
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    finetune(mlp(), blobs(), epochs=2, eval_fn=lambda m: 0.25, console=console, progress=progress)
    lines = buffer.getvalue()
    assert "epoch 1: loss" in lines and "epoch 2: loss" in lines and "metric 0.2500" in lines
    assert "finetune" not in lines  # the bar is never drawn on the caller's console
    assert ("finetune" in capsys.readouterr().err) is bool(progress)


def test_dict_inputs_and_a_custom_loss() -> None:
    class Keyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 1)

        def forward(self, *, features: torch.Tensor) -> torch.Tensor:
            return self.fc(features).squeeze(1)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    model = Keyword()
    res = finetune(model, [({"features": x}, y)], steps=200, lr=0.05, loss_fn=F.mse_loss, progress=False)
    assert res.losses[-1] < 1e-3
    assert torch.allclose(model.fc.weight, torch.tensor([[1.0, -2.0, 0.5, 3.0]]), atol=0.02)


# -- argument checks --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of steps or epochs"),
        ({"steps": 2, "epochs": 1}, "exactly one of steps or epochs"),
        ({"steps": 0}, "steps"),
        ({"epochs": 1.5}, "epochs"),
        ({"steps": 2, "lr": -1.0}, "lr"),
        ({"steps": 2, "optimizer": "lion"}, "optimizer"),
        ({"steps": 2, "kd_alpha": 0.5}, "no teacher"),
        ({"steps": 2, "teacher": "dense"}, "teacher must be"),
        ({"steps": 2, "teacher": nn.Linear(4, 3), "kd_alpha": 1.5}, "kd_alpha"),
        ({"steps": 2, "teacher": nn.Linear(4, 3), "kd_temperature": 0}, "kd_temperature"),
        ({"steps": 2, "teacher": nn.Linear(4, 3), "feature_kd": ["nope"]}, "no module named 'nope'"),
        ({"steps": 2, "patience": 2}, "needs an eval_fn"),
        ({"steps": 2, "eval_every": 2}, "no eval_fn"),
        ({"steps": 2, "eval_fn": lambda m: 1.0, "eval_every": 0}, "eval_every"),
        ({"steps": 2, "max_grad_norm": 0}, "max_grad_norm"),
        ({"steps": 2, "distributed": True}, "torchrun"),
        ({"steps": 2, "loss_fn": lambda out, y: out}, r"scalar tensor, got \(32, 3\)"),
        ({"steps": 2, "loss_fn": lambda out, y: 1.0}, "scalar tensor, got float"),
        ({"steps": 2, "eval_fn": lambda m: "good"}, "number"),
    ],
)
def test_bad_arguments_raise_one_line_before_the_model_changes(kwargs: dict, message: str) -> None:
    model = mlp()
    before = state(model)
    with pytest.raises(ConfigError, match=message) as info:
        finetune(model, blobs(), progress=False, **kwargs)
    assert "\n" not in str(info.value)
    assert same_state(before, state(model)) and model.training
    assert all(p.grad is None for p in model.parameters())


def test_data_errors() -> None:
    model = mlp()
    with pytest.raises(ConfigError, match="one-shot iterator"):
        finetune(model, iter(blobs()), steps=2, progress=False)
    with pytest.raises(ConfigError, match="empty"):
        finetune(model, [], steps=2, progress=False)
    with pytest.raises(ConfigError, match=r"\(inputs, targets\) pair"):
        finetune(model, [torch.zeros(2, 4)], steps=2, progress=False)
    with pytest.raises(ConfigError, match="teacher is the model itself"):
        finetune(model, blobs(), steps=2, teacher=model, progress=False)
