"""Dense vs structurally pruned models on edge runtimes (onnxruntime, OpenVINO, LiteRT, NCNN), batch 1.

The zoo is YOLO11n, YOLOv8n and YOLO26n at 640 and 320 px and ResNet-50 and MobileNetV2 at 224 px (a model
is named ``NAME@SIZE``, e.g. ``yolo11n@320``), each pruned at ratios 0.3 and 0.5 (``prunekit.prune``; YOLO:
``prune_yolo``). A *row* is one model x ratio x runtime: both models are exported to the runtime once (the
conversion is timed apart and never counted in latency; the dense file is reused for both ratios), checked
against PyTorch and timed at 1 and 2 threads. Timing alternates the two models: after a warm-up of each,
``--rounds`` rounds time ``--runs`` calls of dense then pruned (the order flips every round) and each
model keeps its best round's median, so load from other work reaches both alike.

A record is one row x thread count: ``model`` (``NAME@SIZE``), ``ratio``, ``runtime``, ``threads``,
``dense_ms``, ``pruned_ms``, ``macs_reduction`` (dense MACs / pruned MACs), ``agree`` (both models within
the runtime's tolerance), plus speedup (dense_ms / pruned_ms), efficiency (speedup / MACs reduction: 1.0
means latency falls as fast as MACs), every round's median and the conversion seconds. A row whose export
or run fails keeps those fields (``None`` for what was not measured) and ``error``: the converter's or
runtime's own first error line. Weights are random (no downloads): agreement is between the runtime and
PyTorch on the same model.

Records are written to ``bench/results/edge_runtimes.json`` (``--json``) as each row finishes, with
``--no-write`` too (it leaves only docs/RESULTS.md alone); a rerun with the same settings skips the rows
already there (``--fresh`` measures everything again; other settings start afresh).

    python bench/bench_edge.py --quick     # yolo11n@320 at ratio 0.5, 10 runs: per-row seconds and the
                                           # estimate at full settings; writes nothing (--models picks
                                           # other rows to estimate)
    python bench/bench_edge.py             # the whole zoo; writes the JSON and the edge_runtimes section
                                           # (rerun the same command to resume after a stop)
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _common import ROOT, FirstOutput, common_args, finish, machine_line, markdown_table
from bench_target_runtime import versions

import prunekit as pk
from prunekit._atomic import write_text
from prunekit.demo.run import environment
from prunekit.deploy.runtimes import RUNTIMES, Runtime, Session, arrays, compare, get_runtime, time_session
from prunekit.deploy.runtimes.base import Artifact, first_line
from prunekit.errors import ConfigError
from prunekit.graph.trace import flatten_tensors
from prunekit.measure import LatencyStats

CACHE = Path(__file__).parent / "results" / "edge_runtimes.json"
SIZES = {"mobilenet_v2": 224, "resnet50": 224, "yolo11n": 640, "yolov8n": 640, "yolo26n": 640}
ZOO = (
    "yolo11n@640", "yolo11n@320", "yolov8n@640", "yolov8n@320", "yolo26n@640", "yolo26n@320",
    "resnet50@224", "mobilenet_v2@224",
)  # fmt: skip
RATIOS = (0.3, 0.5)
THREADS = (1, 2)
RECORD_FIELDS = ("model", "ratio", "runtime", "threads", "dense_ms", "pruned_ms", "macs_reduction", "agree")


@dataclass(frozen=True)
class Settings:
    """How each model is timed: ``warmup`` untimed calls, then ``rounds`` rounds of ``runs`` timed calls
    (each round starts with one untimed call); ``opset`` is the ONNX opset of the runtimes that convert
    from ONNX. Records are reused only by a run with equal settings."""

    runs: int = 20
    warmup: int = 5
    rounds: int = 3
    opset: int = 17

    def calls(self) -> int:
        """Session calls per model and thread count, warm-ups included."""
        return self.warmup + self.rounds * (self.runs + 1)


FULL = Settings()
QUICK = Settings(runs=10, warmup=3)


def parse_model(key: str) -> tuple[str, int]:
    """``NAME@SIZE`` as ``(NAME, SIZE)``; a bare NAME gets its default size.

    >>> parse_model("yolo11n@320"), parse_model("resnet50")
    (('yolo11n', 320), ('resnet50', 224))
    """
    name, _, size = key.partition("@")
    if name not in SIZES:
        raise ConfigError(f"unknown model {name!r}; choose from {', '.join(SIZES)} (as NAME or NAME@SIZE)")
    if not size:
        return name, SIZES[name]
    if not size.isdigit() or int(size) < 1 or (name.startswith("yolo") and int(size) % 32):
        raise ConfigError(f"bad size in {key!r}: a positive whole number of pixels (YOLO: a multiple of 32)")
    return name, int(size)


def dense_model(name: str, size: int) -> tuple[nn.Module, torch.Tensor]:
    """The dense model (random weights, seed 0, eval) and its batch-1 input of ``size`` px; a YOLO is
    wrapped in :class:`FirstOutput` with ultralytics' export settings on its head (fixed shapes; YOLO26's
    one-to-many branch, end2end off, as ultralytics exports it for formats without top-k)."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    if name.startswith("yolo"):
        from ultralytics.nn.modules.head import Detect

        from prunekit.models.ultralytics import load_yolo

        model = load_yolo(f"{name}.yaml")
        for m in model.modules():
            if isinstance(m, Detect):
                m.export, m.format = True, "onnx"
        return FirstOutput(model).eval(), x
    import torchvision

    return torchvision.models.get_model(name, weights=None).eval(), x


def pruned_copy(name: str, dense: nn.Module, ratio: float, x: torch.Tensor) -> nn.Module:
    """A copy of ``dense`` pruned at ``ratio`` (0: left dense) on the input ``x``."""
    pruned = copy.deepcopy(dense)
    if ratio and name.startswith("yolo"):
        from prunekit.models.ultralytics import prune_yolo

        prune_yolo(pruned.model, ratio=ratio, imgsz=int(x.shape[-1]))
    elif ratio:
        pk.prune(pruned, x, ratio=ratio, round_to=8)
    return pruned.eval()


def build(name: str, ratio: float, size: int | None = None) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """The dense model, a copy pruned at ``ratio`` (0: left dense) and the batch-1 input of ``size`` px."""
    dense, x = dense_model(name, size or SIZES[name])
    return dense, pruned_copy(name, dense, ratio, x), x


def time_alternated(
    sessions: Mapping[str, Session], inputs: Sequence[Any], threads: int, settings: Settings
) -> dict[str, list[LatencyStats]]:
    """Every round's timing of each session: a warm-up of each, then ``settings.rounds`` rounds that time
    ``settings.runs`` calls of each session in turn, the order reversed every other round.

    >>> import numpy as np
    >>> class Echo:
    ...     def run(self, inputs):
    ...         return list(inputs)
    >>> out = time_alternated({"a": Echo(), "b": Echo()}, [np.zeros(2)], 1, Settings(runs=2, rounds=3))
    >>> sorted(out), [len(v) for v in out.values()]
    (['a', 'b'], [3, 3])
    """
    for session in sessions.values():
        time_session(session, inputs, warmup=max(0, settings.warmup - 1), runs=1, threads=threads)
    labels = list(sessions)
    rounds: dict[str, list[LatencyStats]] = {label: [] for label in labels}
    for index in range(settings.rounds):
        for label in labels if index % 2 == 0 else labels[::-1]:
            stats = time_session(sessions[label], inputs, warmup=1, runs=settings.runs, threads=threads)
            rounds[label].append(stats)
    return rounds


def best(rounds: Sequence[LatencyStats]) -> LatencyStats:
    """The round with the lowest median."""
    return min(rounds, key=lambda s: s.median_ms)


def error_text(err: BaseException) -> str:
    """One line for a failed row: a prunekit error's message (it names the converter and quotes its first
    error line), any other exception's type and first line.

    >>> error_text(RuntimeError("\\nop Foo is not supported\\nat node 3"))
    'RuntimeError: op Foo is not supported'
    """
    line = first_line(err)
    return line if isinstance(err, pk.PruneError) else f"{type(err).__name__}: {line}"


def error_records(base: Mapping[str, Any], why: str, threads: Sequence[int] = THREADS) -> list[dict]:
    """The records of a row that could not be measured: the issue's fields, ``None`` where nothing was
    measured, and ``error``.

    >>> rec = error_records({"model": "m@8", "ratio": 0.5, "runtime": "rt", "macs_reduction": 2.0}, "boom")
    >>> [(r["threads"], r["dense_ms"], r["agree"], r["error"]) for r in rec]
    [(1, None, None, 'boom'), (2, None, None, 'boom')]
    """
    return [
        {
            **base,
            "threads": t,
            "dense_ms": None,
            "pruned_ms": None,
            "speedup": None,
            "efficiency": None,
            "agree": None,
            "error": why,
        }
        for t in threads
    ]


def pair_records(
    base: Mapping[str, Any],
    rt: Runtime,
    artifacts: Mapping[str, Artifact],
    wants: Mapping[str, list[torch.Tensor]],
    inputs: Sequence[Any],
    settings: Settings,
    threads: Sequence[int] = THREADS,
) -> list[dict]:
    """One record per thread count for the ``dense`` and ``pruned`` artifacts: both loaded, checked against
    PyTorch's outputs ``wants`` and timed alternately (:func:`time_alternated`)."""
    records = []
    for count in threads:
        sessions = {label: rt.load(artifacts[label], threads=count) for label in ("dense", "pruned")}
        agreement = {
            label: compare(wants[label], s.run(inputs), tolerance=rt.tolerance)
            for label, s in sessions.items()
        }
        rounds = time_alternated(sessions, inputs, count, settings)
        d, p = best(rounds["dense"]), best(rounds["pruned"])
        speedup = d.median_ms / p.median_ms
        records.append(
            {
                **base,
                "threads": count,
                "dense_ms": d.median_ms,
                "pruned_ms": p.median_ms,
                "dense_p90_ms": d.p90_ms,
                "pruned_p90_ms": p.p90_ms,
                "speedup": speedup,
                "efficiency": speedup / base["macs_reduction"],
                "agree": agreement["dense"].ok and agreement["pruned"].ok,
                "agreement": {label: a.to_dict() for label, a in agreement.items()},
                "rounds_ms": {label: [s.median_ms for s in r] for label, r in rounds.items()},
            }
        )
        del sessions
    return records


class Row:
    """Measures the rows of one model: the dense model, its input and PyTorch's outputs are made once;
    each runtime's dense file is exported once (in a scratch directory kept until :meth:`close`) and
    reused for every ratio."""

    def __init__(self, key: str, settings: Settings) -> None:
        self.key, self.settings = key, settings
        self.name, self.size = parse_model(key)
        start = time.perf_counter()
        self.dense, self.x = dense_model(self.name, self.size)
        self.inputs = arrays(self.x)
        self.dense_macs = pk.count_macs(self.dense, self.x)
        self.want = self._outputs(self.dense)
        self.build_s = time.perf_counter() - start
        self.pruned: dict[float, tuple[nn.Module, float, list[torch.Tensor]]] = {}
        self._work = tempfile.TemporaryDirectory(prefix="prunekit-bench-edge-")
        self._dense_files: dict[str, tuple[Artifact, float] | Exception] = {}

    def _outputs(self, model: nn.Module) -> list[torch.Tensor]:
        with torch.no_grad():
            return flatten_tensors(model(self.x))

    def prune(self, ratio: float) -> tuple[nn.Module, float, list[torch.Tensor]]:
        """The pruned copy at ``ratio``, its MACs reduction and outputs (made on first use, then kept)."""
        if ratio not in self.pruned:
            start = time.perf_counter()
            model = pruned_copy(self.name, self.dense, ratio, self.x)
            macs = self.dense_macs / pk.count_macs(model, self.x)
            self.pruned[ratio] = (model, macs, self._outputs(model))
            print(f"  {self.key} pruned at {ratio}: {macs:.2f}x MACs ({time.perf_counter() - start:.1f} s)")
        return self.pruned[ratio]

    def _export(self, rt: Runtime, model: nn.Module, stem: str) -> tuple[Artifact, float]:
        start = time.perf_counter()
        path = Path(self._work.name) / f"{stem}{rt.suffix}"
        artifact = rt.export(model, self.x, path, opset=self.settings.opset)
        return artifact, time.perf_counter() - start

    def _dense(self, rt: Runtime) -> tuple[Artifact, float]:
        """The dense model's file on ``rt`` and its conversion seconds, converted on first use; a failed
        conversion is raised again for the next ratio without converting again."""
        found = self._dense_files.get(rt.name)
        if found is None:
            try:
                found = self._export(rt, self.dense, f"{rt.name}-dense")
            except Exception as err:
                found = err
            self._dense_files[rt.name] = found
        if isinstance(found, Exception):
            raise found
        return found

    def measure(self, ratio: float, runtime: str) -> tuple[list[dict], float]:
        """The records of this model at ``ratio`` on ``runtime`` and the row's seconds (pruning excluded:
        it is shared by every runtime)."""
        model, macs, want = self.prune(ratio)
        start = time.perf_counter()
        rt = get_runtime(runtime)
        base = {
            "model": self.key,
            "name": self.name,
            "size": self.size,
            "ratio": ratio,
            "runtime": runtime,
            "runtime_version": rt.version(),
            "batch": 1,
            "macs_reduction": macs,
            **asdict(self.settings),
            "load_1m": os.getloadavg()[0],
            "utc": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}",
        }
        try:
            dense_file, dense_s = self._dense(rt)
            pruned_file, pruned_s = self._export(rt, model, f"{runtime}-pruned-{ratio}")
            base["export_s"] = {"dense": dense_s, "pruned": pruned_s}
            artifacts = {"dense": dense_file, "pruned": pruned_file}
            wants = {"dense": self.want, "pruned": want}
            records = pair_records(base, rt, artifacts, wants, self.inputs, self.settings)
            for name in pruned_file.files:
                Path(name).unlink(missing_ok=True)
        except Exception as err:  # one failed conversion or run is that row's result, not the run's end
            records = error_records(base, error_text(err))
        seconds = time.perf_counter() - start
        for r in records:
            r["row_s"] = seconds
        return records, seconds

    def close(self) -> None:
        """Remove the scratch directory."""
        self._work.cleanup()


def load_cache(settings: Settings, path: Path = CACHE) -> list[dict]:
    """The records at ``path`` measured with ``settings`` (none if the file holds other settings)."""
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    if data.get("settings") != asdict(settings):
        print(f"{path.name} holds records of other settings ({data.get('settings')}): measuring afresh")
        return []
    return data["records"]


def save_cache(records: list[dict], settings: Settings, line: str, path: Path = CACHE) -> None:
    payload = {"machine": environment(), "line": line, "settings": asdict(settings), "records": records}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(payload, indent=2) + "\n")


def done(records: Sequence[Mapping[str, Any]], key: str, ratio: float, runtime: str) -> bool:
    """Whether the row (every thread count of it) is in ``records``."""
    have = {r["threads"] for r in records if (r["model"], r["ratio"], r["runtime"]) == (key, ratio, runtime)}
    return have >= set(THREADS)


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def table(records: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = []
    for r in records:
        if r.get("error"):
            rows.append(
                [
                    r["model"],
                    r["ratio"],
                    r["runtime"],
                    r["threads"],
                    f"error: {r['error']}",
                    "",
                    "",
                    f"{r['macs_reduction']:.2f}x",
                    "",
                    "",
                ]
            )
            continue
        rows.append(
            [
                r["model"],
                r["ratio"],
                r["runtime"],
                r["threads"],
                _ms(r["dense_ms"]),
                _ms(r["pruned_ms"]),
                f"{r['speedup']:.2f}x",
                f"{r['macs_reduction']:.2f}x",
                f"{r['efficiency']:.2f}",
                "yes" if r["agree"] else "NO",
            ]
        )
    header = [
        "model",
        "ratio",
        "runtime",
        "threads",
        "dense ms",
        "pruned ms",
        "speedup",
        "MACs reduction",
        "efficiency",
        "agree",
    ]
    return markdown_table(header, rows, align="lllrrrrrrl")


def reading(records: Sequence[Mapping[str, Any]], skipped: Sequence[str]) -> list[str]:
    """Sentences computed from the records: efficiency per runtime and thread count, the runtime where
    each model's cut pays best and worst, agreement, the rounds' spread, failed rows and the runtimes
    ``skipped`` (not installed)."""
    ok = [r for r in records if not r.get("error")]
    out = []
    if ok:
        parts = []
        for runtime in dict.fromkeys(r["runtime"] for r in ok):
            for t in THREADS:
                eff = [r["efficiency"] for r in ok if r["runtime"] == runtime and r["threads"] == t]
                if eff:
                    parts.append(
                        f"{runtime} {t} thread{'s' if t > 1 else ''} {statistics.median(eff):.2f} "
                        f"({min(eff):.2f}-{max(eff):.2f}, {len(eff)} rows)"
                    )
        out.append(
            "Efficiency (speedup / MACs reduction), median (range) per runtime and thread count: "
            + "; ".join(parts)
            + "."
        )
        per_model, top = [], max(r["ratio"] for r in ok)
        for key in dict.fromkeys(r["model"] for r in ok):
            mine = [r for r in ok if r["model"] == key and r["ratio"] == top and r["threads"] == 1]
            if len({r["runtime"] for r in mine}) > 1:
                hi, lo = max(mine, key=lambda r: r["speedup"]), min(mine, key=lambda r: r["speedup"])
                per_model.append(
                    f"{key} {hi['speedup']:.2f}x on {hi['runtime']}, {lo['speedup']:.2f}x on "
                    f"{lo['runtime']} ({hi['macs_reduction']:.2f}x MACs)"
                )
        if per_model:
            out.append(
                f"Ratio {top}, 1 thread, the runtime where the cut pays most and least, per model: "
                + "; ".join(per_model)
                + "."
            )
        singles = {(r["model"], r["ratio"], r["runtime"]): r["speedup"] for r in ok if r["threads"] == 1}
        ratios = [
            r["speedup"] / singles[k]
            for r in ok
            if r["threads"] == 2
            if (k := (r["model"], r["ratio"], r["runtime"])) in singles
        ]
        if ratios:
            out.append(
                f"At 2 threads the speedup is {statistics.median(ratios):.2f} times the 1-thread one "
                f"(median over {len(ratios)} rows; {min(ratios):.2f}-{max(ratios):.2f})."
            )
        bad = [f"{r['model']} {r['ratio']} {r['runtime']} {r['threads']}t" for r in ok if not r["agree"]]
        out.append(
            f"Agreement with PyTorch: {len(ok) - len(bad)} of {len(ok)} measured records agree"
            + (f"; not: {', '.join(bad)}." if bad else ".")
        )
        spread = [max(v) / min(v) - 1 for r in ok for v in r["rounds_ms"].values()]
        worst = max(ok, key=lambda r: max(max(v) / min(v) for v in r["rounds_ms"].values()))
        out.append(
            f"Round medians of one model differ by {100 * statistics.median(spread):.0f} % (median; "
            f"largest {100 * max(spread):.0f} %, {worst['model']} {worst['ratio']} {worst['runtime']} "
            f"{worst['threads']}t): the best round is kept."
            + (
                " That is more than 10 %: the machine was busy, so the ms columns are upper bounds and the "
                "ratios noisier than the 2-decimal figures suggest."
                if statistics.median(spread) > 0.1
                else ""
            )
        )
    failed = {(r["model"], r["ratio"], r["runtime"]): r["error"] for r in records if r.get("error")}
    if failed:
        out.append(
            "Failed rows (the converter's or runtime's first error line is in the table): "
            + ", ".join(f"{m} {q} {rt}" for m, q, rt in failed)
            + "."
        )
    if skipped:
        extras = ", ".join(f'{rt} (pip install "prunekit[{get_runtime(rt).extra}]")' for rt in skipped)
        out.append(f"Not in this run (not installed): {extras}.")
    return out


def order(record: Mapping[str, Any]) -> tuple:
    """A record's place in the table: the zoo's order of models, then ratio, runtime and threads."""
    runtimes = list(RUNTIMES)
    return (
        ZOO.index(record["model"]) if record["model"] in ZOO else len(ZOO),
        record["model"],
        record["ratio"],
        runtimes.index(record["runtime"]) if record["runtime"] in runtimes else len(runtimes),
        record["threads"],
    )


def markdown(
    records: Sequence[Mapping[str, Any]], line: str, settings: Settings, skipped: Sequence[str]
) -> str:
    load = [r["load_1m"] for r in records if "load_1m" in r]
    when = sorted(r["utc"] for r in records if "utc" in r)
    convert: dict[str, list[float]] = {}
    for r in records:
        convert.setdefault(r["runtime"], []).extend(r.get("export_s", {}).values())
    seconds = ", ".join(f"{rt} {min(v):.0f}-{max(v):.0f} s" for rt, v in convert.items() if v)
    lines = [
        "## Edge runtimes: dense vs pruned, batch 1 (`bench/bench_edge.py`)",
        "",
        f"{line} Rows measured {when[0]} to {when[-1]} UTC; load average (1 min) at a row's start "
        f"{min(load):.1f}-{max(load):.1f}."
        if load and when
        else line,
        "",
        f"Random weights, seed 0. Each model is converted once per runtime (ONNX opset {settings.opset} "
        "where a runtime converts from ONNX; LiteRT through litert-torch) and the conversion is not "
        f"counted in latency (seconds per conversion: {seconds or 'none made'}). Latency: dense and pruned "
        f"alternated, a warm-up of {settings.warmup} calls each, then {settings.rounds} rounds of "
        f"{settings.runs} calls of each (order flipped every round); ms is the best round's median. "
        "speedup = dense ms / pruned ms; MACs reduction = dense MACs / pruned MACs; efficiency = speedup / "
        "MACs reduction. agree: both models match PyTorch within the runtime's fp32 tolerance (max abs "
        "error / output scale <= 1e-3).",
        "",
        *table(sorted(records, key=order)),
        "",
        *reading(records, skipped),
    ]
    return "\n".join(lines)


def main() -> None:
    quick = "yolo11n@320 at ratio 0.5, 10 runs: per-row seconds and the full-settings estimate; no writes"
    parent = common_args(threads=2, quick=quick)  # --threads: torch's, for pruning and the reference outputs
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[parent])
    ap.add_argument("--models", default=None, help=f"comma-separated NAME@SIZE (default: {','.join(ZOO)})")
    ap.add_argument("--ratios", default=None, help="comma-separated ratios (default 0.3,0.5)")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated runtimes")
    ap.add_argument(
        "--runs", type=int, default=None, help=f"timed calls per round ({FULL.runs}; quick {QUICK.runs})"
    )
    ap.add_argument("--rounds", type=int, default=FULL.rounds, help="alternated rounds, best kept")
    ap.add_argument("--fresh", action="store_true", help="measure every row again")
    ap.add_argument("--report", action="store_true", help="measure nothing: write the section from the JSON")
    ap.add_argument("--json", default=str(CACHE), help=f"records file (default {CACHE.relative_to(ROOT)})")
    args = ap.parse_args()
    try:
        keys = args.models.split(",") if args.models else (["yolo11n@320"] if args.quick else list(ZOO))
        for key in keys:
            parse_model(key)
        ratios = (
            [float(q) for q in args.ratios.split(",")] if args.ratios else ([0.5] if args.quick else RATIOS)
        )
        runtimes = args.runtimes.split(",")
        for runtime in runtimes:
            get_runtime(runtime)
        default = QUICK if args.quick else FULL
        settings = Settings(runs=args.runs or default.runs, warmup=default.warmup, rounds=args.rounds)
        if settings.runs < 1 or settings.rounds < 1 or not all(0 <= q < 1 for q in ratios):
            raise ConfigError("--runs and --rounds must be >= 1 and ratios in [0, 1)")
    except (ConfigError, ValueError) as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        raise SystemExit(2) from err
    torch.set_num_threads(args.threads)
    installed = [r for r in runtimes if get_runtime(r).available()]
    skipped = [r for r in runtimes if r not in installed]
    for runtime in skipped:
        print(f'skip {runtime}: not installed (pip install "prunekit[{get_runtime(runtime).extra}]")')
    path = Path(args.json)
    write = not (args.quick or args.no_write)
    line = machine_line("1 and 2", **versions({r: get_runtime(r).version() for r in installed}))
    line += f" Load average {os.getloadavg()[0]:.1f} when the run started."
    records = [] if (args.fresh or args.quick) else load_cache(settings, path)
    if args.report:
        if path.exists() and records:  # the machine line of the run that measured the records
            line = json.loads(path.read_text()).get("line", line)
        finish("edge_runtimes", markdown(records, line, settings, skipped), args, write=write)
        return
    total, rows, wall = 0.0, [], time.perf_counter()
    for key in keys:
        todo = [(q, rt) for q in ratios for rt in installed if not done(records, key, q, rt)]
        if not todo:
            continue
        model = Row(key, settings)
        print(f"{key}: dense built in {model.build_s:.1f} s", flush=True)
        try:
            for ratio, runtime in todo:
                new, seconds = model.measure(ratio, runtime)
                records = [
                    r for r in records if (r["model"], r["ratio"], r["runtime"]) != (key, ratio, runtime)
                ]
                records += new
                total += seconds
                rows.append((key, ratio, runtime, seconds, new))
                summary = new[0].get("error") or ", ".join(
                    f"{r['threads']}t {r['dense_ms']:.1f}/{r['pruned_ms']:.1f} ms {r['speedup']:.2f}x"
                    for r in new
                )
                print(f"row {key} {ratio} {runtime}: {seconds:.1f} s ({summary})", flush=True)
                if not args.quick:  # the records are kept with --no-write too (it leaves only RESULTS)
                    save_cache(records, settings, line, path)
        finally:
            model.close()
    print(f"{len(rows)} rows in {total:.0f} s; {time.perf_counter() - wall:.0f} s with building and pruning")
    if args.quick:
        for key, ratio, runtime, seconds, new in rows:
            print(f"estimate at full settings, {key} {ratio} {runtime}: {estimate(seconds, new, FULL):.0f} s")
        return
    finish("edge_runtimes", markdown(records, line, settings, skipped), args, write=write)


def estimate(seconds: float, records: Sequence[Mapping[str, Any]], target: Settings) -> float:
    """A row's seconds at ``target`` settings from its seconds and records at other ones: the timed calls
    scale with the calls per model, the rest (conversion, loading, checking) stays.

    >>> rec = {"dense_ms": 10.0, "pruned_ms": 5.0, "runs": 10, "warmup": 3, "rounds": 3, "opset": 17}
    >>> round(estimate(2.0, [rec], Settings(runs=20, warmup=3, rounds=3)), 3)
    2.45
    """
    if not records or records[0].get("error"):
        return seconds
    calls = Settings(**{k: records[0][k] for k in ("runs", "warmup", "rounds", "opset")}).calls()
    timed = sum(r["dense_ms"] + r["pruned_ms"] for r in records) / 1000.0
    return seconds + timed * (target.calls() - calls)


if __name__ == "__main__":
    main()
