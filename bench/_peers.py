"""Torch-Pruning, the peer the structural benchmarks measure against (installed in the bench environment
only; the package never imports it)."""

from __future__ import annotations

import signal
import time
from typing import Any

import torch


class _Timeout(Exception):
    pass


def metapruner(model: torch.nn.Module, x: Any, ignored: list[torch.nn.Module], timeout: int) -> dict:
    """Time ``MetaPruner`` construction + ``step()`` (ratio 0.5, L2 magnitude) on ``model``, in place.

    Returns ``{"status": "ok", "seconds": s}``, or a status saying how it failed (timeout after ``timeout``
    seconds, or the crash's first line) and no time.
    """
    import torch_pruning as tp

    def alarm(*_):
        raise _Timeout

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(timeout)
    t0 = time.perf_counter()
    try:
        imp = tp.importance.MagnitudeImportance(p=2)
        tp.pruner.MetaPruner(model, x, importance=imp, pruning_ratio=0.5, ignored_layers=ignored).step()
        return {"status": "ok", "seconds": time.perf_counter() - t0}
    except _Timeout:
        return {"status": f"timeout (> {timeout} s)", "seconds": None}
    except Exception as exc:  # the peer's failure mode, reported
        first = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:110]
        return {"status": "crash: " + first, "seconds": None}
    finally:
        signal.alarm(0)
