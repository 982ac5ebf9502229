"""Structural pruning: prunekit vs Torch-Pruning on the torchvision classification zoo, memory, speedups.

For every torchvision classifier (``weights=None``) one subprocess builds the model and times, in the same
run, prunekit (trace + group + plan + apply, ratio 0.5, L2) and Torch-Pruning's ``MetaPruner``
(``MagnitudeImportance(p=2)``, ``pruning_ratio=0.5``, the final classifier ignored as TP requires) on the
same input, each after an untimed warm-up prune of a tiny CNN (lazy imports, first-call costs). Torch-Pruning
gets ``--tp-timeout`` seconds (SIGALRM, then the subprocess is killed); a crash is recorded as
``crash: <error>``. "Handles" means: no error, the forward still works and the output shape is unchanged.
Then the two largest models timed again with prunekit alone on ``--big-threads`` threads (both cores), the
time of each step of prunekit's pipeline on a few models (``phase_times``), peak extra RAM of prunekit on
the largest models, and CPU batch-1 latency speedup vs MACs reduction for ResNet-50, MobileNetV2, ViT-B/16
and YOLOv8n at ratios 0.3 / 0.5 / 0.7.

Torch-Pruning is a bench-only dependency (``pip install torch-pruning``); the package never imports it.

    python bench/bench_structured.py --threads 1            # everything, writes docs/RESULTS.md `structural`
    python bench/bench_structured.py --models resnet18,vit_b_16 --no-latency --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import threading
import time
from pathlib import Path

import torch
import torchvision
from _common import common_args, finish, machine_line, run_in_workers, worker_row
from _peers import metapruner

ROOT = Path(__file__).resolve().parent.parent
BIG = ("regnet_y_128gf", "vit_h_14", "regnet_y_32gf", "vit_l_16", "wide_resnet101_2")


def zoo_case(name: str, size: int) -> tuple[dict, int]:
    """Constructor kwargs and input size (as tests/_engine_helpers.zoo_case, with ``size`` for plain CNNs)."""
    if name.startswith("vit_"):
        return {"image_size": 56 if "_14" in name else 64}, 56 if "_14" in name else 64
    if name == "maxvit_t":
        return {}, 224
    if name in ("inception_v3", "googlenet"):
        return {"aux_logits": False, "init_weights": False}, max(size, 96 if name == "inception_v3" else 64)
    return {}, size


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Samples the resident set size every 5 ms in a thread; ``extra`` = peak minus the size at start."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())
        self.extra = self.peak - self.start


def _build(name: str, size: int) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    kwargs, s = zoo_case(name, size)
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    return model, torch.randn(1, 3, s, s)


def _shape_kept(model: torch.nn.Module, x: torch.Tensor, shape: torch.Size) -> str:
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # the bench records a broken forward, it does not stop
        return f"broken forward: {type(exc).__name__}: {str(exc)[:80]}"
    return "ok" if out.shape == shape else f"output shape {tuple(out.shape)} != {tuple(shape)}"


def run_prunekit(name: str, size: int, memory: bool = True) -> dict:
    from prunekit.structured.api import plan_prune
    from prunekit.structured.apply import apply

    model, x = _build(name, size)
    with torch.no_grad():
        shape = model(x).shape  # warm-up forward, untimed (both tools get one)
    params = sum(p.numel() for p in model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    dense_fwd = _forward_s(model, x)
    t0 = time.perf_counter()
    plan, _ = plan_prune(model, x, ratio=0.5, criterion="l2")
    apply(model, plan, x)
    sec = time.perf_counter() - t0
    pruned_fwd = _forward_s(model, x)
    extra = None
    if memory and name in BIG:  # memory in a separate, untimed run (a sampling thread disturbs timing)
        model, x = _build(name, size)
        with PeakRSS() as mem:
            plan, _ = plan_prune(model, x, ratio=0.5, criterion="l2")
            apply(model, plan, x)
        extra = mem.extra / 2**20
    after = sum(p.numel() for p in model.parameters())
    return {
        "status": _shape_kept(model, x, shape),
        "seconds": sec,
        "params_ratio": after / params,
        "model_mb": model_bytes / 2**20,
        "extra_mb": extra,
        "forwards": dense_fwd + pruned_fwd,
    }


def _forward_s(model: torch.nn.Module, x: torch.Tensor, repeats: int = 3) -> float:
    """Best of ``repeats`` no-grad forwards, in seconds (the work a trace and a verification cannot skip)."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t0)
    return best


PHASE_MODELS = ("mobilenet_v2", "efficientnet_b0", "resnet50", "densenet121", "vit_b_16")


def phase_times(name: str, size: int, repeats: int = 3) -> dict[str, float]:
    """Seconds per step of prunekit's pipeline (best of ``repeats``, a freshly built model each time).

    The steps are exactly what ``plan_prune`` + ``apply`` run, timed one by one; ``forward`` is one plain
    no-grad forward of the dense model, for scale (the trace runs one, the verification another on the
    pruned model).
    """
    from prunekit.criteria import ScoreContext, get_criterion
    from prunekit.graph.groups import groups_from_trace
    from prunekit.graph.trace import trace
    from prunekit.structured.apply import _verify, apply
    from prunekit.structured.select import build_plan, choose_units

    best: dict[str, float] = {}
    for _ in range(repeats):
        model, x = _build(name, size)
        with torch.no_grad():
            model(x)
            t = [time.perf_counter()]
            model(x)
        t.append(time.perf_counter())
        tr = trace(model, x)
        t.append(time.perf_counter())
        report = groups_from_trace(tr)
        t.append(time.perf_counter())
        score, ctx = get_criterion("l2"), ScoreContext.of(model, x)
        scores = {g.id: torch.as_tensor(score(g, ctx), dtype=torch.float64) for g in report.prunable_groups}
        t.append(time.perf_counter())
        plan = build_plan(report, choose_units(report, scores, 0.5))
        t.append(time.perf_counter())
        apply(model, plan)  # cut only
        t.append(time.perf_counter())
        _verify(model, plan, x)
        t.append(time.perf_counter())
        steps = ("forward", "trace", "group", "score", "plan", "cut", "verify")
        for step, a, b in zip(steps, t[:-1], t[1:], strict=True):
            best[step] = min(best.get(step, float("inf")), b - a)
    return best


def run_tp(name: str, size: int, timeout: int) -> dict:
    model, x = _build(name, size)
    with torch.no_grad():
        out = model(x)
    n_classes = out.shape[-1]
    ignored = [
        m
        for m in model.modules()
        if (isinstance(m, torch.nn.Linear) and m.out_features == n_classes)
        or (isinstance(m, torch.nn.Conv2d) and m.out_channels == n_classes)
    ]
    res = metapruner(model, x, ignored, timeout)
    if res["status"] == "ok":
        res["status"] = _shape_kept(model, x, out.shape)
    return res


def _tiny() -> tuple[torch.nn.Module, torch.Tensor]:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    )
    return net.eval(), torch.randn(1, 3, 16, 16)


def worker(name: str, size: int, threads: int, tp_timeout: int, tools: str) -> None:
    torch.set_num_threads(threads)
    row = {"model": name}
    if "pk" in tools:
        from prunekit.structured.api import prune

        net, x = _tiny()
        prune(net, x, ratio=0.5, measure=False)  # warm-up: lazy imports and first-call costs, untimed
        row["pk"] = run_prunekit(name, size, memory="nomem" not in tools)
    if "tp" in tools:
        import torch_pruning as tp

        net, x = _tiny()
        imp = tp.importance.MagnitudeImportance(p=2)
        tp.pruner.MetaPruner(net, x, importance=imp, pruning_ratio=0.5, ignored_layers=[net[6]]).step()
        row["tp"] = run_tp(name, size, tp_timeout)
    worker_row(row)


def zoo(models: list[str], size: int, threads: int, tp_timeout: int, tools: str) -> list[dict]:
    def command(name: str) -> list[str]:
        return [__file__, "--worker", name, "--size", str(size), "--threads", str(threads),
                "--tp-timeout", str(tp_timeout), "--tools", tools]  # fmt: skip

    def dead(name: str, why: str, timed_out: bool) -> dict:
        return {"model": name, "tp" if timed_out else "pk": {"status": why, "seconds": None}}

    return run_in_workers(models, command, tp_timeout + 300, dead)


def _latency_model(name: str, ratio: float) -> tuple[torch.nn.Module, torch.Tensor]:
    """Dense (``ratio`` 0) or pruned model for the latency table, and its input (YOLOv8n: 640, else 224)."""
    from prunekit.structured.api import prune

    torch.manual_seed(0)
    if name == "yolov8n":
        from prunekit.models.ultralytics import load_yolo, prune_yolo

        model = load_yolo("yolov8n.yaml")
        if ratio:
            prune_yolo(model, ratio=ratio, imgsz=640, trainable=False)
        return model, torch.randn(1, 3, 640, 640)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    if ratio:
        prune(model, x, ratio=ratio, measure=False)
    return model, x


def _deployed(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The form one would deploy in PyTorch: Conv+BN folded, channels_last (CNNs); ViT unchanged."""
    from torch.fx.experimental.optimization import fuse

    if name.startswith("vit"):
        return model
    if name == "yolov8n":
        return model.fuse(verbose=False).to(memory_format=torch.channels_last)
    return fuse(model).to(memory_format=torch.channels_last)


def latency_rows(ratios: tuple[float, ...], threads: list[int], runs: int) -> list[dict]:
    """Batch-1 latency, dense vs pruned, eager as built and in deployed form, at each thread count."""
    import copy

    from prunekit.measure.latency import measure_latency
    from prunekit.measure.macs import count_macs

    rows = []
    for name in ("resnet50", "mobilenet_v2", "vit_b_16", "yolov8n"):
        models = {}
        for r in (0.0, *ratios):
            models[r], x = _latency_model(name, r)
        macs = {r: count_macs(m, x) for r, m in models.items()}
        forms = {"eager": models}
        forms["deployed"] = {r: _deployed(copy.deepcopy(m), name) for r, m in models.items()}
        for form, ms in forms.items():
            xin = x if form == "eager" or name.startswith("vit") else x.to(memory_format=torch.channels_last)
            for t in threads:
                lat = {}
                for _round in range(3):  # interleaved rounds, best median kept: the machine is shared
                    for r, m in ms.items():
                        med = measure_latency(m, xin, runs=runs, warmup=5, threads=t).median_ms
                        lat[r] = min(lat.get(r, float("inf")), med)
                for r in ratios:
                    speedup, reduction = lat[0.0] / lat[r], macs[0.0] / macs[r]
                    rows.append(
                        {
                            "model": name, "ratio": r, "form": form, "threads": t,
                            "dense_ms": lat[0.0], "pruned_ms": lat[r], "speedup": speedup,
                            "macs_reduction": reduction, "efficiency": speedup / reduction,
                        }
                    )  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def _fmt_s(v: dict | None) -> str:
    if not v:
        return "—"
    if v.get("status") != "ok":
        return v.get("status", "?").replace("|", "/")
    return f"{v['seconds']:.2f}"


def _bound_lines(both: list[dict], ratios: list[float]) -> list[str]:
    """What the two forwards every prunekit call runs (trace, verification) allow against Torch-Pruning."""
    rows = [r for r in both if r["pk"].get("forwards")]
    if not rows or not ratios:
        return []
    bound = [r["tp"]["seconds"] / r["pk"]["forwards"] for r in rows]
    python = [(r["pk"]["seconds"] - r["pk"]["forwards"]) / r["pk"]["forwards"] for r in rows]
    return [
        "- The two forwards each prunekit call runs (the trace's on the dense model, the verification's on "
        "the pruned one; best of 3 each, timed separately): Torch-Pruning time / their time, median "
        f"**{statistics.median(bound):.1f}x** — the most any engine that runs them could reach. The rest "
        f"of prunekit's time (rules, grouping, scoring, planning, cutting, in Python) is a median "
        f"{statistics.median(python):.1f}x those two forwards; 5x would need it at most "
        f"{statistics.median(b / 5 - 1 for b in bound):.1f}x (median over models of: Torch-Pruning's "
        "time / 5, less the forwards, over the forwards).",
    ]


def render(rows: list[dict], lat: list[dict], args: argparse.Namespace, load: tuple[float, ...]) -> str:
    ok_pk = [r for r in rows if r.get("pk", {}).get("status") == "ok"]
    ok_tp = [r for r in rows if r.get("tp", {}).get("status") == "ok"]
    both = [r for r in ok_pk if r.get("tp", {}).get("status") == "ok"]
    ratios = [r["tp"]["seconds"] / r["pk"]["seconds"] for r in both]
    pk_times = [r["pk"]["seconds"] for r in ok_pk]
    slow = sorted(ok_pk, key=lambda r: -r["pk"]["seconds"])[:5]
    lines = [
        "## Structural pruning: prunekit vs Torch-Pruning (torchvision zoo)",
        "",
        machine_line(args.threads, torchvision=torchvision.__version__, torch_pruning=args.tp_version)
        + f" The machine is shared with other jobs (load average {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} at the start). Input 1x3x{args.size}x{args.size} for CNNs (ViT: 64, "
        "ViT-*/14: 56, Inception-v3: 96, MaxViT: 224, as in tests/test_structured_zoo.py); `weights=None`.",
        "Time = trace + group + plan + apply (prunekit, includes its verification forward) vs MetaPruner "
        "construction + `step()` (Torch-Pruning), ratio 0.5, L2 magnitude; model building and one warm-up "
        "forward are not timed. Both run in the same subprocess per model, prunekit first.",
        *([args.note] if args.note else []),
        "",
        f"- Models: {len(rows)}; prunekit handles **{len(ok_pk)}**, Torch-Pruning handles **{len(ok_tp)}** "
        "(no error, forward works, output shape kept).",
        f"- Speed: on the {len(both)} models both handle, Torch-Pruning time / prunekit time: median "
        f"**{statistics.median(ratios) if ratios else float('nan'):.1f}x**"
        + (f", min {min(ratios):.1f}x, max {max(ratios):.1f}x." if ratios else "."),
        *_bound_lines(both, ratios),
        f"- prunekit time: median {statistics.median(pk_times):.2f} s, max {max(pk_times):.2f} s; slowest: "
        + ", ".join(f"{r['model']} {r['pk']['seconds']:.1f} s" for r in slow)
        + " (target: ≤ 3 s for every model).",
        "",
        "| model | prunekit s | Torch-Pruning s | TP / pk | prunekit params kept |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        pk, tpr = r.get("pk"), r.get("tp")
        ratio = (
            f"{tpr['seconds'] / pk['seconds']:.1f}x"
            if pk and tpr and pk.get("status") == "ok" and tpr.get("status") == "ok"
            else "—"
        )
        kept = f"{pk['params_ratio']:.2f}" if pk and pk.get("status") == "ok" else "—"
        lines.append(f"| {r['model']} | {_fmt_s(pk)} | {_fmt_s(tpr)} | {ratio} | {kept} |")
    if getattr(args, "big", None):
        lines += [
            "",
            "### The largest models on both cores (prunekit alone, "
            f"`torch.set_num_threads({args.big_threads})`, {args.big_repeats} runs, each in a fresh "
            "subprocess)",
            "",
            "| model | seconds per run | max |",
            "|---|---|---:|",
        ]
        for r in args.big:
            secs = [s for s in r["seconds"] if s is not None]
            shown = ", ".join(f"{s:.2f}" for s in secs) or "failed"
            lines.append(f"| {r['model']} | {shown} | {max(secs) if secs else float('nan'):.2f} |")
    if getattr(args, "phases", None):
        steps = ("trace", "group", "score", "plan", "cut", "verify")
        lines += [
            "",
            "### Where prunekit's time goes (ms, best of 3, 1 thread; same input as the zoo)",
            "",
            "*forward*: one plain forward of the dense model, for scale: the trace runs one (plus the "
            "rules), the verification runs one on the pruned model. Torch-Pruning's time: the zoo table.",
            "",
            "| model | forward | " + " | ".join(steps) + " | total | Torch-Pruning |",
            "|---|" + "---:|" * (len(steps) + 3),
        ]
        tp_of = {r["model"]: r.get("tp", {}) for r in rows}
        for name, ph in args.phases.items():
            tpr = tp_of.get(name, {})
            tp_ms = f"{tpr['seconds'] * 1e3:.0f}" if tpr.get("status") == "ok" else "—"
            cells = " | ".join(f"{ph[s] * 1e3:.1f}" for s in steps)
            total = sum(ph[s] for s in steps) * 1e3
            lines.append(f"| {name} | {ph['forward'] * 1e3:.1f} | {cells} | {total:.0f} | {tp_ms} |")
    big = [r for r in ok_pk if r["pk"].get("extra_mb") is not None]
    if big:
        lines += [
            "",
            "### Memory (prunekit, peak extra resident memory while pruning, sampled every 5 ms)",
            "",
            "| model | model size MB | peak extra MB | extra / model |",
            "|---|---:|---:|---:|",
        ]
        for r in big:
            pk = r["pk"]
            share = pk["extra_mb"] / pk["model_mb"]
            lines.append(f"| {r['model']} | {pk['model_mb']:.0f} | {pk['extra_mb']:.0f} | {share:.2f} |")
    if lat:
        lines += [
            "",
            f"### CPU batch-1 latency vs MACs (median of {args.runs} runs, best of 3 interleaved rounds, "
            "untrained weights)",
            "",
            "Input 224x224 (YOLOv8n: 640x640, pruned with `trainable=False`, all head outputs). *eager*: the "
            "model as built, `eval()`, `torch.inference_mode`. *deployed*: Conv+BN folded "
            "(`torch.fx.experimental.optimization.fuse`; YOLO: ultralytics' `fuse()`) and channels_last, "
            "for dense and pruned alike (ViT: as eager). Efficiency = speedup / MACs reduction.",
            "",
            "| model | ratio | form | threads | dense ms | pruned ms | speedup | MACs reduction "
            "| efficiency |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in lat:
            lines.append(
                f"| {r['model']} | {r['ratio']} | {r['form']} | {r['threads']} | {r['dense_ms']:.1f} | "
                f"{r['pruned_ms']:.1f} | {r['speedup']:.2f}x | {r['macs_reduction']:.2f}x | "
                f"{r['efficiency']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[common_args(threads=2)])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--tp-timeout", type=int, default=60)
    ap.add_argument("--models", default="", help="comma-separated subset (default: the whole zoo)")
    ap.add_argument("--tools", default="pk,tp", help="pk, tp; nomem skips the memory run")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--latency-threads", default="1,2", help="thread counts for the latency table")
    ap.add_argument(
        "--big-threads",
        type=int,
        default=2,
        help="also time prunekit alone on the largest models with this many threads (0: skip)",
    )
    ap.add_argument("--big-repeats", type=int, default=3)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--rows", help="reuse zoo rows from this JSON file instead of running the zoo")
    ap.add_argument("--note", default="", help="a sentence added under the machine description")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.size, args.threads, args.tp_timeout, args.tools)
        return 0
    import torch_pruning

    args.tp_version = torch_pruning.__version__
    load = os.getloadavg()
    models = (
        args.models.split(",") if args.models else torchvision.models.list_models(module=torchvision.models)
    )
    if args.rows:
        rows = json.loads(Path(args.rows).read_text())
    else:
        rows = zoo(models, args.size, args.threads, args.tp_timeout, args.tools)
        Path("/tmp/bench_structured_rows.json").write_text(json.dumps(rows))
    big = []
    if args.big_threads:
        for name in [m for m in BIG[:2] if m in models]:
            runs = [
                zoo([name], args.size, args.big_threads, args.tp_timeout, "pk,nomem")[0]
                for _ in range(args.big_repeats)
            ]
            big.append({"model": name, "seconds": [r["pk"].get("seconds") for r in runs]})
    args.big = big
    torch.set_num_threads(1)
    args.phases = {n: phase_times(n, args.size) for n in PHASE_MODELS if n in models}
    threads = [int(t) for t in args.latency_threads.split(",")]
    lat = [] if args.no_latency else latency_rows((0.3, 0.5, 0.7), threads, args.runs)
    text = render(rows, lat, args, load)
    finish("structural", text, args)
    print(f"max RSS of the driver: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
