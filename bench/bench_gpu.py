"""Dense vs pruned on an NVIDIA GPU: TensorRT fp16 / INT8 engines, and PyTorch's 2:4 semi-structured sparsity.

Two measurements, each dense and pruned in the same run:

- **TensorRT** (``pip install tensorrt``): ResNet-50 and YOLO11n / YOLOv8n (random weights, no
  downloads), dense and structurally pruned with prunekit at ``--ratios``, exported to ONNX (opset 17), built
  into fp16 and INT8 engines (INT8 calibrated by TensorRT's entropy calibrator on random inputs of the
  model's shape: enough for timing, not for accuracy), timed with CUDA events. Columns: ms, speedup vs
  dense of the same precision, MACs reduction, and the engine's agreement with PyTorch fp32 (cosine).
- **2:4** (``torch.sparse.to_sparse_semi_structured``, compute capability >= 8.0): Linear-heavy models
  (a ViT-B/16 and a stack of wide MLP blocks) in fp16, dense vs ``prunekit.sparsify(pattern="2:4")`` with the
  weights swapped for semi-structured tensors, at batch sizes ``--batch-sizes``.

Without a CUDA GPU the script says so in one line and exits 0, writing nothing; without ``tensorrt`` it runs
the 2:4 part alone. Results go to ``bench/results/gpu.json`` (each record cached as it finishes, so a rerun
resumes; ``--fresh`` measures again) and the ``gpu`` section of docs/RESULTS.md.

    python bench/bench_gpu.py --quick     # ResNet-50 at 0.5 and one 2:4 model: a few minutes on an H100
    python bench/bench_gpu.py
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import bench_edge
from _common import common_args, finish, machine_line, markdown_table

import prunekit as pk

CACHE = Path(__file__).parent / "results" / "gpu.json"
TRT_MODELS = {"resnet50": 224, "yolo11n": 640, "yolov8n": 640}


# --- shared --------------------------------------------------------------------------------------------


def cuda_ms(fn: Callable[[], Any], runs: int, warmup: int) -> tuple[float, float]:
    """Median and p90 of ``fn()`` in milliseconds, each call timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, int(0.9 * len(times)))]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def build(name: str, ratio: float) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """Dense ``name`` (random weights), a copy pruned at ``ratio``, and the batch-1 input (CPU)."""
    return bench_edge.build(name, ratio, TRT_MODELS[name])


# --- TensorRT -----------------------------------------------------------------------------------------


def trt_engine(onnx_path: str, precision: str, x: torch.Tensor) -> Any:
    """A TensorRT engine of ``onnx_path`` in ``precision`` (fp16, or int8 with fp16 fallback)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        if not parser.parse(f.read()):
            raise RuntimeError(f"TensorRT cannot parse the ONNX file: {parser.get_error(0)}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _calibrator(trt, x)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build a {precision} engine")
    return trt.Runtime(logger).deserialize_cuda_engine(serialized)


def _calibrator(trt: Any, x: torch.Tensor) -> Any:
    """An entropy calibrator feeding 8 random batches shaped like ``x`` (timing only, not accuracy)."""

    class Random(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            gen = torch.Generator().manual_seed(0)
            self.batches = [torch.randn(x.shape, generator=gen).cuda() for _ in range(8)]

        def get_batch_size(self) -> int:
            return x.shape[0]

        def get_batch(self, names: list[str]) -> list[int] | None:
            return [self.batches.pop().data_ptr()] if self.batches else None

        def read_calibration_cache(self) -> None:
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    return Random()


def trt_runner(engine: Any, x: torch.Tensor) -> tuple[Callable[[], None], torch.Tensor]:
    """A call running ``engine`` on ``x`` (CUDA) into a preallocated output, and that output."""
    import tensorrt as trt

    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    context.set_input_shape(inputs[0], tuple(x.shape))
    context.set_tensor_address(inputs[0], x.data_ptr())
    out = torch.empty(tuple(context.get_tensor_shape(outputs[0])), device="cuda", dtype=torch.float32)
    context.set_tensor_address(outputs[0], out.data_ptr())
    stream = torch.cuda.current_stream().cuda_stream
    return (lambda: context.execute_async_v3(stream)), out


def measure_trt(name: str, ratio: float, precision: str, runs: int) -> dict:
    """One TensorRT record: engine latency of ``name`` at ``ratio`` in ``precision``."""
    from prunekit.deploy import export_onnx

    dense, pruned, x = build(name, ratio)
    model = pruned if ratio else dense
    record: dict[str, Any] = {"part": "tensorrt", "model": name, "ratio": ratio, "precision": precision}
    record["macs_reduction"] = pk.count_macs(dense, x) / pk.count_macs(model, x)
    with torch.no_grad():
        want = model(x)
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, f"{name}.onnx")
        export_onnx(model, x, path, opset=17, dynamic_batch=False)
        engine = trt_engine(path, precision, x.cuda())
    xc = x.cuda()
    run, out = trt_runner(engine, xc)
    median, p90 = cuda_ms(run, runs, warmup=max(5, runs // 5))
    torch.cuda.synchronize()
    return record | {"median_ms": median, "p90_ms": p90, "cosine": cosine(out.cpu(), want)}


# --- 2:4 semi-structured --------------------------------------------------------------------------------


class MLPStack(nn.Module):
    """Wide MLP blocks (width 4096, hidden 16384): the Linear-heavy shape 2:4 kernels are made for."""

    def __init__(self, width: int = 4096, blocks: int = 4) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[
                nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
                for _ in range(blocks)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def sparse_models() -> dict[str, tuple[Callable[[], nn.Module], Callable[[int], torch.Tensor]]]:
    import torchvision

    return {
        "mlp_stack_4096": (MLPStack, lambda b: torch.randn(b, 128, 4096)),
        "vit_b_16": (
            lambda: torchvision.models.vit_b_16(weights=None),
            lambda b: torch.randn(b, 3, 224, 224),
        ),
    }


def to_semi_structured(model: nn.Module) -> int:
    """Swap each 2:4-sparse Linear weight (CUDA, fp16) for a semi-structured tensor; return how many."""
    from torch.sparse import to_sparse_semi_structured

    swapped = 0
    for module in model.modules():
        if (
            isinstance(module, nn.Linear)
            and module.weight.shape[0] % 64 == 0
            and module.weight.shape[1] % 64 == 0
        ):
            weight = module.weight.detach()
            if (weight == 0).float().mean() >= 0.49:
                module.weight = nn.Parameter(to_sparse_semi_structured(weight), requires_grad=False)
                swapped += 1
    return swapped


def measure_24(name: str, batch: int, runs: int) -> dict:
    """One 2:4 record: fp16 latency of ``name`` dense vs 2:4 semi-structured at ``batch``."""
    factory, inputs = sparse_models()[name]
    torch.manual_seed(0)
    dense = factory().eval().half().cuda()
    sparse = copy.deepcopy(dense)
    linears = [m for m in sparse.modules() if isinstance(m, nn.Linear)]
    result = pk.sparsify(sparse, pk.SparsifyConfig(pattern="2:4", include=linears))
    pk.remove_masks(sparse)
    swapped = to_semi_structured(sparse)
    x = inputs(batch).half().cuda()
    with torch.inference_mode():
        dense_ms, dense_p90 = cuda_ms(lambda: dense(x), runs, warmup=max(5, runs // 5))
        sparse_ms, sparse_p90 = cuda_ms(lambda: sparse(x), runs, warmup=max(5, runs // 5))
        agree = cosine(sparse(x).float().cpu(), dense(x).float().cpu())
    return {
        "part": "2:4", "model": name, "batch_size": batch, "dense_ms": dense_ms, "sparse_ms": sparse_ms,
        "dense_p90_ms": dense_p90, "sparse_p90_ms": sparse_p90, "speedup": dense_ms / sparse_ms,
        "layers_swapped": swapped, "layers_sparsified": len(result.layers), "cosine_vs_dense": agree,
    }  # fmt: skip


# --- driver ------------------------------------------------------------------------------------------------


def load_cache(fresh: bool) -> dict[str, dict]:
    if fresh or not CACHE.exists():
        return {}
    return {r["key"]: r for r in json.loads(CACHE.read_text())["records"]}


def save_cache(records: dict[str, dict], machine: str) -> None:
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    tmp = CACHE.with_name(f".{CACHE.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"machine": machine, "records": list(records.values())}, indent=2) + "\n")
    os.replace(tmp, CACHE)


def markdown(records: list[dict], machine: str) -> str:
    lines = ["## GPU: TensorRT and 2:4 semi-structured sparsity (`bench/bench_gpu.py`)", "", machine, ""]
    trt = [r for r in records if r["part"] == "tensorrt"]
    if trt:
        dense = {(r["model"], r["precision"]): r.get("median_ms") for r in trt if r["ratio"] == 0}
        rows = []
        for r in trt:
            base = dense.get((r["model"], r["precision"]))
            if "error" in r:
                rows.append([r["model"], r["ratio"], r["precision"], "-", "-", "-", "-", r["error"]])
                continue
            speed = f"{base / r['median_ms']:.2f}x" if base else "-"
            cells = [f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}", speed, f"{r['macs_reduction']:.2f}x"]
            rows.append([r["model"], r["ratio"], r["precision"], *cells, f"{r['cosine']:.4f}"])
        header = ["model", "ratio", "precision", "median ms", "p90 ms", "speedup", "MACs reduction", "cosine"]
        lines += [*markdown_table(header, rows, "llrrrrrr"), ""]
    sparse = [r for r in records if r["part"] == "2:4"]
    if sparse:
        rows = [
            [r["model"], r["batch_size"], f"{r['dense_ms']:.3f}", f"{r['sparse_ms']:.3f}",
             f"{r['speedup']:.2f}x", f"{r['layers_swapped']}/{r['layers_sparsified']}",
             f"{r['cosine_vs_dense']:.4f}"]
            if "error" not in r else [r["model"], r["batch_size"], "-", "-", "-", "-", r["error"]]
            for r in sparse
        ]  # fmt: skip
        header = ["model", "batch", "dense fp16 ms", "2:4 ms", "speedup", "layers swapped", "cosine vs dense"]
        lines += [*markdown_table(header, rows, "lrrrrrr"), ""]
    lines.append(
        "Random weights (no downloads): cosine is agreement with PyTorch fp32 (TensorRT) or with the dense "
        "fp16 model (2:4, which changes the weights), not accuracy. INT8 is calibrated on random inputs."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[common_args(quick="ResNet-50 "
                                 "at 0.5 and the MLP stack at batch 16 only")])  # fmt: skip
    ap.add_argument("--ratios", default="0.3,0.5", help="structured ratios for TensorRT (dense always runs)")
    ap.add_argument("--batch-sizes", default="1,16,64", help="batch sizes for 2:4")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--fresh", action="store_true", help="ignore cached records")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA GPU here (torch.cuda.is_available() is False); nothing written")
        return
    torch.set_num_threads(args.threads)
    versions = {"gpu": torch.cuda.get_device_name().replace(" ", "-")}
    try:
        import tensorrt

        versions["tensorrt"] = tensorrt.__version__
    except ImportError as err:
        tensorrt = None
        print(f"TensorRT part skipped: {err} (pip install tensorrt)")
    machine = machine_line(args.threads, **versions)
    ratios = [0.0, 0.5] if args.quick else [0.0, *map(float, args.ratios.split(","))]
    trt_models = ["resnet50"] if args.quick else list(TRT_MODELS)
    batches = [16] if args.quick else [int(b) for b in args.batch_sizes.split(",")]
    sparse_names = ["mlp_stack_4096"] if args.quick else list(sparse_models())
    jobs: list[tuple[str, Callable[[], dict], dict]] = []
    if tensorrt is not None:
        for name in trt_models:
            for ratio in ratios:
                for precision in ("fp16", "int8"):
                    key = f"trt/{name}/{ratio}/{precision}"
                    base = {"part": "tensorrt", "model": name, "ratio": ratio, "precision": precision}
                    jobs.append(
                        (key, lambda n=name, r=ratio, p=precision: measure_trt(n, r, p, args.runs), base)
                    )
    if torch.cuda.get_device_capability() >= (8, 0):
        for name in sparse_names:
            for batch in batches:
                key = f"24/{name}/{batch}"
                base = {"part": "2:4", "model": name, "batch_size": batch}
                jobs.append((key, lambda n=name, b=batch: measure_24(n, b, args.runs), base))
    else:
        print("2:4 part skipped: semi-structured kernels need compute capability >= 8.0")
    records = load_cache(args.fresh)
    for key, job, base in jobs:
        if key in records:
            continue
        try:
            record = job()
        except Exception as err:  # a model TensorRT or the 2:4 kernels refuse is a row, not a crash
            record = base | {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160]}"}
        records[key] = record | {"key": key}
        save_cache(records, machine)
        print(json.dumps(records[key]))
    finish("gpu", markdown(list(records.values()), machine), args, write=not args.quick)


if __name__ == "__main__":
    main()
