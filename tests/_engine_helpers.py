"""Shared helpers for the structural-engine tests."""

from __future__ import annotations

import copy

from torch import nn

from prunekit.structured import check
from prunekit.structured.api import plan_prune
from prunekit.structured.apply import apply
from prunekit.structured.oracle import compare, masked_reference, run_outputs
from prunekit.structured.randomize import randomize  # noqa: F401 (the tests import it from here)


def assert_exact(model: nn.Module, x, ratio: float = 0.5, min_ref: float = 1e-3, **kw):
    """check() passes, outputs are non-trivial and keep their shapes. Returns the report."""
    rep = check(model, x, ratio=ratio, **kw)
    assert rep.rule_errors == []
    assert rep.shapes_equal
    assert rep.ok, f"max_abs_err {rep.max_abs_err} > tol {rep.tolerance}"
    ref = run_outputs(masked_reference(model, rep.plan), x)
    assert max(float(t.abs().max()) for t in ref if t.is_floating_point()) > min_ref, "vacuous check"
    return rep


def pruned_copy(model: nn.Module, x, ratio: float = 0.5, **kw):
    """Prune a deep copy; returns (copy, plan) after asserting the oracle matches."""
    m = copy.deepcopy(model)
    plan, _ = plan_prune(m, x, ratio=ratio, **kw)
    ref = run_outputs(masked_reference(model, plan), x)
    apply(m, plan, x)
    cmp = compare(run_outputs(m, x), ref)
    assert cmp.ok, cmp
    return m, plan


def zoo_case(name: str) -> tuple[dict, int]:
    """Constructor kwargs and the smallest square input size each torchvision classifier accepts."""
    if name.startswith("vit_"):
        return {"image_size": 56 if "_14" in name else 64}, 56 if "_14" in name else 64
    if name == "maxvit_t":
        return {}, 224
    if name in ("inception_v3", "googlenet"):
        return {"aux_logits": False, "init_weights": False}, 96 if name == "inception_v3" else 64
    return {}, 64


def built_results(monkeypatch) -> list:
    """The plan of every PruneResult built from now on in the test, in order (all go through
    ``pipeline.make_result``)."""
    from prunekit.structured import pipeline

    built = []
    make = pipeline.make_result

    def counting(*args, **kwargs):
        built.append(args[0])
        return make(*args, **kwargs)

    monkeypatch.setattr(pipeline, "make_result", counting)
    return built
