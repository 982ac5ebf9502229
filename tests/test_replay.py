"""Decision replay in the exactness oracle: near-ties taken from the reference, real differences never."""

from __future__ import annotations

import copy

import pytest
import torch
from _engine_helpers import randomize

from prunekit.structured import check
from prunekit.structured.api import plan_prune
from prunekit.structured.apply import apply
from prunekit.structured.oracle import compare, masked_reference, run_outputs
from prunekit.structured.replay import Decisions


def _recorded(fn, x) -> Decisions:
    d = Decisions()
    with d.recording():
        fn(x)
    return d


def test_a_near_tie_takes_the_reference_answer_a_real_difference_keeps_its_own():
    d = _recorded(lambda x: x.argmax(), torch.tensor([1.0, 1.0, 0.0]))
    with d.replaying():
        near = torch.tensor([1.0, 1.0 + 1e-6, 0.0]).argmax()
    assert near.item() == 0 and d.replayed == ["Tensor.argmax (call 1)"]
    with d.replaying():
        far = torch.tensor([1.0, 1.5, 0.0]).argmax()
    assert far.item() == 1 and d.replayed == []  # 0.5 apart: a different question, answered by itself


def test_paired_values_are_gathered_from_the_pruned_run_at_the_reference_indices():
    ref = torch.tensor([[3.0, 3.0, 1.0], [0.0, 2.0, 2.0]])
    calls = (
        lambda x: x.topk(2, dim=1),
        lambda x: torch.max(x, 1),
        lambda x: x.sort(dim=1, descending=True),
        lambda x: torch.kthvalue(-x, 1, 1, keepdim=True),
    )
    d = _recorded(lambda x: [f(x) for f in calls], ref)
    ours = ref + torch.tensor([[0.0, 1e-6, 0.0], [0.0, 0.0, 1e-6]])
    with d.replaying():
        top, mx, srt, kth = (f(ours) for f in calls)
    assert top.indices.tolist() == [[0, 1], [1, 2]] and mx.indices.tolist() == [0, 1]
    assert torch.equal(top.values, ours.gather(1, top.indices))  # the pruned run's own numbers
    assert torch.equal(mx.values, ours[[0, 1], [0, 1]]) and mx.values.shape == (2,)
    assert srt.indices[:, :2].tolist() == [[0, 1], [1, 2]]
    want = torch.kthvalue(-ref, 1, 1, keepdim=True).indices  # the reference's tie-break, whichever it is
    assert torch.equal(kth.indices, want) and torch.equal(kth.values, (-ours).gather(1, want))
    assert len(d.replayed) == 4


def test_replay_stops_once_the_two_runs_make_different_calls():
    x = torch.tensor([1.0, 1.0, 0.0])
    d = _recorded(lambda t: (t.argmax(), t.argmax()), x)
    y = torch.tensor([1.0, 1.0 + 1e-6, 0.0])
    with d.replaying():
        first, second = y.argmin(), y.argmax()  # argmin where the reference ran argmax: out of step, so the
    # second call, an argmax like the reference's second, is not replayed either (it would answer 0)
    assert (first.item(), second.item()) == (2, 1) and d.replayed == []


def test_a_decision_with_other_float_outputs_is_left_alone():
    x = torch.tensor([2.0, 1.0, 2.0])
    d = _recorded(lambda t: torch.unique(t, return_inverse=True), x)
    with d.replaying():
        values, _ = torch.unique(x + torch.tensor([0.0, 0.0, 1e-6]), return_inverse=True)
    assert len(values) == 3 and d.replayed == []  # no rule to recompute unique's values: own answer kept


def test_detector_final_boxes_are_exact_once_near_ties_are_replayed():
    # SSDlite's per-class top-k over near-equal random scores: two equal networks order (and keep) boxes
    # differently by 1e-7 differences. Without replay its final outputs do not compare; with it they do.
    pytest.importorskip("torchvision")
    from prunekit.models.spec import load_model

    torch.manual_seed(0)
    model, x = randomize(load_model("torchvision:ssdlite320_mobilenet_v3_large")), torch.rand(1, 3, 96, 96)
    rep = check(model, x, ratio=0.5)
    assert rep.ok and rep.shapes_equal and rep.replayed and rep.to_dict()["replayed"] == rep.replayed
    assert {r.split(" (")[0] for r in rep.replayed} <= {"Tensor.topk", "Tensor.sort", "nms"}
    plan, _ = plan_prune(model, x, ratio=0.5)
    pruned = copy.deepcopy(model)
    apply(pruned, plan, x)
    plain = compare(run_outputs(pruned, x), run_outputs(masked_reference(model, plan), x))
    assert not plain.ok  # the same comparison without replay: the near-ties flip
