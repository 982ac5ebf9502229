"""The Pareto of pruned detectors against training the smaller model from scratch, on the offline scenes set
(:func:`prunekit.models.yolo_scenes.make_scenes_dataset`).

Rows, each trained with ultralytics' own trainer (``workers=0``, on ``--device``: the CPU unless a GPU is
named, ``plots=False``, everything offline):

- **dense**: YOLOv8n, YOLOv8s, YOLO11n, YOLO11s (``--quick``: YOLO11n and YOLOv8n), random init, ``E`` epochs;
- **pruned**: YOLO11n to 1/1.5 and 1/2 of its MACs, YOLOv8s to YOLOv8n's MACs, from the dense checkpoint,
  recovered in ``R`` epochs by each method of :func:`prunekit.models.yolo_recipe.run_recipe`: ``oneshot``
  (cut, fine-tune ``R``), ``sparsity`` (group-lasso training ``R/2``, cut, fine-tune the rest), ``gradual``
  (gradual pruning ``R/2``, fine-tune the rest), each without and with distillation from the dense model
  (``--quick``: YOLO11n at 2x, one-shot without KD and gradual with KD; ``--medium``: YOLO11n at 2x, every
  method with and without KD, on 1,000 images at 224 px, 60 dense + 20 recovery epochs, and an 80-epoch
  scratch row per distinct pruned architecture: 260-660 epochs, a dense epoch 81-94 s on an idle 2-core AMD
  EPYC, so 5 h or more there; the full budget is 84 h or more, section ``yolo-epoch``);
- **scratch**: each pruned architecture (its widths: rebuilt from the pruned checkpoint's yaml where it states
  them, else the pruned module with every parameter re-initialised as ultralytics initialises a new model)
  trained from random init for ``E + R`` epochs, the dense + recovery budget of the pruned row.
  Pruned rows with the same widths (a local-scope cut at one ratio gives the same widths whatever the
  weights) share one scratch row.

The pruning ratio of each row is searched (bisection on a random-weight copy) so the cut keeps the row's MACs
target; the MACs actually reached are recorded. Every row records params, MACs (at ``imgsz``), mAP50 and
mAP50-95 (ultralytics' validator on the val split), onnxruntime latency (batch 1, one thread, through
:func:`prunekit.deploy.runtimes.measure.runtime_latency`) and training seconds, into
``bench/results/yolo_pareto.json`` (``yolo_pareto_quick.json`` / ``yolo_pareto_medium.json`` for those
modes; rewritten atomically after every row; a rerun skips finished rows whose
checkpoints still exist, so the bench resumes where it stopped; an interrupted dense or scratch row
continues from its ``last.pt`` with ultralytics' ``resume``, a pruned row's recipe starts again).
Checkpoints and ultralytics' runs go under ``--work`` (default ``runs/yolo_pareto/<mode>``). Each mode
writes its own section of docs/RESULTS.md: ``yolo-pareto``, ``yolo-pareto-quick``, ``yolo-pareto-medium``.

    .venv/bin/python bench/bench_yolo_pareto.py --quick|--medium [--no-write] [--threads 2] [--only dense]
        [--device 0]   # train and validate on a GPU
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch
from _common import ROOT, FirstOutput, common_args, finish, machine_line, markdown_table

from prunekit._atomic import write_text

RESULTS_DIR = ROOT / "bench" / "results"
FIELDS = ("model", "method", "kd", "params", "macs", "map50_95", "map50", "ort_ms", "seed", "epochs")
METHODS = ("oneshot", "sparsity", "gradual")
# the train arguments the recipe stages share
SHARED = ("batch", "workers", "device", "seed", "deterministic", "warmup_epochs", "amp", "optimizer", "lr0")
NC = 10  # the scenes set's classes (digits)


@dataclass(frozen=True)
class Budget:
    """What a run trains: the dataset's size, the image side, epochs per stage, batch, seed, which rows."""

    n_train: int
    n_val: int
    imgsz: int
    dense_epochs: int
    recovery_epochs: int
    batch: int
    seed: int
    dense: tuple[str, ...]
    pruned: tuple[tuple[str, str, str, bool], ...]  # (model, target, method, kd)
    warmup_epochs: float = 3.0  # ultralytics warms up for at least 100 iterations unless this is 0
    optimizer: str = "auto"
    lr0: float = 0.01  # ignored by optimizer="auto"
    ort_runs: int = 30
    search_steps: int = 7  # bisection steps of the ratio search


FULL_PRUNED = tuple(
    (model, target, method, kd)
    for model, target in (("yolo11n", "1.5x"), ("yolo11n", "2x"), ("yolov8s", "yolov8n"))
    for method in METHODS
    for kd in (False, True)
)
FULL = Budget(n_train=2000, n_val=400, imgsz=320, dense_epochs=100, recovery_epochs=30, batch=16, seed=0,
              dense=("yolov8n", "yolov8s", "yolo11n", "yolo11s"), pruned=FULL_PRUNED)  # fmt: skip
MEDIUM = Budget(n_train=1000, n_val=200, imgsz=224, dense_epochs=60, recovery_epochs=20, batch=16, seed=0,
                dense=("yolo11n",), pruned=tuple(("yolo11n", "2x", method, kd) for method in METHODS
                                                 for kd in (False, True)))  # fmt: skip
QUICK = Budget(n_train=256, n_val=64, imgsz=128, dense_epochs=10, recovery_epochs=4, batch=8, seed=0,
               dense=("yolo11n", "yolov8n"), pruned=(("yolo11n", "2x", "oneshot", False),
                                                     ("yolo11n", "2x", "gradual", True)),
               warmup_epochs=0.0, optimizer="AdamW", lr0=0.002)  # fmt: skip


def _train_args(budget: Budget, project: Path, device: str = "cpu") -> dict[str, Any]:
    return dict(
        imgsz=budget.imgsz, batch=budget.batch, workers=0, device=device, plots=False, verbose=False,
        seed=budget.seed, deterministic=True, project=str(project.resolve()), exist_ok=True,
        warmup_epochs=budget.warmup_epochs, amp=False, optimizer=budget.optimizer, lr0=budget.lr0,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# measurement


def _decoded(detector: torch.nn.Module) -> torch.nn.Module:
    """The detector as deployed: image in, decoded boxes and class scores out (what ``export`` keeps)."""
    return FirstOutput(detector).eval()


def measure(
    ckpt: Path, data: Path, budget: Budget, project: Path, name: str, device: str = "cpu"
) -> dict[str, Any]:
    """params, MACs, mAP50-95 / mAP50 (ultralytics' validator on ``device``) and onnxruntime ms (CPU) of the
    checkpoint."""
    from ultralytics import YOLO

    from prunekit.deploy.runtimes.measure import runtime_latency
    from prunekit.measure import count_macs, count_params
    from prunekit.models.ultralytics import example_inputs, read_checkpoint

    detector = read_checkpoint(ckpt).float().eval()
    x = example_inputs(detector, budget.imgsz)
    stats = {"params": count_params(detector).total, "macs": count_macs(detector, x)}
    metrics = YOLO(str(ckpt)).val(
        data=str(data), imgsz=budget.imgsz, batch=budget.batch, device=device, workers=0, plots=False,
        verbose=False, project=str(project.resolve()), name=f"val_{name}", exist_ok=True,
    )  # fmt: skip
    stats["map50_95"], stats["map50"] = float(metrics.box.map), float(metrics.box.map50)
    model = copy.deepcopy(detector)
    for m in model.modules():
        if hasattr(m, "export"):
            m.export = False
    stats["ort_ms"] = runtime_latency("onnxruntime", threads=1)(_decoded(model), x, budget.ort_runs)
    return stats


def arch_key(detector: torch.nn.Module) -> str:
    """A short hash of every parameter's and buffer's name and shape: equal for equal architectures."""
    shapes = [(k, tuple(v.shape)) for k, v in detector.state_dict().items()]
    return hashlib.sha256(repr(shapes).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------------------
# models


def unfinished_epochs(last: Path) -> int:
    """Epochs an interrupted ultralytics run saved in ``last`` (0: no such run, or it finished)."""
    if not last.is_file():
        return 0
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    return ckpt.get("epoch", -1) + 1 if ckpt.get("optimizer") is not None else 0


def random_init(cfg: str, seed: int) -> torch.nn.Module:
    """A new ``cfg`` detector for the scenes classes, initialised by ultralytics from ``seed``."""
    from ultralytics.nn.tasks import DetectionModel

    from prunekit.models.ultralytics import import_ultralytics

    import_ultralytics()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DetectionModel(cfg, nc=NC, verbose=False).eval()


def scratch_copy(pruned: torch.nn.Module, seed: int) -> tuple[torch.nn.Module, str]:
    """The pruned architecture with random weights, and how it was made: ``"yaml"`` (built from the pruned
    checkpoint's yaml, when that rebuilds every tensor's shape) or ``"reset"`` (the pruned module, every
    layer's ``reset_parameters``, the DFL conv set back to its fixed bin indices, then ultralytics'
    ``initialize_weights`` and the head's ``bias_init``, what a new ``DetectionModel`` does)."""
    from ultralytics.nn.modules.block import DFL
    from ultralytics.utils.torch_utils import initialize_weights

    want = {k: tuple(v.shape) for k, v in pruned.state_dict().items()}
    try:
        built = random_init(copy.deepcopy(pruned.yaml), seed)
        if {k: tuple(v.shape) for k, v in built.state_dict().items()} == want:
            return built, "yaml"
    except Exception:  # a free-width yaml names a module that does not exist; fall back to resetting
        pass
    model = copy.deepcopy(pruned).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters") and m is not model:
                m.reset_parameters()
        for m in model.modules():
            if isinstance(m, DFL):  # its conv is the fixed bin index 0..c1-1, not a learned layer
                m.conv.weight.data.copy_(torch.arange(m.c1, dtype=torch.float).view(1, m.c1, 1, 1))
        initialize_weights(model)
        head = model.model[-1]
        if hasattr(head, "bias_init"):
            head.bias_init()
    return model.eval(), "reset"


def macs_fraction(cfg: str, ratio: float, trainable: bool) -> float:
    """MACs kept by the cut the recipe makes at ``ratio`` (local scope, l2), on random weights at 64 px."""
    from prunekit.models.ultralytics import prune_yolo

    model = random_init(f"{cfg}.yaml", 0)
    return prune_yolo(model, ratio=ratio, imgsz=64, trainable=trainable, scope="local").macs_ratio


def ratio_for(cfg: str, keep: float, trainable: bool, steps: int = 7) -> float:
    """The pruning ratio whose cut keeps ``keep`` of ``cfg``'s MACs (bisection, closest of the tried)."""
    low, high, best = 0.0, 0.9, (1.0, 0.0)
    for _ in range(steps):
        mid = (low + high) / 2
        kept = macs_fraction(cfg, mid, trainable)
        if abs(kept - keep) < best[0]:
            best = (abs(kept - keep), mid)
        low, high = (mid, high) if kept > keep else (low, mid)
    return round(best[1], 4)


# ----------------------------------------------------------------------------------------------------------
# rows


class Bench:
    """Rows run in order, each recorded in ``results`` (JSON, atomically rewritten) as it finishes."""

    def __init__(self, budget: Budget, work: Path, results: Path, mode: str, device: str = "cpu") -> None:
        from prunekit.models.yolo_scenes import make_scenes_dataset

        self.budget, self.work, self.results, self.mode, self.device = budget, work, results, mode, device
        work.mkdir(parents=True, exist_ok=True)
        self.data = make_scenes_dataset(work / "scenes", n_train=budget.n_train, n_val=budget.n_val,
                                        imgsz=max(64, budget.imgsz), seed=budget.seed)  # fmt: skip
        self.state = json.loads(results.read_text()) if results.is_file() else {}
        if self.state.get("budget") != _jsonable(budget) or self.state.get("mode") != mode:
            self.state = {"mode": mode, "budget": _jsonable(budget), "rows": []}

    def _cached(self, key: str) -> dict | None:
        for row in self.state["rows"]:
            if row["key"] == key and Path(row["checkpoint"]).is_file():
                return row
        return None

    def _record(self, row: dict) -> dict:
        keys = [r["key"] for r in self.state["rows"]]
        if row["key"] in keys:  # a row updated in place keeps its position
            self.state["rows"][keys.index(row["key"])] = row
        else:
            self.state["rows"].append(row)
        self.results.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.results, json.dumps(self.state, indent=1) + "\n")
        print("ROW " + json.dumps({k: row[k] for k in (*FIELDS, "train_s")}), flush=True)
        return row

    def _train(self, init: Path, epochs: int, name: str) -> tuple[Path, float]:
        """Train ``init`` for ``epochs`` (resuming an interrupted run of the same name from its ``last.pt``);
        the seconds are this call's, scaled to all ``epochs`` when it resumed."""
        from prunekit.models.yolo_train import finetune_yolo

        last = self.work / "train" / name / "weights" / "last.pt"
        done = unfinished_epochs(last)
        t0 = time.perf_counter()
        if done:
            print(f"resuming {name} after epoch {done} of {epochs}", flush=True)
            yolo = finetune_yolo(str(last), data=str(self.data), resume=True, workers=0, val=False)
        else:
            yolo = finetune_yolo(str(init), data=str(self.data), epochs=epochs, name=name, val=False,
                                 **_train_args(self.budget, self.work / "train", self.device))  # fmt: skip
        seconds = (time.perf_counter() - t0) * epochs / (epochs - done)
        best = Path(yolo.trainer.best)
        return (best if best.is_file() else Path(yolo.trainer.last)), seconds

    def _row(self, key: str, ckpt: Path, base: dict, train_s: float) -> dict:
        stats = measure(ckpt, self.data, self.budget, self.work / "val", key, self.device)
        row = {"key": key, **base, **stats, "seed": self.budget.seed, "train_s": round(train_s, 1),
               "device": self.device}  # fmt: skip
        row["checkpoint"] = str(ckpt)
        return self._record({k: row[k] for k in ("key", *FIELDS, *sorted(set(row) - set(FIELDS) - {"key"}))})

    def dense(self, model: str) -> dict:
        """Train ``model`` from random init for the dense budget."""
        key = f"dense-{model}"
        if (row := self._cached(key)) is not None:
            return row
        from prunekit.models.ultralytics import save_yolo

        init = save_yolo(random_init(f"{model}.yaml", self.budget.seed), self.work / "init" / f"{model}.pt")
        ckpt, seconds = self._train(init, self.budget.dense_epochs, key)
        base = {"model": model, "method": "dense", "kd": False, "epochs": self.budget.dense_epochs}
        return self._row(key, ckpt, base, seconds)

    def keep_for(self, model: str, target: str) -> float:
        """MACs fraction a target keeps: ``"2x"`` keeps 1/2; a model name keeps that model's MACs."""
        if target.endswith("x"):
            return 1.0 / float(target[:-1])
        from prunekit.measure import count_macs
        from prunekit.models.ultralytics import example_inputs

        small, big = random_init(f"{target}.yaml", 0), random_init(f"{model}.yaml", 0)
        x = example_inputs(big, self.budget.imgsz)
        return count_macs(small, x) / count_macs(big, x)

    def pruned(self, model: str, target: str, method: str, kd: bool) -> dict:
        """Prune the dense ``model`` to ``target`` and recover it with ``method`` (and KD) in ``R`` epochs."""
        key = f"pruned-{model}-{target}-{method}{'-kd' if kd else ''}"
        if (row := self._cached(key)) is not None:
            return row
        from prunekit.models.yolo_recipe import recipe_from_dict, run_recipe

        dense = self.dense(model)
        trainable = method != "gradual"  # gradual pruning cuts free widths
        keep = self.keep_for(model, target)
        ratio = ratio_for(model, keep, trainable, self.budget.search_steps)
        r = self.budget.recovery_epochs
        first = max(1, r // 2)
        spec: dict[str, Any] = {
            "data": str(self.data), "method": method, "ratio": ratio, "criterion": "l2",
            "imgsz": self.budget.imgsz, "trainable": trainable, "kd": kd,
            "sparsity_epochs": first, "gradual_epochs": first,
            "finetune_epochs": r if method == "oneshot" else r - first,
            "project": str((self.work / "train" / key).resolve()),
            "train": {k: v for k, v in _train_args(self.budget, self.work, self.device).items()
                      if k in SHARED},
        }  # fmt: skip
        if method == "sparsity":
            spec["sparsity"] = {"strength": 1e-4, "penalty": "group_lasso", "warmup": 0.1, "decay": 0.0}
        if method == "gradual":
            spec["gradual"] = {"scope": "local", "end": 0.75, "steps": 4}
        out = self.work / "pruned" / f"{key}.pt"
        result = run_recipe(dense["checkpoint"], out, recipe_from_dict(spec, key))
        base = {"model": model, "method": method, "kd": kd, "epochs": self.budget.dense_epochs + r,
                "target": target, "macs_keep_target": round(keep, 4), "ratio": ratio,
                "dense_train_s": dense["train_s"]}  # fmt: skip
        return self._row(key, out, base, sum(v for k, v in result.seconds.items() if k != "prune"))

    def scratch(self, pruned: dict) -> dict:
        """The pruned row's architecture trained from random init for its whole budget (``E + R``)."""
        from prunekit.models.ultralytics import read_checkpoint, save_yolo

        detector = read_checkpoint(Path(pruned["checkpoint"])).float().eval()
        arch = arch_key(detector)
        key = f"scratch-{pruned['model']}-{arch}"
        if (row := self._cached(key)) is not None:
            return row
        model, how = scratch_copy(detector, self.budget.seed)
        init = save_yolo(model, self.work / "init" / f"{key}.pt")
        epochs = self.budget.dense_epochs + self.budget.recovery_epochs
        ckpt, seconds = self._train(init, epochs, key)
        base = {"model": pruned["model"], "method": "scratch", "kd": False, "epochs": epochs, "arch": arch,
                "target": pruned["target"], "init": how, "scratch_for": pruned["key"]}  # fmt: skip
        return self._row(key, ckpt, base, seconds)

    def run(self, only: str | None = None) -> list[dict]:
        """Every row of the budget (``only``: ``dense`` stops after the dense rows)."""
        for model in self.budget.dense:
            self.dense(model)
        if only != "dense":
            for spec in self.budget.pruned:
                row = self.pruned(*spec)
                row["scratch_key"] = self.scratch(row)["key"]
                self._record(row)
        return self.state["rows"]


def _jsonable(budget: Budget) -> dict:
    return json.loads(json.dumps(asdict(budget)))


# ----------------------------------------------------------------------------------------------------------
# the section


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


QUICK_NOTE = (
    "**Quick mode is far from convergence**: a few epochs on a few hundred 128 px images, so every mAP"
    " here is small and the differences between rows are mostly noise of an early training phase; a pruned"
    " row"
    " has had the dense row's epochs plus its recovery epochs, so at this stage being above dense says more"
    " about the extra epochs than about the cut. The dense"
    " YOLO11n"
    " being below 90 mAP50-95 says nothing about the set's hardness at convergence, and the goals above are"
    " checked only as the pipeline's output; the full budget (`bench/bench_yolo_pareto.py` without `--quick`:"
    " 2,000 / 400 images at 320 px, 100 dense + 30 recovery epochs, all methods with and without KD) is what"
    " would decide them.",
    "",
)
TP_NOTE = (
    "Torch-Pruning is not a row: it installs into a separate bench environment (torch-pruning 1.6.1, a"
    " `pip install --target` directory), but its `MetaPruner` does not finish one cut of YOLO11n (the model"
    " of the quick rows): over 300 s here, and `timeout (> 60 s)` on yolo11 in the `yolo-zoo` section."
)


def section(rows: list[dict], budget: Budget, mode: str, threads: int, minutes: float) -> str:
    """The markdown of the results section: the table, the hardness line and the goals."""
    dense = {r["model"]: r for r in rows if r["method"] == "dense"}
    by_key = {r["key"]: r for r in rows}
    table = []
    for r in rows:
        ref = dense.get(r["model"])
        macs_rel = f"{r['macs'] / ref['macs']:.2f}" if ref else ""
        table.append([
            r["model"], r.get("target", ""), r["method"], "yes" if r["kd"] else "",
            f"{r['params'] / 1e6:.2f}M",
            f"{r['macs'] / 1e6:.0f}M", macs_rel, _pct(r["map50"]), _pct(r["map50_95"]), f"{r['ort_ms']:.2f}",
            r["epochs"], f"{r['train_s'] / 60:.1f}",
        ])  # fmt: skip
    header = ["model", "target", "method", "KD", "params", "MACs", "MACs / dense", "mAP50", "mAP50-95",
              "ORT ms", "epochs", "train min"]  # fmt: skip
    lines = markdown_table(header, table, align="lllrrrrrrrrr")
    notes = []
    if "yolo11n" in dense:
        m = dense["yolo11n"]["map50_95"]
        sign = "<" if m < 0.9 else ">="
        notes.append(f"- Hardness: dense YOLO11n mAP50-95 {_pct(m)} ({sign} 90 required).")
    if "yolov8s" in dense and "yolov8n" in dense:
        gap = dense["yolov8s"]["map50_95"] - dense["yolov8n"]["map50_95"]
        notes.append(f"- Capacity: dense YOLOv8s - YOLOv8n = {100 * gap:+.1f} mAP50-95 points.")
    else:
        notes.append("- Capacity (dense YOLOv8s vs YOLOv8n): not measured in this run (no YOLOv8s row).")
    if not any(r["model"] == "yolov8s" and r["method"] not in ("dense", "scratch") for r in rows):
        notes.append("- Goal pruned YOLOv8s at YOLOv8n's MACs above dense YOLOv8n: not measured in this run.")
    for r in rows:
        if r["method"] in ("dense", "scratch") or r["model"] not in dense:
            continue
        d = dense[r["model"]]
        name = f"{r['model']} {r['target']} {r['method']}{' + KD' if r['kd'] else ''}"
        delta = 100 * (r["map50_95"] - d["map50_95"])
        if r["model"] == "yolo11n" and r["target"] == "2x":
            verdict = "met" if delta >= -1.0 else f"missed by {-1.0 - delta:.1f} points"
            notes.append(f"- Goal 2x YOLO11n within 1.0 point of dense: {name}: {delta:+.1f} ({verdict}).")
        if r["model"] == "yolov8s" and "yolov8n" in dense:
            gap = 100 * (r["map50_95"] - dense["yolov8n"]["map50_95"])
            notes.append(f"- Goal pruned YOLOv8s above dense YOLOv8n: {name}: {gap:+.1f} points "
                         f"({'met' if gap > 0 else 'missed'}).")  # fmt: skip
        s = by_key.get(r.get("scratch_key", ""))
        if s is not None:
            gap = 100 * (r["map50_95"] - s["map50_95"])
            verdict = "met" if gap > 0 else "missed"
            notes.append(f"- Goal above scratch at equal MACs: {name}: {gap:+.1f} points vs scratch "
                         f"({s['macs'] / r['macs']:.2f}x its MACs; {verdict}).")  # fmt: skip
    import ultralytics

    return "\n".join([
        "## YOLO: pruned detectors vs the smaller model from scratch (Pareto)",
        "",
        f"`bench/bench_yolo_pareto.py{'' if mode == 'full' else ' --' + mode}`: scenes set "
        f"({budget.n_train} train / {budget.n_val} val images at {budget.imgsz} px, seed {budget.seed}), "
        f"dense rows {budget.dense_epochs} epochs from random init, pruned rows {budget.recovery_epochs} "
        f"recovery epochs from the dense checkpoint, scratch rows the pruned widths from random init for "
        f"{budget.dense_epochs + budget.recovery_epochs} epochs; batch {budget.batch}, optimizer "
        f"{budget.optimizer}{f' lr0 {budget.lr0}' if budget.optimizer != 'auto' else ''}, warm-up "
        f"{budget.warmup_epochs:g} epochs, ultralytics' default augmentation, trained on "
        f"{', '.join(sorted({str(r.get('device', 'cpu')) for r in rows}))}. mAP from ultralytics' "
        "validator on the val split (%); MACs at the bench image size; ORT ms: onnxruntime, batch 1, "
        "1 thread, median. *train min*: this row's own "
        f"training (pruned rows: recovery only); all rows together {minutes:.0f} min of training.",
        "",
        *lines,
        "",
        *(["Goals as measured (in quick mode all mAPs are below 3 %, so a *met* here establishes nothing):"]
          if mode == "quick" else []),
        *notes,
        "",
        *(QUICK_NOTE if mode == "quick" else ()),
        TP_NOTE,
        "",
        f"Timings were taken on a shared 2-core machine (other engineers' jobs running; load average "
        f"{os.getloadavg()[0]:.1f} when this section was written), so training minutes and ORT ms are"
        " inflated and noisy; compare ORT ms within this table only.",
        "",
        machine_line(threads, ultralytics=ultralytics.__version__),
    ])  # fmt: skip


def main() -> None:
    quick = "YOLO11n/YOLOv8n, 2x rows only, 128 px"
    ap = argparse.ArgumentParser(parents=[common_args(threads=2, quick=quick)])
    ap.add_argument(
        "--medium",
        action="store_true",
        help="YOLO11n at 2x, all methods with and without KD, 1,000 images at 224 px, 60 + 20 epochs",
    )
    ap.add_argument("--work", default=None, help="checkpoints and runs (default runs/yolo_pareto/<mode>)")
    ap.add_argument(
        "--json", default=None, help="the per-row record, a resumable cache (default: by mode, see above)"
    )
    ap.add_argument("--only", choices=("dense",), default=None, help="stop after the dense rows")
    ap.add_argument(
        "--device",
        default="cpu",
        help="where ultralytics trains and validates (cpu, or a GPU such as 0); ORT latency stays on the CPU",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mode = "quick" if args.quick else "medium" if args.medium else "full"
    budget = {"quick": QUICK, "medium": MEDIUM, "full": FULL}[mode]
    work = Path(args.work) if args.work else ROOT / "runs" / "yolo_pareto" / mode
    suffix = "" if mode == "full" else f"_{mode}"
    records = Path(args.json) if args.json else RESULTS_DIR / f"yolo_pareto{suffix}.json"
    bench = Bench(budget, work, records, mode, args.device)
    rows = bench.run(args.only)
    text = section(rows, budget, mode, args.threads, sum(r["train_s"] for r in rows) / 60)
    finish("yolo-pareto" + suffix.replace("_", "-"), text, args)


if __name__ == "__main__":
    main()


__all__ = ["FULL", "MEDIUM", "QUICK", "Bench", "Budget"]
