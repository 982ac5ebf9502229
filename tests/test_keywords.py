"""Options of the public verbs are keyword-only; a positional option still works for now, with a warning."""

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.structured.layers import prune_layers


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_positional_option_warns_and_still_works() -> None:
    x = torch.zeros(1, 4)
    with pytest.warns(FutureWarning, match=r"groups: a positional ignore is deprecated; pass ignore=\.\.\."):
        old = pk.groups(_net(), x, ["0"])
    new = pk.groups(_net(), x, ignore=["0"])
    assert [g.width for g in old.prunable_groups] == [g.width for g in new.prunable_groups] == []


def test_positional_sensitivity_ratios_map_in_their_old_order() -> None:
    net, x = _net(), torch.randn(2, 4)
    with pytest.warns(FutureWarning, match="ratios, criterion"):
        old = pk.sensitivity(net, x, lambda m: 1.0, [0.5], "l1")
    assert old.curves[0].ratios == [0.5]


def test_keyword_only_refuses_too_many_or_twice_given() -> None:
    x = torch.zeros(1, 4)
    with pytest.raises(TypeError, match="at most"):
        pk.groups(_net(), x, None, "extra")
    with pytest.raises(TypeError, match="both positionally and as a keyword"):
        prune_layers(_net(), x, 1, n=1)


def test_the_signature_shows_keyword_only_options() -> None:
    import inspect

    params = inspect.signature(pk.sensitivity).parameters
    assert params["ratios"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["eval_fn"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
