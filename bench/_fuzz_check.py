"""One fuzz case: check and prune one generated model, judged by checks of our own (not prunekit's oracle).

``run_case(seed)`` draws the model of ``seed`` (:mod:`_fuzz_models`), a ratio in (0.05, 0.9), a criterion that
needs no data and a scope, then

- runs ``prunekit.check`` (its ``ok`` is recorded as reported);
- prunes a deep copy with ``prunekit.prune``. If that raises, the copy must be unchanged: same tensor objects,
  bit-equal values, same module attributes and classes, and it still runs to the original outputs
  (otherwise ``rollback``). A ``PruneError`` is a refusal; any other exception is a crash;
- on success, compares the pruned copy with an independent masked reference built here: a deep copy of the
  original with every entry ``res.plan.removals`` names set to zero. Outputs must keep their shapes and agree
  within ``1e-4 * max(1, max|ref|)``;
- walks every module of the pruned copy and compares its size attributes with its tensors' shapes (``stale``).

The row's ``status`` is the first failing category in ``CATEGORIES`` order, or ``ok`` / ``refused``.
"""

from __future__ import annotations

import copy
import random
import time
import traceback
from typing import Any

import torch
from _fuzz_models import build, program
from torch import nn

from prunekit.errors import PruneError

RTOL = 1e-4
CATEGORIES = ("crash", "rollback", "prune_nonexact", "shape", "stale", "check_nonexact", "check_crash")


def draw_config(seed: int, prog: dict[str, Any]) -> dict[str, Any]:
    """Ratio, criterion and scope of ``seed`` (bn_scale only where the model has a BatchNorm)."""
    r = random.Random(seed * 7919 + 1)
    criteria = ["l1", "l2", "random", "fpgm"]
    if any(b["args"].get("norm") == "bn" or b["kind"] == "residual" for b in prog["blocks"]):
        criteria.append("bn_scale")
    return {
        "ratio": round(r.uniform(0.05, 0.9), 3),
        "criterion": r.choice(criteria),
        "scope": r.choice(["local", "global"]),
    }


def flat_outputs(out: Any) -> list[torch.Tensor]:
    """Every tensor of a tensor / tuple / list / dict output, in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in flat_outputs(out[k])]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat_outputs(o)]
    return []


def outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return flat_outputs(model.eval()(x))


def masked_copy(model: nn.Module, removals: dict[str, dict[int, list[int]]]) -> nn.Module:
    """A deep copy of ``model`` with every removed entry set to zero (a tied tensor is one tensor)."""
    ref = copy.deepcopy(model).eval()
    tensors = dict(ref.named_parameters(remove_duplicate=False))
    tensors.update(dict(ref.named_buffers(remove_duplicate=False)))
    with torch.no_grad():
        for name, dims in removals.items():
            t = tensors[name]
            for dim, idx in dims.items():
                t.index_fill_(int(dim), torch.tensor(idx, dtype=torch.long), 0)
    return ref


def compare(got: list[torch.Tensor], want: list[torch.Tensor]) -> tuple[bool, float, str]:
    """(equal within tolerance, max abs error, why not)."""
    if len(got) != len(want):
        return False, float("inf"), f"{len(got)} outputs, reference has {len(want)}"
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g.shape != w.shape:
            return False, float("inf"), f"output {i} shape {tuple(g.shape)} != {tuple(w.shape)}"
        if not w.is_floating_point():
            if not torch.equal(g, w):
                return False, float("inf"), f"output {i} (integer) differs"
            continue
        if not torch.isfinite(g).all():
            return False, float("inf"), f"output {i} is not finite"
        err = float((g - w).abs().max()) if g.numel() else 0.0
        scale = float(w.abs().max()) if w.numel() else 0.0
        worst = max(worst, err)
        if err > RTOL * max(1.0, scale):
            return False, worst, f"output {i}: max|pruned - masked| = {err:.3g} (max|ref| {scale:.3g})"
    return True, worst, ""


def _conv_stale(m: nn.modules.conv._ConvNd) -> list[str]:
    w, out = m.weight, []
    cin, cout = (w.shape[0], w.shape[1] * m.groups) if m.transposed else (w.shape[1] * m.groups, w.shape[0])
    if (m.in_channels, m.out_channels) != (cin, cout):
        out.append(
            f"in/out_channels {m.in_channels}/{m.out_channels}, weight {tuple(w.shape)} groups {m.groups}"
        )
    if m.in_channels % m.groups or m.out_channels % m.groups:
        out.append(f"groups {m.groups} does not divide {m.in_channels}/{m.out_channels}")
    if m.bias is not None and m.bias.shape[0] != m.out_channels:
        out.append(f"bias {tuple(m.bias.shape)} vs out_channels {m.out_channels}")
    return out


def _mha_stale(m: nn.MultiheadAttention) -> list[str]:
    out = []
    rows = m.in_proj_weight.shape[0] if m.in_proj_weight is not None else m.q_proj_weight.shape[0] * 3
    width = rows // 3
    if m.head_dim * m.num_heads != width:
        out.append(f"num_heads {m.num_heads} x head_dim {m.head_dim} != q/k/v rows {width}")
    if m.out_proj.in_features != m.out_proj.weight.shape[1]:
        out.append("out_proj.in_features stale")
    if m.in_proj_weight is not None and m.in_proj_weight.shape[1] != m.embed_dim:
        out.append(f"embed_dim {m.embed_dim} vs in_proj_weight {tuple(m.in_proj_weight.shape)}")
    # embed_dim is the query width torch's forward checks; the output width is out_proj's own (a cut may
    # make them differ: the stream into the attention and the one out of it can be different groups)
    if m.out_proj.out_features != m.out_proj.weight.shape[0]:
        out.append("out_proj.out_features stale")
    return out


def stale_attributes(model: nn.Module) -> list[str]:
    """``name: what`` for each module whose size attributes disagree with its tensors."""
    found = []
    for name, m in model.named_modules():
        issues: list[str] = []
        if isinstance(m, nn.modules.conv._ConvNd):
            issues = _conv_stale(m)
        elif isinstance(m, nn.Linear):
            if (m.out_features, m.in_features) != tuple(m.weight.shape):
                issues = [f"in/out_features {m.in_features}/{m.out_features}, weight {tuple(m.weight.shape)}"]
        elif isinstance(m, nn.Embedding):
            if (m.num_embeddings, m.embedding_dim) != tuple(m.weight.shape):
                issues = [f"sizes {m.num_embeddings}/{m.embedding_dim}, weight {tuple(m.weight.shape)}"]
        elif isinstance(m, nn.modules.batchnorm._NormBase):  # BatchNorm, InstanceNorm
            sizes = {t.shape[0] for t in (m.weight, m.running_mean) if t is not None}
            if sizes and sizes != {m.num_features}:
                issues = [f"num_features {m.num_features}, tensors {sorted(sizes)}"]
        elif isinstance(m, nn.GroupNorm):
            if (
                m.weight is not None and m.weight.shape[0] != m.num_channels
            ) or m.num_channels % m.num_groups:
                issues = [
                    f"num_channels/groups {m.num_channels}/{m.num_groups}, weight {tuple(m.weight.shape)}"
                ]
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None and tuple(m.weight.shape) != tuple(m.normalized_shape):
                issues = [f"normalized_shape {m.normalized_shape}, weight {tuple(m.weight.shape)}"]
        elif isinstance(m, nn.PReLU):
            if m.num_parameters != m.weight.numel():
                issues = [f"num_parameters {m.num_parameters}, weight {tuple(m.weight.shape)}"]
        elif isinstance(m, nn.MultiheadAttention):
            issues = _mha_stale(m)
        found += [f"{name or '<root>'} ({type(m).__name__}): {i}" for i in issues]
    return found


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Tensor objects, values, module classes and attributes: what a rollback must give back."""
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers(remove_duplicate=False)))
    return {
        "ids": {n: id(t) for n, t in tensors.items()},
        "values": {n: t.detach().clone() for n, t in tensors.items()},
        "modules": {
            n: (type(m), {k: v for k, v in vars(m).items() if isinstance(v, (int, float, bool, tuple, str))})
            for n, m in model.named_modules()
        },
    }


def rollback_problems(
    model: nn.Module, before: dict[str, Any], x: torch.Tensor, want: list[torch.Tensor]
) -> list[str]:
    """What differs between ``model`` and its ``snapshot`` ``before`` (empty: a clean rollback)."""
    now = snapshot(model)
    out = []
    if now["ids"] != before["ids"]:
        changed = sorted(set(now["ids"].items()) ^ set(before["ids"].items()))
        out.append(f"tensor objects replaced: {[n for n, _ in changed][:4]}")
    for n, v in before["values"].items():
        if n in now["values"] and not torch.equal(now["values"][n], v):
            out.append(f"{n} values changed")
            break
    if now["modules"] != before["modules"]:
        diff = [n for n in before["modules"] if now["modules"].get(n) != before["modules"][n]]
        out.append(f"module classes/attributes changed: {diff[:4]}")
    try:
        ok, _, why = compare(outputs(model, x), want)
        if not ok:
            out.append(f"outputs after rollback differ: {why}")
    except Exception as e:  # any failure to run is the finding
        out.append(f"model no longer runs: {type(e).__name__}: {e}")
    return out


def _error(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    where = f" at {frames[-1].filename.rsplit('/', 2)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}{where}"[:400]


def run_case(seed: int) -> dict[str, Any]:
    """The fuzz row of ``seed`` (see the module docstring)."""
    import prunekit as pk

    prog = program(seed)
    cfg = draw_config(seed, prog)
    model, x = build(prog)
    row: dict[str, Any] = {"seed": seed, **cfg, "problems": [], "seconds": {}}
    want = outputs(model, x)
    t0 = time.perf_counter()
    try:
        rep = pk.check(model, x, **cfg)
        row["check_ok"], row["check_err"], row["check_removed"] = rep.ok, rep.max_abs_err, rep.removed_units
        if rep.rule_errors:
            row["problems"].append(["check_crash", f"rule errors: {rep.rule_errors[:2]}"])
        if not rep.ok:
            row["problems"].append(
                [
                    "check_nonexact",
                    f"check ok=False, max_abs_err {rep.max_abs_err:.3g} (tol {rep.tolerance:.3g})",
                ]
            )
    except PruneError as e:
        row["check_ok"], row["check_refused"] = None, _error(e)
    except Exception as e:  # a raw exception is the finding
        row["check_ok"] = None
        row["problems"].append(["check_crash", _error(e)])
    row["seconds"]["check"] = time.perf_counter() - t0
    _prune_and_judge(model, x, cfg, want, row)
    order = {c: i for i, c in enumerate(CATEGORIES)}
    cats = sorted({c for c, _ in row["problems"]}, key=order.get)
    row["status"] = cats[0] if cats else ("refused" if "refused" in row else "ok")
    return row


def _prune_and_judge(
    model: nn.Module, x: torch.Tensor, cfg: dict, want: list[torch.Tensor], row: dict
) -> None:
    import prunekit as pk

    pruned = copy.deepcopy(model)
    before = snapshot(pruned)
    t0 = time.perf_counter()
    try:
        res = pk.prune(pruned, x, **cfg)
    except Exception as e:  # sorted below
        row["seconds"]["prune"] = time.perf_counter() - t0
        if isinstance(e, PruneError):
            row["refused"] = _error(e)
        else:
            row["problems"].append(["crash", _error(e)])
        row["problems"] += [["rollback", p] for p in rollback_problems(pruned, before, x, want)]
        return
    row["seconds"]["prune"] = time.perf_counter() - t0
    row["removed"] = res.plan.removed_units
    row["params"] = [res.params_before, res.params_after]
    stale = stale_attributes(pruned)
    if stale:
        row["problems"].append(["stale", "; ".join(stale[:3])])
    try:
        got = outputs(pruned, x)
    except Exception as e:
        row["problems"].append(["crash", f"pruned model does not run: {_error(e)}"])
        return
    if [tuple(t.shape) for t in got] != [tuple(t.shape) for t in want]:
        row["problems"].append(
            ["shape", f"outputs {[tuple(t.shape) for t in got]} != {[tuple(t.shape) for t in want]}"]
        )
    ok, err, why = compare(got, outputs(masked_copy(model, res.plan.removals), x))
    row["prune_err"] = err
    if not ok:
        row["problems"].append(["prune_nonexact", why])
