"""Worker for tests/test_distributed.py, started by ``python -m torch.distributed.run --nproc_per_node=2``.

Each rank fine-tunes two small models with :func:`prunekit.finetune` (which sees torchrun's environment and
uses DDP by itself) and writes ``<case>_rank<R>.safetensors`` (final state dict) and ``<case>_rank<R>.json``
(the result) to the directory given as the first argument:

- ``mlp``: a 50%-masked MLP, plain SGD, a list of 8 batches split by batch over the ranks (no BatchNorm or
  dropout, so the test can compare it with one process training on the merged batches).
- ``cnn``: a CNN with BatchNorm and dropout, a shuffling DataLoader (DistributedSampler), KD from a teacher,
  evaluation on rank 0 every 2 steps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import safetensors.torch
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prunekit.recover.distributed as pd
from prunekit.recover import finetune
from prunekit.sparse import sparsify


def mlp_case() -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    sparsify(model, 0.5)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 6, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(8)]
    return model, batches


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(self.drop(x.flatten(1)))


def cnn_case() -> tuple[nn.Module, nn.Module, DataLoader, list]:
    torch.manual_seed(2)
    model, teacher = SmallCNN(), SmallCNN()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(48, 1, 4, 4, generator=g), torch.randint(0, 3, (48,), generator=g)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(4)
    )
    return model, teacher, loader, [(x, y)]


def save(out: Path, case: str, model: nn.Module, result: dict) -> None:
    rank = pd.rank()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(out / f"{case}_rank{rank}.safetensors"))
    (out / f"{case}_rank{rank}.json").write_text(json.dumps(result))


def main() -> None:
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    info = pd.init_distributed()  # one group for both runs; finetune uses it and leaves it open

    model, batches = mlp_case()
    res = finetune(model, batches, steps=6, lr=0.1, optimizer="sgd", momentum=0.0, progress=False)
    save(out, "mlp", model, res.to_dict())

    model, teacher, loader, test = cnn_case()

    def acc(m: nn.Module) -> float:
        return float((m(test[0][0]).argmax(1) == test[0][1]).float().mean())

    res = finetune(model, loader, epochs=2, lr=0.01, teacher=teacher, eval_fn=acc, eval_every=2, seed=0,
                   progress=False)  # fmt: skip
    save(out, "cnn", model, res.to_dict())
    pd.cleanup(info)


if __name__ == "__main__":
    main()
