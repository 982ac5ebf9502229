"""prunekit.regularize: BN-L1 and group lasso values and gradients by hand, and their effect in training."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from prunekit.errors import ConfigError
from prunekit.regularize import bn_l1, coupled_group_lasso, group_lasso
from prunekit.sparse import sparsify


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is ~10x faster than two on the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x))).mean(dim=(2, 3))
        return self.fc(x)


def net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    model = Net()
    with torch.no_grad():
        model.bn1.weight.uniform_(-1.0, 1.0)
        model.bn2.weight.uniform_(-1.0, 1.0)
    return model


def test_bn_l1_value_and_gradient_by_hand() -> None:
    model = net()
    value = bn_l1(model)
    expected = model.bn1.weight.abs().sum() + model.bn2.weight.abs().sum()
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    value.backward()
    assert torch.equal(model.bn1.weight.grad, model.bn1.weight.detach().sign())
    assert torch.equal(model.bn2.weight.grad, model.bn2.weight.detach().sign())
    assert model.bn1.bias.grad is None and model.conv1.weight.grad is None


def test_bn_l1_needs_an_affine_batchnorm() -> None:
    with pytest.raises(ConfigError, match="BatchNorm"):
        bn_l1(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="affine"):
        bn_l1(nn.Sequential(nn.BatchNorm1d(4, affine=False)))


def test_coupled_group_lasso_by_hand() -> None:
    a = torch.tensor([[3.0, 0.0], [1.0, 2.0], [0.0, 0.0]], requires_grad=True)  # 3 units along dim 0
    b = torch.tensor([[4.0, 0.0, 2.0]], requires_grad=True)  # the same 3 units along dim 1
    value = coupled_group_lasso([(a, 0), (b, 1)])
    # unit 0: ||(3, 0, 4)|| = 5; unit 1: ||(1, 2, 0)|| = sqrt(5); unit 2: ||(0, 0, 2)|| = 2
    assert value.item() == pytest.approx(5 + math.sqrt(5) + 2)
    weighted = coupled_group_lasso([(a, 0), (b, 1)], weighted=True)
    assert weighted.item() == pytest.approx((5 + math.sqrt(5) + 2) * math.sqrt(3))
    value.backward()
    # d||u||/du = u / ||u|| for each unit
    assert torch.allclose(
        a.grad, torch.tensor([[0.6, 0.0], [1 / math.sqrt(5), 2 / math.sqrt(5)], [0.0, 0.0]])
    )
    assert torch.allclose(b.grad, torch.tensor([[0.8, 0.0, 1.0]]))


def test_coupled_group_lasso_rejects_mismatched_members() -> None:
    with pytest.raises(ConfigError, match="width"):
        coupled_group_lasso([(torch.ones(3, 2), 0), (torch.ones(4), 0)])
    with pytest.raises(ConfigError, match="out of range"):
        coupled_group_lasso([(torch.ones(3), 1)])
    with pytest.raises(ConfigError, match="at least one"):
        coupled_group_lasso([])


def test_group_lasso_sums_conv_filter_norms_and_skips_linear_layers() -> None:
    model = net()
    expected = sum(
        float(torch.linalg.vector_norm(conv.weight[o].detach()))
        for conv in (model.conv1, model.conv2)
        for o in range(conv.out_channels)
    )
    assert group_lasso(model).item() == pytest.approx(expected, rel=1e-6)
    only2 = sum(float(torch.linalg.vector_norm(model.conv2.weight[o].detach())) for o in range(8))
    assert group_lasso(model, include=["conv2"]).item() == pytest.approx(only2, rel=1e-6)
    with pytest.raises(ConfigError, match="no Conv"):
        group_lasso(model, include=["fc"])


def test_group_lasso_of_a_masked_conv_uses_the_masked_weight() -> None:
    model = net()
    sparsify(model, 0.5, include=["conv2"])
    expected = sum(float(torch.linalg.vector_norm(model.conv2.weight[o].detach())) for o in range(8))
    assert group_lasso(model, include=["conv2"]).item() == pytest.approx(expected, rel=1e-6)
    original = model.conv2.parametrizations.weight.original
    assert float(torch.linalg.vector_norm(original.detach())) > float(
        torch.linalg.vector_norm(model.conv2.weight.detach())
    )


def train(model: nn.Module, penalty, lam: float, steps: int = 40) -> None:
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        x, y = torch.randn(16, 1, 6, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        loss = F.cross_entropy(model(x), y) + lam * penalty(model)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_penalties_shrink_what_they_regularise_in_training() -> None:
    plain, slim, lasso = net(), net(), net()
    train(plain, bn_l1, 0.0)
    train(slim, bn_l1, 0.1)
    train(lasso, group_lasso, 0.1)
    # 40 SGD steps of lr 0.05 on 0.1 * sum|gamma| move each of the 14 scales by up to 0.2 towards zero
    assert bn_l1(plain).item() - bn_l1(slim).item() > 0.5 * 14 * 0.2
    assert group_lasso(lasso).item() < 0.8 * group_lasso(plain).item()
