"""torchvision classification zoo: prune at ratio 0.5, forward works, output shape kept, oracle exact.

The default run covers a representative subset at small inputs; ``PRUNEKIT_ZOO=1`` runs all 80 models
(slow: ~10-20 minutes on 2 cores) and appends one JSON line per model to ``$PRUNEKIT_ZOO_LOG`` if set.
"""

from __future__ import annotations

import copy
import json
import os
import time

import pytest
import torch
import torchvision
from _engine_helpers import assert_exact, randomize, zoo_case

from prunekit.structured.api import plan_prune
from prunekit.structured.cut import apply

FAST = [
    "resnet18",
    "mobilenet_v2",
    "shufflenet_v2_x0_5",
    "densenet121",
    "efficientnet_b0",
    "convnext_tiny",
    "regnet_y_400mf",
    "squeezenet1_1",
    "googlenet",
    "mnasnet0_5",
    "swin_t",
    "vit_b_16",
]
ALL = torchvision.models.list_models(module=torchvision.models)
ZOO = os.environ.get("PRUNEKIT_ZOO") == "1"


def _run(name: str) -> dict:
    torch.manual_seed(0)
    kwargs, size = zoo_case(name)
    model = randomize(torchvision.models.get_model(name, weights=None, **kwargs).eval())
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        shape = model(x).shape
    t0 = time.perf_counter()
    work = copy.deepcopy(model)
    t1 = time.perf_counter()
    plan, _ = plan_prune(work, x, ratio=0.5)
    apply(work, plan, x)
    core = time.perf_counter() - t1
    with torch.no_grad():
        assert work(x).shape == shape
    rep = assert_exact(model, x, ratio=0.5)
    assert rep.removed_units > 0, "nothing was pruned"
    return {
        "model": name,
        "input": size,
        "core_s": round(core, 3),
        "copy_s": round(t1 - t0, 3),
        "groups": rep.n_groups,
        "prunable_groups": rep.n_prunable_groups,
        "macs_ratio": round(rep.macs_ratio, 4),
        "params_ratio": round(rep.params_ratio, 4),
        "max_abs_err": rep.max_abs_err,
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL if ZOO else FAST)
def test_zoo_model_prunes_exactly(name: str) -> None:
    torch.set_num_threads(1)
    row = _run(name)
    log = os.environ.get("PRUNEKIT_ZOO_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps(row) + "\n")
    assert row["macs_ratio"] < 0.95 or name.startswith("vit_")
