"""Records serialised by :class:`prunekit._jsondata.JsonData` keep their JSON, key order included.

Each ``_explicit_*`` below writes a record's dict out field by field, as the record's JSON files and
``--json`` outputs carry it; the test compares the JSON text of that with ``to_dict()`` on a real instance
(measured from a model where the record comes from a measurement).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

from prunekit._jsondata import JsonData
from prunekit.measure import count_params, measure_latency, model_size
from prunekit.measure.latency import LatencyStats
from prunekit.measure.params import ParamCount
from prunekit.measure.size import SizeInfo
from prunekit.plan import GroupDecision, Plan
from prunekit.structured.sensitivity import GroupCurve, SensitivityResult


def _model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        net[0].weight[:, :3] = 0
    return net


def _explicit_param_count(p: ParamCount) -> dict:
    return {"total": p.total, "nonzero": p.nonzero, "sparsity": p.sparsity}


def _explicit_size_info(s: SizeInfo) -> dict:
    return {
        "dense_bytes": s.dense_bytes,
        "compressed_bytes": s.compressed_bytes,
        "codec": s.codec,
        "ratio": s.ratio,
    }


def _explicit_latency(stats: LatencyStats) -> dict:
    import dataclasses

    return dataclasses.asdict(stats)


def _explicit_group_curve(c: GroupCurve) -> dict:
    import dataclasses

    return dataclasses.asdict(c)


def _explicit_sensitivity(r: SensitivityResult) -> dict:
    return {
        "baseline": r.baseline,
        "ratios": list(r.ratios),
        "criterion": r.criterion,
        "curves": [_explicit_group_curve(c) for c in r.curves],
    }


def _explicit_group_decision(g: GroupDecision) -> dict:
    return {"id": g.id, "width": g.width, "removed": list(g.removed), "members": g.members}


def _records() -> list[tuple[Any, Any]]:
    net = _model()
    curves = [
        GroupCurve(0, "0.weight[0]", 16, [0.25, 0.5], [4, 8], [0.91, 0.75]),
        GroupCurve(1, "2.weight[0]", 4, [0.25, 0.5], [1, 2], [0.5, float("nan")]),
    ]
    members = [{"name": "0.weight", "dim": 0, "size": 16, "kind": "param", "count": 16}]
    return [
        (count_params(net), _explicit_param_count),
        (model_size(net), _explicit_size_info),
        (measure_latency(net, torch.randn(2, 8), runs=3, warmup=1), _explicit_latency),
        (curves[0], _explicit_group_curve),
        (SensitivityResult(0.93, [0.25, 0.5], "l2", curves), _explicit_sensitivity),
        (GroupDecision(3, 16, [1, 5, 7], members), _explicit_group_decision),
    ]


@pytest.mark.parametrize("index", range(6))
def test_json_is_what_the_hand_written_to_dict_gave(index: int) -> None:
    record, explicit = _records()[index]
    assert isinstance(record, JsonData)
    assert json.dumps(record.to_dict()) == json.dumps(explicit(record))


def test_a_plan_round_trips_with_its_group_decisions() -> None:
    members = [{"name": "fc.weight", "dim": 0, "size": 4, "kind": "param", "count": 4}]
    plan = Plan(removals={"fc.weight": {0: [1]}}, groups=[GroupDecision(0, 4, [1], members)])
    data = plan.to_dict()
    assert data["groups"] == [{"id": 0, "width": 4, "removed": [1], "members": members}]
    assert Plan.from_dict(json.loads(json.dumps(data))).to_dict() == data
