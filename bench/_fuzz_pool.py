"""Worker processes for the fuzzer: each case runs in a spawned process, so one that crashes the interpreter
(a segfault, an abort) or hangs is recorded as a row and its worker replaced, and the run goes on.

A worker takes one seed at a time and answers ``("start", seed)`` when it begins (so a fresh worker's
imports do not count against the per-case timeout; they have ``STARTUP_S`` of their own), then
``("row", case(seed))``.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from typing import Any

STARTUP_S = 120.0  # allowance for a fresh worker's imports before its first case starts


def _worker(conn: Any, case: Callable[[int], dict]) -> None:
    while (seed := conn.recv()) is not None:
        conn.send(("start", seed))  # the timeout counts from here, not from the worker's imports
        try:
            row = case(seed)
        except Exception as e:  # a fuzzer bug (generator/checks), reported as such
            row = {
                "seed": seed,
                "status": "harness_error",
                "problems": [["harness_error", f"{type(e).__name__}: {e}"]],
            }
        conn.send(("row", row))


class Pool:
    """``jobs`` spawned workers running ``case(seed)``, one seed at a time each; a dead or late worker is
    replaced. ``case`` must be importable by name (a module-level function)."""

    def __init__(self, jobs: int, timeout: float, case: Callable[[int], dict]):
        self.ctx, self.timeout, self.jobs, self.case = mp.get_context("spawn"), timeout, jobs, case
        self.busy: dict[Any, tuple[Any, int, float, bool]] = {}  # conn -> (process, seed, since, started)
        self.idle: list[tuple[Any, Any]] = []

    def _start(self) -> tuple[Any, Any]:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, args=(child, self.case), daemon=True)
        proc.start()
        child.close()
        return proc, parent

    def run(self, seeds: list[int]) -> Iterator[dict]:
        """Yield one row per seed, in completion order."""
        todo = list(reversed(seeds))
        while todo or self.busy:
            while todo and len(self.busy) < self.jobs:
                proc, conn = self.idle.pop() if self.idle else self._start()
                seed = todo.pop()
                conn.send(seed)
                self.busy[conn] = (proc, seed, time.monotonic(), False)
            for conn in wait(list(self.busy), timeout=1.0):
                proc, seed, start, _ = self.busy.pop(conn)
                try:
                    kind, row = conn.recv()
                    if kind == "start":
                        self.busy[conn] = (proc, seed, time.monotonic(), True)
                        continue
                    self.idle.append((proc, conn))
                except (EOFError, OSError):
                    proc.join(5)
                    why = f"worker died (exit code {proc.exitcode})"
                    row = {"seed": seed, "status": "died", "problems": [["died", why]]}
                row.setdefault("seconds", {})["wall"] = time.monotonic() - start
                yield row
            for conn, (proc, seed, start, started) in list(self.busy.items()):
                if time.monotonic() - start > self.timeout + (0 if started else STARTUP_S):
                    proc.kill()
                    proc.join(5)
                    del self.busy[conn]
                    why = f"no result within {self.timeout:.0f} s"
                    yield {
                        "seed": seed,
                        "status": "timeout",
                        "problems": [["timeout", why]],
                        "seconds": {"wall": self.timeout},
                    }

    def close(self) -> None:
        for proc, conn in self.idle:
            conn.send(None)
            proc.join(5)
        for proc, *_ in self.busy.values():
            proc.kill()
