"""What the YOLO test files share: the image size they train and predict at, and one torch thread."""

from __future__ import annotations

import pytest
import torch

IMGSZ = 64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """YOLO forwards at 64 px are tiny: one thread is several times faster than two on a shared machine.
    Importing this fixture into a test module turns it on for that module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
