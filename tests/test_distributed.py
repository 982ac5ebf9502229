"""prunekit.recover.distributed, and finetune under torchrun: 2 CPU ranks (gloo) on loopback end identical."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from ddp_worker import cnn_case, mlp_case
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import prunekit.recover.distributed as pd
from prunekit.errors import ConfigError
from prunekit.recover import finetune

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run tests/ddp_worker.py on 2 local ranks once; return the directory with each rank's weights."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        str(ROOT / "tests" / "ddp_worker.py"), str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def load(out: Path, case: str, rank: int) -> tuple[dict[str, torch.Tensor], dict]:
    weights = safetensors.torch.load_file(str(out / f"{case}_rank{rank}.safetensors"))
    return weights, json.loads((out / f"{case}_rank{rank}.json").read_text())


def test_both_ranks_end_with_identical_weights_that_moved(two_ranks: Path) -> None:
    for case in ("mlp", "cnn"):
        (w0, r0), (w1, r1) = load(two_ranks, case, 0), load(two_ranks, case, 1)
        assert w0.keys() == w1.keys()
        assert all(torch.equal(w0[k], w1[k]) for k in w0), case  # bit-identical, buffers included
        assert r0["world_size"] == r1["world_size"] == 2
        assert r0["history"] == r1["history"] and r0["steps"] == r1["steps"]
        initial = (mlp_case()[0] if case == "mlp" else cnn_case()[0]).state_dict()
        moved = [k for k in w0 if w0[k].is_floating_point() and not torch.equal(w0[k], initial[k])]
        assert len(moved) >= 4, case


def test_ddp_equals_one_process_on_the_merged_batches(two_ranks: Path) -> None:
    # mlp case: rank r trained on batches r, r+2, ... (4 of 8 per pass); DDP averages the two ranks'
    # gradients, which is one process's gradient on the merged batch (0+1, 2+3, ...): SGD, no BN/dropout.
    weights, result = load(two_ranks, "mlp", 0)
    model, batches = mlp_case()
    merged = [
        (torch.cat([batches[i][0], batches[i + 1][0]]), torch.cat([batches[i][1], batches[i + 1][1]]))
        for i in range(0, 8, 2)
    ]
    finetune(model, merged, steps=6, lr=0.1, optimizer="sgd", momentum=0.0, progress=False)
    single = model.state_dict()
    assert result["steps"] == 6 and result["steps_per_epoch"] == 4
    assert all(torch.allclose(weights[k], single[k], atol=1e-6) for k in single)
    mask = weights["0.parametrizations.weight.0.mask"]
    assert int(mask.eq(0).sum()) == 48  # 50% of 16x6 still masked
    assert torch.all((weights["0.parametrizations.weight.original"] * mask)[mask == 0] == 0)


def test_rank0_evaluates_and_the_best_weights_are_the_same_on_every_rank(two_ranks: Path) -> None:
    _, result = load(two_ranks, "cnn", 0)
    # 48 samples, batch 6 per rank, 2 ranks -> 4 steps per epoch, 2 epochs; evaluations at 0, 2, 4, 6, 8
    assert result["steps_per_epoch"] == 4 and result["steps"] == 8
    assert [p["step"] for p in result["history"]] == [0, 2, 4, 6, 8]
    assert result["distilled"] and result["restored_best"]
    assert result["best_metric"] == max(p["metric"] for p in result["history"])


def test_shard_splits_lists_by_batch_and_loaders_by_sample() -> None:
    batches = [(torch.tensor([i]), torch.tensor([0])) for i in range(7)]
    parts = [[int(x) for x, _ in pd.shard(batches, rank, 3)] for rank in range(3)]
    assert parts == [[0, 3], [1, 4], [2, 5]]  # batch 6 dropped: every rank takes 2 steps
    assert pd.shard(batches, 0, 1) is batches

    data = TensorDataset(torch.arange(10.0), torch.zeros(10))
    loader = DataLoader(data, batch_size=2, shuffle=True)
    shards = [pd.shard(loader, rank, 2, seed=5) for rank in range(2)]
    assert all(isinstance(s.sampler, DistributedSampler) and s.sampler.shuffle for s in shards)
    seen = [sorted(float(v) for x, _ in s for v in x) for s in shards]
    assert sorted(seen[0] + seen[1]) == [float(i) for i in range(10)] and len(seen[0]) == 5
    assert pd.shard(shards[0], 0, 2) is shards[0]  # already distributed: left alone
    assert not pd.shard(DataLoader(data, batch_size=2), 0, 2).sampler.shuffle

    with pytest.raises(ConfigError, match="fewer than the 3 ranks"):
        pd.shard(batches[:2], 0, 3)
    with pytest.raises(ConfigError, match="without len"):
        pd.shard((b for b in batches), 0, 2)


def test_outside_torchrun_everything_is_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in pd.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    assert not pd.launched_with_torchrun() and not pd.is_distributed() and pd.is_main()
    assert pd.broadcast_float(0.25) == 0.25 and pd.mean_over_ranks(3.0) == 3.0
    with pytest.raises(ConfigError, match=r"\$RANK is not set"):
        pd.init_distributed()
    monkeypatch.setenv("RANK", "1")
    assert pd.rank() == 1 and not pd.is_main()
