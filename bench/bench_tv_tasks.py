"""torchvision beyond classification: every segmentation, video, detection and optical-flow model of
torchvision (``weights=None``, weights randomised), checked with the exactness oracle at ratio 0.5 and then
pruned in place (apply's verification forward included). Detectors are compared at their final boxes, scores,
labels (masks, keypoints), with score thresholds at 0 so that every image keeps its full quota of detections;
near-ties in their top-k and NMS are replayed (``prunekit.structured.replay``). Writes section ``tv-tasks`` of
docs/RESULTS.md.

    .venv/bin/python bench/bench_tv_tasks.py [--no-write] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import check_each, common_args, finish, machine_line, markdown_table

from prunekit.models.spec import load_model
from prunekit.structured import check, prune
from prunekit.structured.randomize import randomize

# task -> input of that task's models (MViT's positional embeddings need 16 x 224 x 224)
INPUTS = {
    "segmentation": (1, 3, 64, 64),
    "video": (1, 3, 4, 32, 32),
    "detection": (1, 3, 128, 128),
    "optical_flow": (1, 3, 128, 128),
}
SIZE = {"mvit_v1_b": (1, 3, 16, 224, 224), "mvit_v2_s": (1, 3, 16, 224, 224), "s3d": (1, 3, 16, 224, 224)}


def models() -> list[tuple[str, str]]:
    import torchvision.models as tvm

    tasks = {"segmentation": tvm.segmentation, "video": tvm.video, "detection": tvm.detection}
    tasks["optical_flow"] = tvm.optical_flow
    return [(task, name) for task, mod in tasks.items() for name in tvm.list_models(module=mod)]


def keep_every_detection(model: torch.nn.Module) -> int:
    """Score thresholds to 0 (a random-weight detector otherwise keeps few or no boxes to compare); returns
    how many thresholds were set (0: not a detector)."""
    n = 0
    for module in (model, getattr(model, "roi_heads", None)):
        if module is not None and hasattr(module, "score_thresh"):
            module.score_thresh = 0.0
            n += 1
    return n


def one(task: str, name: str) -> dict:
    row: dict = {"task": task, "name": name}
    torch.manual_seed(0)
    shape = SIZE.get(name, INPUTS[task])
    t0 = time.perf_counter()
    try:
        model = randomize(load_model(f"torchvision:{name}"))
        if task == "optical_flow":
            x: object = (torch.rand(*shape), torch.rand(*shape))
        elif task == "detection":
            x = torch.rand(*shape)
        else:
            x = torch.randn(*shape)
        detector = keep_every_detection(model) > 0
        rep = check(model, x, ratio=0.5)
        t1 = time.perf_counter()
        res = prune(model, x, ratio=0.5, measure=False)
        seconds = time.perf_counter() - t1
    except Exception as exc:
        return row | {"status": "error", "why": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}
    return row | {
        "status": "ok" if rep.ok and not rep.rule_errors else "inexact",
        "input": "x".join(map(str, shape[1:])),
        "detections": _detections(model, x) if detector else None,
        "replayed": len(rep.replayed),
        "max_abs_err": rep.max_abs_err,
        "macs_ratio": rep.macs_ratio,
        "params_ratio": rep.params_ratio,
        "prunable": rep.n_prunable_groups,
        "groups": rep.n_groups,
        "prune_s": seconds,
        "check_s": t1 - t0,
        "data_sized": None in res.plan.output_shapes,
    }


def _detections(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return sum(len(o["boxes"]) for o in model.eval()(x))


def markdown(rows: list[dict], machine: str) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    lines = [
        "## torchvision beyond classification (segmentation, video, detection, optical flow)",
        "",
        f"`bench/bench_tv_tasks.py`. {machine} Every model of those four torchvision task modules, "
        "`weights=None`, weights randomised. `prunekit.check(model, x, ratio=0.5)` (the oracle) and then "
        "`prunekit.prune` in place (its verification forward included). Detectors are compared at their "
        "final outputs (boxes, scores, labels, masks, keypoints), score thresholds set to 0 so that each "
        "keeps its full quota of detections (*detections*: boxes in the pruned model's output). Their "
        "top-k and NMS decide on near-equal random scores, where a 1e-7 difference may pick other boxes: "
        "*replayed* counts the decisions whose inputs agreed within the tolerance and whose answer the "
        "pruned run took from the masked reference (`prunekit.structured.replay`); two-stage detectors' RoI "
        "heads are thereby compared on the same proposals. "
        f"**{len(ok)}/{len(rows)} exact and pruned.** *data-sized*: the outputs' sizes follow the values "
        "(boxes, masks), so apply checks only their number.",
        "",
    ]
    header = ["task", "model", "input", "status", "MACs ratio", "params ratio", "prunable / groups",
              "max abs err", "detections", "replayed", "data-sized", "prune s"]  # fmt: skip
    cells = []
    for r in rows:
        if r["status"] == "error":
            cells.append([r["task"], r["name"], "—", f"error: {r['why']}"] + [""] * 8)
            continue
        cells.append([
            r["task"], r["name"], r["input"], r["status"], f"{r['macs_ratio']:.3f}",
            f"{r['params_ratio']:.3f}",
            f"{r['prunable']} / {r['groups']}", f"{r['max_abs_err']:.1e}",
            "—" if r["detections"] is None else r["detections"], r["replayed"],
            "yes" if r["data_sized"] else "no", f"{r['prune_s']:.2f}",
        ])  # fmt: skip
    return "\n".join(lines + markdown_table(header, cells, align="llllrrlrrrlr"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[common_args(threads=2)])
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import torchvision

    cases = [(t, n) for t, n in models() if not args.only or n in args.only]
    rows = check_each(cases, lambda case: one(*case))
    machine = machine_line(args.threads, torchvision=torchvision.__version__)
    finish("tv-tasks", markdown(rows, machine), args, write=not args.only)


if __name__ == "__main__":
    main()
