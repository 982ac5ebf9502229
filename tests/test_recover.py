"""prunekit.recover: the training loop and top-1 accuracy."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console
from torch import nn

from prunekit.errors import ConfigError
from prunekit.recover import accuracy, train
from prunekit.sparse import get_mask, remove_masks, sparsify


def blobs(n: int = 96, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three well-separated Gaussian blobs in 4-D, as 3 batches of 32."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 4, generator=g) * 0.3 + torch.eye(4)[y] * 3.0
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, n, 32)]


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_train_reduces_loss_and_returns_one_loss_per_epoch(optimizer: str) -> None:
    model, data = mlp(), blobs()
    losses = train(model, data, epochs=15, lr=0.02, optimizer=optimizer, progress=False, seed=0)
    assert len(losses) == 15
    assert losses[-1] < 0.25 * losses[0]
    assert accuracy(model, data) == 1.0


def test_train_with_seed_is_reproducible_and_leaves_global_rng_alone() -> None:
    data = blobs()
    state = torch.random.get_rng_state()
    runs = []
    for _ in range(2):
        model = mlp(seed=1)
        torch.random.set_rng_state(state)
        losses = train(model, data, epochs=3, lr=0.01, progress=False, seed=7, schedule="cosine")
        assert torch.equal(torch.random.get_rng_state(), state)  # fork_rng: the caller's RNG is untouched
        runs.append((losses, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))


def test_progress_callback_gets_each_epoch_and_its_mean_loss() -> None:
    seen: list[tuple[int, float]] = []
    losses = train(mlp(), blobs(), epochs=4, lr=0.01, progress=lambda e, loss: seen.append((e, loss)), seed=0)
    assert seen == list(enumerate(losses, 1))


def test_progress_bar_renders_to_the_given_console() -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    losses = train(mlp(), blobs(), epochs=2, lr=0.01, progress=True, console=console, seed=0)
    assert len(losses) == 2
    assert "epoch" in buffer.getvalue()


def test_masked_weights_stay_zero_through_training_without_hooks() -> None:
    model = mlp()
    sparsify(model, 0.75)  # local: 75% of each layer's weights masked
    masks = {name: get_mask(model[i]).clone() for i, name in ((0, "fc0"), (3, "fc3"))}
    before = {name: model[i].weight.detach().clone() for i, name in ((0, "fc0"), (3, "fc3"))}
    hooks = sum(len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
    train(model, blobs(), epochs=10, lr=0.05, weight_decay=0.1, progress=False, seed=0)
    assert hooks == 0
    for i, name in ((0, "fc0"), (3, "fc3")):
        weight, mask = model[i].weight.detach(), masks[name]
        assert int(mask.eq(0).sum()) == round(0.75 * mask.numel())
        assert torch.all(weight[mask == 0] == 0)  # pruned stay exactly zero
        assert torch.all(weight[mask == 1] != before[name][mask == 1])  # kept ones were trained
    remove_masks(model)
    assert int((model[0].weight == 0).sum()) == 96 and int((model[3].weight == 0).sum()) == 72


def test_accuracy_is_exact_and_restores_every_training_flag() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.9))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    model.train()
    model[1].eval()  # mixed flags must come back as they were
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 1, 1, 1])
    assert accuracy(model, [(x[:2], y[:2]), (x[2:], y[2:])]) == 0.75  # dropout off: deterministic
    assert model.training and model[0].training and not model[1].training
    model.eval()
    accuracy(model, [(x, y)])
    assert not model.training


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": -1, "lr": 0.1}, "epochs"),
        ({"epochs": 1.5, "lr": 0.1}, "epochs"),
        ({"epochs": 1, "lr": 0.0}, "lr"),
        ({"epochs": 1, "lr": 0.1, "weight_decay": -1.0}, "weight_decay"),
        ({"epochs": 1, "lr": 0.1, "optimizer": "rmsprop"}, "optimizer"),
        ({"epochs": 1, "lr": 0.1, "schedule": "step"}, "schedule"),
    ],
)
def test_bad_arguments_raise_before_the_model_changes(kwargs: dict, message: str) -> None:
    model = mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=message):
        train(model, blobs(), progress=False, **kwargs)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_empty_loaders_are_errors() -> None:
    with pytest.raises(ConfigError, match="empty"):
        train(mlp(), [], epochs=1, lr=0.1, progress=False)
    with pytest.raises(ConfigError, match="empty"):
        accuracy(mlp(), [])
