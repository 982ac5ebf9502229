"""Per-group latency table on a deployment runtime: how many milliseconds narrowing each group saves there.

For each prunable group the whole model is exported through the runtime seam
(:mod:`prunekit.deploy.runtimes`), loaded with ``threads`` threads and timed with only that group narrowed:
by half and by all of its removable units (:func:`removal_order`: lowest scores first, never a pinned unit,
never more than ``max_ratio`` of the group, never a member's last index), each count moved so the kept width
is a multiple of the width step (:func:`points`; the search's ``round_to`` when given, else the step the
width probe below measured), since a runtime that is slow at other widths would otherwise read as saving
nothing. The latency a group saves at any number of removed units is interpolated linearly between those
points and ``(0, 0)``; the measured savings are made non-decreasing (a later point never reads less than an
earlier one, timing noise put aside) and never negative. Each narrowed model is timed with its runs
alternated with the dense model's (:meth:`Timer.pair`) and recorded as the dense time times their ratio, so a
change in the machine's load during the table does not read as a saving. On runtimes that load ONNX files
(:data:`LOADS_ONNX`) the table's models are exported without the output comparison a deployment export
runs (:meth:`Timer.load`). Several groups combine as a product of the shares each keeps
(:meth:`LatencyTable.predict`), which :mod:`prunekit.structured.runtime_target` corrects with end-to-end
measurements.

**Width steps.** Before the groups, the table times one group, the one whose units carry the most MACs
among those at least 32 wide (:func:`_probe_group`), at kept widths ``A``, ``A-1``, ``A-2``, ``A-4``,
``A-8`` and ``A-16`` (``A`` a multiple of 16 near 2/3 of its width; ``A`` twice, for the noise, the second
time on the same loaded model). Each time is compared with the straight line through the times at ``A-16``
and ``A``; a width whose time lies above that line by more than the margin (three times the spread of the
two timings of ``A``, at least 2 % of it) is a width the runtime is slow at. The step chosen
(:attr:`LatencyTable.round_to`) is the smallest of 1, 2, 4, 8, 16 such that no measured width that is a
multiple of it is slow; with no slow width at all the steps are noise and the step is 1
(:attr:`LatencyTable.steps` says which, with the times). A search uses it as ``round_to`` when the user left
``round_to`` unset. A model with no group at least 32 units wide keeps ``round_to=1``.

**Cache.** A table is stored as JSON (written atomically, under the umask) in ``cache_dir``, by default
``$PRUNEKIT_CACHE_DIR/latency`` or ``~/.cache/prunekit/latency``, named by a key hashed from the runtime, its
packages' versions, the CPU model, ``threads``, the input shapes, torch's version, the model's structure and
widths (its ``repr`` and every prunable group's width and removable units) and the timing runs: a changed
model, machine or runtime builds a new table; the same one reads it back (``LatencyTable.cached``).

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> from prunekit.graph.groups import build_groups
>>> rep = build_groups(net, torch.zeros(1, 4))
>>> g = rep.prunable_groups[0]
>>> removal_order(g, torch.arange(8.0).flip(0), 0.9)
[7, 6, 5, 4, 3, 2, 1]
>>> points(7)
[4, 7]
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit._atomic import write_text
from prunekit._inputs import ExampleInputs
from prunekit._jsondata import JsonData
from prunekit.deploy.runtimes import Artifact, Runtime, Session, arrays, get_runtime, time_session
from prunekit.graph.groups import Group
from prunekit.measure.latency import cpu_model
from prunekit.measure.macs import macs_by_module
from prunekit.plan import Plan
from prunekit.progress import progress_bar
from prunekit.structured.cut import apply
from prunekit.structured.pipeline import Scored, deployed_form, plan_meta
from prunekit.structured.select import _Budget, _cap, build_plan

__all__ = ["LatencyTable", "Timer", "build_table", "cache_dir", "points", "removal_order"]

#: bump when the table's JSON changes shape or meaning: older files are then never read
FORMAT = 2
#: the fractions of a group's removable units timed
FRACTIONS = (0.5, 1.0)
#: the width steps considered for ``round_to``
STEPS = (1, 2, 4, 8, 16)
#: kept widths below the aligned width ``A`` timed by the width-step probe
PROBE = (1, 2, 4, 8, 16)
ENV = "PRUNEKIT_CACHE_DIR"
#: the ONNX opset models are exported with for timing
OPSET = 17
#: runtimes whose sessions load an ONNX file as it is (OpenVINO compiles ONNX directly): the table's
#: entries skip the verified export and the conversion
LOADS_ONNX = ("onnxruntime", "openvino")


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where latency tables live: ``override``, else ``$PRUNEKIT_CACHE_DIR/latency``, else
    ``~/.cache/prunekit/latency``."""
    if override is not None:
        return Path(override)
    root = os.environ.get(ENV)
    return (Path(root) if root else Path.home() / ".cache" / "prunekit") / "latency"


def removal_order(group: Group, scores: torch.Tensor, max_ratio: float) -> list[int]:
    """The units of ``group`` in the order they are removed: lowest score first, skipping pinned units and
    units whose removal would leave a member dim empty, at most ``max_ratio`` of the group (and never its
    last unit). Every prefix of it is a feasible removal."""
    budget = _Budget(group)
    cap = _cap(group, max_ratio)
    order = np.argsort(scores.numpy(), kind="stable")
    for u in order[~group.unit_pinned[order]]:
        if len(budget.removed) >= cap:
            break
        budget.try_remove(int(u))
    return list(budget.removed)


def points(n: int, width: int = 0, step: int = 1) -> list[int]:
    """The numbers of removed units timed for a group with ``n`` removable units: half and all of them,
    each moved to the nearest count that leaves a multiple of ``step`` of the group's ``width`` (all: the
    most such count), so a runtime that is slow at other widths is timed at the widths a search keeps.

    >>> points(1), points(2), points(30), points(30, 64, 16), points(28, 32, 8), points(3, 20, 16)
    ([1], [1, 2], [15, 30], [16], [16, 24], [2, 3])
    """
    if n <= 0:
        return []
    targets = [max(1, math.ceil(f * n - 1e-9)) for f in FRACTIONS]
    aligned = [k for k in range(1, n + 1) if (width - k) % step == 0] if step > 1 else []
    if aligned:
        targets = [min(aligned, key=lambda k: (abs(k - t), -k)) for t in targets[:-1]] + [aligned[-1]]
    return sorted(set(targets))


class Timer:
    """Times models on one runtime: export to a scratch directory, load with ``threads``, median of ``runs``.

    :meth:`load` keeps a session (the dense model, timed next to every candidate); :meth:`time` exports,
    loads and times one model. Runtimes that convert from ONNX get opset ``opset`` (17: torch's TorchScript
    exporter, several times faster than the dynamo one of opset 18+, and an opset edge converters accept).
    """

    def __init__(
        self, runtime: str, threads: int, runs: int, example_inputs: ExampleInputs, opset: int | None = OPSET
    ) -> None:
        self.rt: Runtime = get_runtime(runtime)
        self.rt.require()
        self.threads, self.runs, self.opset = int(threads), int(runs), opset
        self.example_inputs = example_inputs
        self.inputs = arrays(example_inputs)
        self._work = tempfile.TemporaryDirectory(prefix="prunekit-latency-")
        self._count = 0

    def load(self, model: nn.Module, verified: bool = True) -> Session:
        """``model`` (its :func:`~prunekit.structured.pipeline.deployed_form`) exported to the runtime and
        loaded; its files are removed once it is loaded.

        ``verified=False`` (the table's entries) skips what only proves the export right: on runtimes that
        load an ONNX file (:data:`LOADS_ONNX`) the file is written without comparing onnxruntime's outputs
        with PyTorch's and loaded as it is, the same graph the verified export and conversion give."""
        self._count += 1
        model = deployed_form(model)
        path = Path(self._work.name) / f"m{self._count}{self.rt.suffix}"
        if not verified and self.rt.name in LOADS_ONNX:
            from prunekit.deploy.onnx_export import export_onnx

            onnx_file = path.with_suffix(".onnx")
            export_onnx(model, self.example_inputs, onnx_file, opset=self.opset, verify=False)
            artifact = Artifact(self.rt.name, str(onnx_file), [str(onnx_file)])
        else:
            artifact = self.rt.export(model, self.example_inputs, path, opset=self.opset)
        try:
            return self.rt.load(artifact, threads=self.threads)
        finally:
            for name in artifact.files:
                Path(name).unlink(missing_ok=True)

    def time_session(self, session: Session) -> float:
        """The median ms of ``runs`` runs of ``session`` after a short warm-up."""
        stats = time_session(
            session, self.inputs, warmup=max(2, self.runs // 5), runs=self.runs, threads=self.threads
        )
        return stats.median_ms

    def pair(self, first: Session, second: Session) -> tuple[float, float]:
        """The median ms of ``first`` and of ``second``, their runs alternated (after a warm-up of each) so
        a change in the machine's load reaches both alike: their ratio is steadier than two medians taken
        one after the other."""
        warmup = max(2, self.runs // 5)
        for session in (first, second):
            time_session(session, self.inputs, warmup=warmup - 1, runs=1, threads=self.threads)
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(self.runs):
            for session, out in zip((first, second), times, strict=True):
                out.append(
                    time_session(session, self.inputs, warmup=0, runs=1, threads=self.threads).median_ms
                )
        return float(np.median(times[0])), float(np.median(times[1]))

    def time(self, model: nn.Module) -> float:
        """The median ms of ``model`` on the runtime."""
        return self.time_session(self.load(model))

    def close(self) -> None:
        """Remove the scratch directory."""
        self._work.cleanup()


@dataclass
class GroupLatency(JsonData):
    """What narrowing one group saves: ``saved_ms[i]`` with ``units[i]`` of its units removed."""

    group: int
    width: int
    removable: int
    units: list[int]
    saved_ms: list[float]

    def saved(self, removed: int) -> float:
        """Milliseconds saved with ``removed`` units removed (linear between the timed points)."""
        if removed <= 0 or not self.units:
            return 0.0
        return float(np.interp(removed, [0, *self.units], [0.0, *self.saved_ms]))


@dataclass
class LatencyTable(JsonData):
    """The latency table of one model on one runtime (module docstring)."""

    key: str
    runtime: str
    runtime_version: str
    threads: int
    cpu: str
    input_shapes: list[list[int]]
    base_ms: float
    groups: dict[int, GroupLatency]
    steps: dict[str, Any]
    seconds: float
    measurements: int
    cached: bool = False
    path: str | None = field(default=None)

    @property
    def round_to(self) -> int:
        """The width step the runtime is fastest at (1 when none is measurable; module docstring)."""
        return int(self.steps.get("round_to", 1))

    def saved(self, removed: dict[int, int]) -> float:
        """Predicted ms saved by removing ``removed[group id]`` units of each group (:meth:`predict`)."""
        return self.base_ms - self.predict(removed)

    def predict(self, removed: dict[int, int]) -> float:
        """Predicted ms of the model with ``removed[group id]`` units removed from each group: the dense
        time times the share each group keeps alone, ``prod(1 - saved_g / base)``. Two groups meeting in a
        layer (its input and its output channels) shrink it as a product does, so their savings are not
        simply added; the product is exact there when the layer is the whole model and errs on the side of
        saving too much otherwise, which the end-to-end corrections take up."""
        kept = 1.0
        for g, k in removed.items():
            if g in self.groups and self.base_ms > 0:
                kept *= max(0.0, 1.0 - self.groups[g].saved(k) / self.base_ms)
        return self.base_ms * kept

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyTable:
        groups = {int(k): GroupLatency(**v) for k, v in data["groups"].items()}
        fields = {k: v for k, v in data.items() if k not in ("groups", "round_to")}
        return cls(**(fields | {"groups": groups}))

    _derived = ("round_to",)


def structure_key(
    scored: Scored, orders: dict[int, list[int]], timer: Timer, extra: dict[str, Any] | None = None
) -> tuple[str, dict[str, Any]]:
    """The cache key of a table (a hex digest) and the record it is hashed from."""
    groups = [[g.id, g.width, len(orders.get(g.id, ()))] for g in scored.report.prunable_groups]
    record = {
        "format": FORMAT,
        "runtime": timer.rt.name,
        "runtime_version": timer.rt.version(),
        "cpu": cpu_model(),
        "threads": timer.threads,
        "input_shapes": [list(a.shape) for a in timer.inputs],
        "torch": torch.__version__,
        "structure": hashlib.sha256(repr(scored.model).encode()).hexdigest(),
        "groups": groups,
        "runs": timer.runs,
        "opset": timer.opset,
        **(extra or {}),
    }
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return digest, record


def narrowed(scored: Scored, removed: dict[int, list[int]]) -> Plan:
    """The plan removing ``removed[group id]`` units (no transforms: a table times groups alone)."""
    total = max(1, scored.total_units)
    ratio = sum(len(u) for u in removed.values()) / total
    return build_plan(scored.report, removed, plan_meta(scored.config, scored.report, ratio))


def _pruned(work: nn.Module, plan: Plan, example_inputs: ExampleInputs) -> nn.Module:
    with torch.no_grad():
        pruned = copy.deepcopy(work)
    apply(pruned, plan, example_inputs)
    return pruned


def _steps(times: dict[int, float], repeat: float, aligned: int) -> dict[str, Any]:
    """The width-step verdict from the probe's ``times`` (kept width -> ms) and a second timing of
    ``aligned`` (module docstring)."""
    low = aligned - 16
    t_low, t_high = times[low], times[aligned]
    margin = max(3 * abs(repeat - t_high), 0.02 * t_high)

    def line(w: int) -> float:
        return t_low + (t_high - t_low) * (w - low) / 16

    excess = {w: t - line(w) for w, t in times.items()}
    slow = sorted(w for w, e in excess.items() if e > margin)
    step = next(s for s in STEPS if not any(w % s == 0 for w in slow))
    if not slow:
        note = f"no width slower than the linear fit by more than the noise ({margin:.3g} ms): round_to=1"
    else:
        note = (
            f"kept widths {slow} ran slower than the linear fit by up to {max(excess[w] for w in slow):.3g}"
            f" ms "
            f"(margin {margin:.3g} ms): round_to={step}"
        )
    return {
        "round_to": step,
        "aligned": aligned,
        "widths_ms": {str(w): times[w] for w in sorted(times)},
        "repeat_ms": repeat,
        "margin_ms": margin,
        "slow_widths": slow,
        "note": note,
    }


def _aligned(group: Group, removable: int) -> int | None:
    """The probe's aligned width for ``group``: a multiple of 16 near 2/3 of its width from which 16 more
    units can be removed, or None."""
    lowest = max(1, group.width - removable)  # the narrowest width the group can be cut to
    choices = [a for a in range(32, group.width + 1, 16) if a - 16 >= lowest]
    return min(choices, key=lambda a: abs(a - 2 * group.width / 3)) if choices else None


def _probe_group(scored: Scored, groups: dict[int, Group], orders: dict[int, list[int]]) -> Group | None:
    """The group the width-step probe narrows: of those with an aligned width (:func:`_aligned`), the one
    whose units carry the most MACs (each member layer's MACs times the share of its dim the group covers),
    so that a width the runtime is slow at shows above the timing noise."""
    candidates = [g for g in groups.values() if g.width >= 32 and _aligned(g, len(orders[g.id]))]
    if not candidates:
        return None
    macs = macs_by_module(scored.model, scored.example_inputs)

    def weight(g: Group) -> float:
        share: dict[str, float] = {}
        for m in g.members:
            module = m.name.rsplit(".", 1)[0] if "." in m.name else ""
            share[module] = max(share.get(module, 0.0), len(m.index) / max(1, m.size))
        return sum(macs.get(module, 0) * f for module, f in share.items())

    return max(candidates, key=weight)


def build_table(
    scored: Scored,
    orders: dict[int, list[int]],
    timer: Timer,
    *,
    cache: str | os.PathLike | None = None,
    use_cache: bool = True,
    round_to: int | None = None,
) -> LatencyTable:
    """The latency table of ``scored.model`` on ``timer``'s runtime (module docstring), read from the cache
    in ``cache`` (:func:`cache_dir`) when a table with the same key is there, else measured and stored.

    ``orders`` is each group's :func:`removal_order`; a group with none is left out of the table. The groups
    are timed at kept widths on ``round_to``'s step when it is given (the step the search will keep), else
    on the step the width probe chose.
    """
    key, record = structure_key(scored, orders, timer, {"round_to": round_to} if round_to else None)
    directory = cache_dir(cache)
    path = directory / f"{timer.rt.name}-{key[:24]}.json"
    if use_cache and path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and data.get("key") == key:
            table = LatencyTable.from_dict(data)
            table.cached, table.path = True, str(path)
            return table
    start = time.perf_counter()
    with torch.no_grad():
        work = copy.deepcopy(scored.model)
    groups = {g.id: g for g in scored.report.prunable_groups if orders.get(g.id)}
    probe_group = _probe_group(scored, groups, orders)
    todo = {gid: len(orders[gid]) for gid in groups}
    total = 1 + 2 * len(todo) + (len(PROBE) + 1 if probe_group is not None else 0)
    measured = 1
    with progress_bar(f"latency table ({timer.rt.name})", total) as bar:
        dense = timer.load(work, verified=False)
        base = timer.time_session(dense)
        bar.advance()

        def relative(plan: Plan | None, session: Session | None = None) -> tuple[float, Session]:
            """The ms of ``plan``'s model (or of ``session``, already loaded) in the table's time: ``base``
            x its time over the dense one's, timed alternately with it; and its session."""
            if session is None:
                session = timer.load(_pruned(work, plan, scored.example_inputs), verified=False)
            dense_ms, ms = timer.pair(dense, session)
            bar.advance()
            return base * ms / dense_ms, session

        steps = {
            "round_to": 1,
            "note": "no group is 32 units wide or more with 16 to lose below a multiple of 16: round_to=1",
        }
        if probe_group is not None:  # the width-step probe first: the groups are timed at its widths
            g, order = probe_group, orders[probe_group.id]
            aligned = _aligned(g, len(order))
            times: dict[int, float] = {}
            first = None
            for width in [aligned, *(aligned - d for d in PROBE)]:
                plan = narrowed(scored, {g.id: order[: g.width - width]} if width < g.width else {})
                times[width], session = relative(plan)
                first = first or session
                measured += 1
            repeat, _ = relative(None, first)  # ``aligned`` again, its session reused: the noise
            measured += 1
            steps = _steps(times, repeat, aligned) | {"group": g.id, "group_width": g.width}
        step = round_to or steps["round_to"]
        entries = {}
        for gid, n in todo.items():
            g = groups[gid]
            ks = points(n, g.width, step)
            saved, best = [], 0.0
            for k in ks:
                ms, _ = relative(narrowed(scored, {gid: orders[gid][:k]}))
                best = max(best, base - ms, 0.0)  # non-decreasing, never negative
                saved.append(best)
                measured += 1
            entries[gid] = GroupLatency(gid, g.width, n, ks, saved)
    table = LatencyTable(
        key=key,
        runtime=timer.rt.name,
        runtime_version=record["runtime_version"],
        threads=timer.threads,
        cpu=record["cpu"],
        input_shapes=record["input_shapes"],
        base_ms=base,
        groups=entries,
        steps=steps,
        seconds=time.perf_counter() - start,
        measurements=measured,
    )
    if use_cache:
        directory.mkdir(parents=True, exist_ok=True)
        data = table.to_dict()
        data.pop("cached"), data.pop("path")
        write_text(path, json.dumps(data, indent=1, sort_keys=True))
        table.path = str(path)
    return table


def orders_of(scored: Scored) -> dict[int, list[int]]:
    """:func:`removal_order` of every prunable (exact) group of ``scored``, keyed by group id."""
    cfg = scored.config
    return {
        g.id: removal_order(g, scored.scores[g.id], cfg.max_ratio)
        for g in scored.report.prunable_groups
        if g.id in scored.scores and not g.pinned
    }


def table_for(
    scored: Scored, timer: Timer, cache: str | os.PathLike | None = None
) -> tuple[LatencyTable, dict[int, list[int]]]:
    """The table of ``scored`` on ``timer`` and the removal orders it was built on."""
    orders = orders_of(scored)
    return build_table(scored, orders, timer, cache=cache), orders
