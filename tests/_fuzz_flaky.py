"""A fuzz case that segfaults (seed 1), hangs (seed 2) or succeeds; light to import, for worker-pool tests."""

from __future__ import annotations

import os
import signal
import time


def flaky_case(seed: int) -> dict:
    if seed == 1:
        os.kill(os.getpid(), signal.SIGSEGV)
    if seed == 2:
        time.sleep(120)
    return {"seed": seed, "status": "ok", "problems": []}
