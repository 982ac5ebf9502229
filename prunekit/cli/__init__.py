"""The ``prunekit`` command line: parse, call the library, print with rich, write ``--json``.

    prunekit --version
    prunekit demo --out out/demo --json out/demo/demo.json
    prunekit analyze torchvision:resnet18 --no-latency --json resnet18.json
    prunekit sparsify torchvision:resnet18 --sparsity 0.9 --out resnet18-sparse.safetensors
    prunekit prune torchvision:resnet18 --ratio 0.5 --out out/r18
    prunekit check torchvision:mobilenet_v2 --ratio 0.5 --json check.json
    prunekit report check.json --out check-report
    prunekit accelerate sparse-ckpt/ --out fast-ckpt/ --batch-sizes 1,8,32
    prunekit vocab sentence:all-MiniLM-L6-v2 --texts texts.txt --words --out out/minilm-vocab

One module per command (or family of commands); each registers itself on the shared ``app``.
"""

from __future__ import annotations

from prunekit.cli import (  # noqa: F401  (each registers its commands)
    accelerate,
    analyze,
    demo,
    deploy,
    recover,
    report,
    sensitivity,
    sparsify,
    structured,
    vocab,
    yolo,
)
from prunekit.cli._common import app

__all__ = ["app"]
