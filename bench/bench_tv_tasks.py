"""torchvision beyond classification: every segmentation, video, detection and optical-flow model of
torchvision (``weights=None``, weights randomised), checked with the exactness oracle at ratio 0.5 and then
pruned in place (apply's verification forward included). Detectors are compared at their head, before top-k
and NMS (see ``check(compare_at=...)``). Writes section ``tv-tasks`` of docs/RESULTS.md.

    .venv/bin/python bench/bench_tv_tasks.py [--no-write] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _engine_helpers import randomize  # noqa: E402
from _results import write_section  # noqa: E402

from prunekit.models.spec import load_model  # noqa: E402
from prunekit.structured import check, prune  # noqa: E402

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


def compare_point(model: torch.nn.Module) -> str | None:
    """Where the oracle compares a detector: before its data-sized post-processing."""
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
    from torchvision.models.detection.ssd import SSD

    if isinstance(model, GeneralizedRCNN):
        return "rpn.head"  # its RoI heads run on proposals picked by top-k/NMS
    if isinstance(model, (RetinaNet, FCOS, SSD)):
        return "head"
    return None


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
        at = compare_point(model)
        rep = check(model, x, ratio=0.5, compare_at=at)
        t1 = time.perf_counter()
        res = prune(model, x, ratio=0.5, measure=False)
        seconds = time.perf_counter() - t1
    except Exception as exc:
        return row | {"status": "error", "why": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}
    return row | {
        "status": "ok" if rep.ok and not rep.rule_errors else "inexact",
        "input": "x".join(map(str, shape[1:])),
        "compared_at": at or "outputs",
        "max_abs_err": rep.max_abs_err,
        "macs_ratio": rep.macs_ratio,
        "params_ratio": rep.params_ratio,
        "prunable": rep.n_prunable_groups,
        "groups": rep.n_groups,
        "prune_s": seconds,
        "check_s": t1 - t0,
        "data_sized": None in res.plan.output_shapes,
    }


def markdown(rows: list[dict], env: dict) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    lines = [
        "## torchvision beyond classification (segmentation, video, detection, optical flow)",
        "",
        f"`bench/bench_tv_tasks.py`, {env['date']}; torchvision {env['torchvision']}, {env['cpu']}, "
        f"{env['threads']} torch threads. Every model of those four torchvision task modules, "
        "`weights=None`, weights randomised. `prunekit.check(model, x, ratio=0.5)` (the oracle) and then "
        "`prunekit.prune` in place (its verification forward included). Detectors are compared at their head "
        "(`compare_at`): their final boxes come from top-k and NMS, where a 1e-7 difference may keep other "
        "boxes; two-stage detectors at `rpn.head`, since their RoI heads run on proposals picked that way "
        "(so the cuts inside their RoI heads are proven only where the proposals match: Faster R-CNN R50 "
        "also matched at `roi_heads.box_predictor`, Keypoint R-CNN did not). "
        f"**{len(ok)}/{len(rows)} exact and pruned.** *data-sized*: the outputs' sizes follow the values "
        "(boxes, masks), so apply checks only their number.",
        "",
        "| task | model | input | compared at | status | MACs ratio | params ratio | prunable / groups "
        "| max abs err | data-sized | prune s |",
        "|---|---|---|---|---|---:|---:|---|---:|---|---:|",
    ]
    for r in rows:
        if r["status"] == "error":
            lines.append(f"| {r['task']} | {r['name']} | — | — | error: {r['why']} | | | | | | |")
            continue
        lines.append(
            f"| {r['task']} | {r['name']} | {r['input']} | {r['compared_at']} | {r['status']} | "
            f"{r['macs_ratio']:.3f} | {r['params_ratio']:.3f} | {r['prunable']} / {r['groups']} | "
            f"{r['max_abs_err']:.1e} | {'yes' if r['data_sized'] else 'no'} | {r['prune_s']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default="docs/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import torchvision

    cases = [(t, n) for t, n in models() if not args.only or n in args.only]
    rows = []
    for task, name in cases:
        rows.append(one(task, name))
        r = rows[-1]
        print(f"{name}: {r['status']} {r.get('max_abs_err', '')} {r.get('why', '')}", flush=True)
    env = {
        "date": datetime.date.today().isoformat(),
        "torchvision": torchvision.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
    }
    text = markdown(rows, env)
    if not args.no_write and not args.only:
        print(f"wrote {write_section('tv-tasks', text, args.results)}")
    else:
        print(text)


if __name__ == "__main__":
    main()
