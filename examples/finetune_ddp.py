"""Prune the digits CNN to 95% and win accuracy back with distillation, on 1 process or N under torchrun.

    torchrun --nproc_per_node=2 examples/finetune_ddp.py          # 2 CPU ranks (gloo), or 2 GPUs (nccl)
    python examples/finetune_ddp.py                               # the same code on one process

1. train the dense DigitsCNN with ``prunekit.finetune`` (plain training: no teacher);
2. keep a copy as the teacher, mask 95% of the Conv/Linear weights globally by magnitude;
3. fine-tune the masked model with logit KD from the dense copy, keeping the best weights by validation
   loss (200 training images held out; ``eval_fn`` returns minus the loss, as higher must be better), and
   stopping early after 3 epochs without improvement.

``finetune`` sees torchrun's environment and trains with DistributedDataParallel by itself: every rank gets
its shard of the data (``--batch-size`` is per rank), rank 0 evaluates and prints, all ranks end with the same
weights. Only rank 0 writes ``--out`` (safetensors, masks made permanent).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import safetensors.torch
import torch
from torch.nn import functional as F

import prunekit.recover.distributed as pd
from prunekit.demo.data import DigitsSplits, load_splits, make_loaders
from prunekit.demo.model import build_model
from prunekit.recover import accuracy, finetune
from prunekit.sparse import remove_masks, sparsify


def hold_out(splits: DigitsSplits, count: int, seed: int) -> tuple[DigitsSplits, DigitsSplits]:
    """(train minus ``count`` images, those images as a validation set) from the training split."""
    order = torch.randperm(len(splits.y_train), generator=torch.Generator().manual_seed(seed))
    val, rest = order[:count], order[count:]
    train = DigitsSplits(splits.x_train[rest], splits.y_train[rest], splits.x_test, splits.y_test)
    valid = DigitsSplits(splits.x_train[val], splits.y_train[val], splits.x_test, splits.y_test)
    return train, valid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="dense training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--kd-alpha", type=float, default=0.5, help="0 turns distillation off")
    parser.add_argument("--kd-temperature", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="directory for the pruned model (rank 0)")
    args = parser.parse_args()

    train_split, valid_split = hold_out(load_splits(), 200, args.seed)
    train_loader, test_loader = make_loaders(train_split, batch_size=args.batch_size, seed=args.seed)

    model = build_model(args.seed)
    dense_run = finetune(model, train_loader, epochs=args.epochs, lr=3e-3, weight_decay=1e-4,
                         schedule="cosine", seed=args.seed)  # fmt: skip
    dense_acc = accuracy(model, test_loader)

    teacher = copy.deepcopy(model)
    result = sparsify(model, args.sparsity, scope="global")
    pruned_acc = accuracy(model, test_loader)
    kd = {"teacher": teacher, "kd_alpha": args.kd_alpha, "kd_temperature": args.kd_temperature}
    run = finetune(
        model,
        train_loader,
        epochs=args.finetune_epochs,
        lr=1e-3,
        schedule="cosine",
        eval_fn=lambda m: -F.cross_entropy(m(valid_split.x_train), valid_split.y_train).item(),
        patience=3,
        seed=args.seed,
        **(kd if args.kd_alpha > 0 else {}),
    )
    remove_masks(model)
    final_acc = accuracy(model, test_loader)

    if pd.is_main():
        summary = {
            "world_size": run.world_size,
            "dense_test_accuracy": dense_acc,
            "dense_train_seconds": dense_run.wall_seconds,
            "sparsity": result.sparsity,
            "pruned_test_accuracy_before_finetune": pruned_acc,
            "pruned_test_accuracy_after_finetune": final_acc,
            "finetune": run.to_dict() | {"losses": f"{len(run.losses)} values"},
        }
        print(json.dumps(summary, indent=2))
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            tmp = args.out / "model.safetensors.tmp"
            safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
            os.replace(tmp, args.out / "model.safetensors")


if __name__ == "__main__":
    main()
