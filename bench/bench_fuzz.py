"""Fuzz the structural engine with generated architectures: check and prune each one, judged independently.

Every seed is one model of :mod:`_fuzz_models` (convs, norms, residuals, SE, cat/split/chunk, shuffles,
attention, embeddings, tied weights, module reuse, tuple/dict outputs) with a random ratio, criterion, scope,
run by :func:`_fuzz_check.run_case` in a worker process (spawned; one that crashes, segfaults or runs past
``--timeout`` is recorded and replaced). Rows are appended to a JSONL cache keyed by seed and by a fingerprint
of prunekit's and the fuzzer's sources, so a rerun skips what is done and any code change reruns everything.
Writes ``bench/results/fuzz.json`` and section ``fuzz`` of docs/RESULTS.md.

    .venv/bin/python bench/bench_fuzz.py [--seeds A:B | --quick] [--jobs 1] [--no-write]
    .venv/bin/python bench/bench_fuzz.py --seed N --show     # print one model, run it here, print its row
"""

from __future__ import annotations

import argparse
import ast
import datetime
import hashlib
import json
import multiprocessing as mp
import platform
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # this checkout's prunekit, not an installed one
from _fuzz_check import CATEGORIES, draw_config, run_case  # noqa: E402
from _fuzz_models import build, describe, program  # noqa: E402
from _fuzz_pool import Pool  # noqa: E402
from _results import write_section  # noqa: E402

FAILURES = ("timeout", "died", *CATEGORIES)  # statuses that are findings


def fingerprint() -> str:
    """Hash of the code of prunekit and of the fuzzer (their syntax trees: formatting and comments do not
    count), so rows computed by other code are not reused."""
    h = hashlib.sha256()
    files = [*sorted((ROOT / "prunekit").rglob("*.py")), HERE / "_fuzz_models.py", HERE / "_fuzz_check.py"]
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + ast.dump(ast.parse(f.read_bytes())).encode())
    return h.hexdigest()[:12]


def one_case(seed: int) -> dict:
    """:func:`_fuzz_check.run_case` on one intra-op thread (the workers' case)."""
    import torch

    torch.set_num_threads(1)
    return run_case(seed)


def load_cache(path: Path, key: str) -> dict[int, dict]:
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a killed run
                continue
            if row.get("key") == key:
                rows[row["seed"]] = row
    return rows


def reason(row: dict) -> str:
    """One line: the first problem of the row's status (or the refusal)."""
    for cat, why in row.get("problems", []):
        if cat == row["status"]:
            return why
    return row.get("refused", "")


def findings(row: dict) -> list[tuple[str, str]]:
    """(category, message) for each finding of a row, one per module for stale attributes."""
    out = [
        (c, part)
        for c, why in row.get("problems", [])
        for part in (why.split("; ") if c == "stale" else [why])
    ]
    return out + ([("refused", row["refused"])] if "refused" in row else [])


def signature(category: str, text: str) -> str:
    """A finding with its numbers, module names and group members blurred, to count models by cause."""
    text = re.sub(r"^\S+ \(", "(", text) if category == "stale" else text
    text = re.sub(r"in module \S+:", "in module M:", text)
    text = re.sub(r"cannot score group \d+ \([^)]*\)", "cannot score a group", text)
    return f"{category}: " + re.sub(r"\d+", "N", text)[:160]


def summarize(rows: list[dict], seeds: tuple[int, int], key: str) -> dict:
    statuses = [r["status"] for r in rows]
    problem = {c: sum(any(p[0] == c for p in r.get("problems", [])) for r in rows) for c in FAILURES}
    times = [
        r["seconds"].get("check", 0) + r["seconds"].get("prune", 0)
        for r in rows
        if "check" in r.get("seconds", {})
    ]
    causes: dict[str, dict] = {}
    for r in rows:
        for key, (cat, why) in {signature(c, w): (c, w) for c, w in findings(r)}.items():
            c = causes.setdefault(key, {"category": cat, "count": 0, "seeds": [], "example": why})
            c["count"] += 1
            if len(c["seeds"]) < 8:
                c["seeds"].append(r["seed"])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {mp.cpu_count()} cores, "
        f"torch {_torch_version()}",
        "fingerprint": key,
        "seeds": list(seeds),
        "models": len(rows),
        "ok": statuses.count("ok"),
        "cut": sum(r.get("removed", 0) > 0 for r in rows),  # pruned models that lost at least one unit
        "refused": statuses.count("refused"),
        "models_with": problem,
        "median_s": statistics.median(times) if times else None,
        "p90_s": statistics.quantiles(times, n=10)[-1] if len(times) >= 10 else None,
        "model_s_total": sum(
            r.get("seconds", {}).get("wall", 0) for r in rows
        ),  # worker time, cached rows too
        "causes": sorted(causes.values(), key=lambda c: (c["category"] == "refused", -c["count"])),
        "failing": [
            {"seed": r["seed"], "status": r["status"], "reason": reason(r)}
            for r in sorted(rows, key=lambda r: r["seed"])
            if r["status"] in FAILURES or r["status"] == "harness_error"
        ],
    }


def _torch_version() -> str:
    import torch

    return torch.__version__


COLUMNS = (
    "models", "ok", "cut", "refused", "crash", "died/timeout", "rollback", "prune non-exact", "output shape",
    "stale attrs", "check non-exact", "check crash", "median s", "p90 s",
)  # fmt: skip


def markdown(s: dict) -> str:
    w = s["models_with"]
    row = [s["models"], s["ok"], s["cut"], s["refused"], w["crash"], w["died"] + w["timeout"], w["rollback"]]
    row += [w["prune_nonexact"], w["shape"], w["stale"], w["check_nonexact"], w["check_crash"]]
    row += [_fmt(s["median_s"]), _fmt(s["p90_s"])]
    lines = [
        "## Fuzzing the structural engine (`bench/bench_fuzz.py`)",
        "",
        f"{s['models']} generated models (seeds {s['seeds'][0]}:{s['seeds'][1]}), each `check`ed and "
        "`prune`d at a random ratio in (0.05, 0.9), criterion (l1, l2, random, fpgm, bn_scale) and scope, "
        "judged by the fuzzer's own masked reference, attribute walker and rollback check. "
        f"{s['machine']}, {s['date']}, sources {s['fingerprint']}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|---" * len(COLUMNS) + "|",
        "| " + " | ".join(str(v) for v in row) + " |",
        "",
        "Models with each cause (a model can have several), most frequent first, numbers blurred; refusals "
        "(a PruneError with its message) last:",
        "",
        "| category | models | seeds (first 8) | example |",
        "|---|---|---|---|",
    ]
    failing = [c for c in s["causes"] if c["category"] != "refused"]
    refused = [c for c in s["causes"] if c["category"] == "refused"]
    for c in failing[:30] + refused[:8]:
        example = c["example"].replace("|", "\\|")[:180]
        lines.append(f"| {c['category']} | {c['count']} | {', '.join(map(str, c['seeds']))} | {example} |")
    if len(refused) > 8:
        lines.append(
            f"| refused | {sum(c['count'] for c in refused[8:])} | | {len(refused) - 8} more causes |"
        )
    lines += ["", "Reproduce one: `python bench/bench_fuzz.py --seed N --show`."]
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def show(seed: int) -> None:
    import torch

    torch.set_num_threads(1)
    prog = program(seed)
    print(describe(prog))
    print("config:", draw_config(seed, prog))
    print(build(prog)[0])
    print(json.dumps(run_case(seed), indent=1, default=str))


def parse_seeds(text: str) -> tuple[int, int]:
    a, _, b = text.partition(":")
    if not b or int(b) <= int(a):
        raise SystemExit(f"--seeds wants A:B with A < B, got {text!r}")
    return int(a), int(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0:1000", help="half-open range A:B (default 0:1000)")
    parser.add_argument("--quick", action="store_true", help="seeds 0:200")
    parser.add_argument("--seed", type=int, help="with --show: one seed, run in this process")
    parser.add_argument("--show", action="store_true")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per model")
    parser.add_argument("--cache", default=str(HERE / "results" / "fuzz_cache.jsonl"))
    parser.add_argument("--json", default=str(HERE / "results" / "fuzz.json"))
    parser.add_argument("--results", default="docs/RESULTS.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.seed is not None:
        return show(args.seed)
    seeds = (0, 200) if args.quick else parse_seeds(args.seeds)
    key, cache = fingerprint(), Path(args.cache)
    done = load_cache(cache, key)
    todo = [s for s in range(*seeds) if s not in done]
    print(f"{seeds[1] - seeds[0]} seeds, {len(todo)} to run, sources {key}", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    pool = Pool(args.jobs, args.timeout, one_case)
    try:
        with open(cache, "a") as out:
            for i, row in enumerate(pool.run(todo), 1):
                row["key"] = key
                done[row["seed"]] = row
                out.write(json.dumps(row, default=str) + "\n")
                out.flush()
                if row["status"] != "ok":
                    print(
                        f"[{i}/{len(todo)}] seed {row['seed']}: {row['status']}: {reason(row)[:150]}",
                        flush=True,
                    )
    finally:
        pool.close()
    rows = [done[s] for s in range(*seeds) if s in done]
    summary = summarize(rows, seeds, key)
    text = markdown(summary)
    print(text)
    if not args.no_write:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {args.json} and {write_section('fuzz', text, args.results)}")


if __name__ == "__main__":
    main()
