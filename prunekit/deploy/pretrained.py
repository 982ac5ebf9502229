"""Pruned transformers as directories that stock tools load: ``save_pretrained`` and sentence-transformers.

:func:`save_pretrained` writes a pruned transformers model so that ``AutoModel.from_pretrained(dir)`` (or the
model's own class) builds it with no prunekit import: the config fields are set from the tensors
(``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``intermediate_size``, ``hidden_size``,
``vocab_size``, ``num_hidden_layers`` and ``layer_types``), layers removed by :func:`prunekit.prune_layers`
are gone and the rest re-indexed. Before anything is written, the model's class is built from that config on
the meta device and every tensor shape compared; after writing, the directory is loaded back with
``from_pretrained`` and its outputs compared with the pruned model's. :func:`save_sentence_transformer` does
the same for a :class:`~prunekit.models.sentence.SentenceEmbedder`: ``SentenceTransformer(dir).encode(...)``
gives its embeddings (mean pooling, L2 normalisation; its tokenizer, trimmed by a vocabulary cut too).

A config holds one value per field for every layer, and transformers 5 has no per-layer width field for these
families (BERT's ``pruned_heads`` is gone; per-layer lists exist only for other architectures, e.g. Gemma 3n's
``intermediate_size``). Widths that differ per layer, and heads of classes that size a head as
``hidden_size / num_attention_heads`` (BERT, RoBERTa, DistilBERT, GPT-2), are refused with one
:class:`~prunekit.errors.ExportError` line naming the tensor and the reason; nothing is written and the model
is not changed. :func:`prunekit.save` keeps any pruned model.

>>> import torch, transformers, prunekit as pk
>>> cfg = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
...     num_key_value_heads=2, intermediate_size=64, vocab_size=100)
>>> m = transformers.LlamaForCausalLM(cfg).eval()
>>> _ = pk.prune(m, {"input_ids": torch.randint(0, 100, (1, 8))}, 0.5, measure=False)
>>> import tempfile; out = tempfile.mkdtemp() + "/hf"
>>> saved = save_pretrained(m, out)
>>> saved.config["num_attention_heads"], saved.config["num_key_value_heads"], saved.config["head_dim"]
(2, 1, 8)
>>> saved.max_abs_diff < 1e-5
True
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit._atomic import atomic_dir
from prunekit._inputs import ExampleInputs
from prunekit._jsondata import JsonData
from prunekit.errors import ConfigError, ExportError
from prunekit.graph.heads import HEAD_DIM_ATTRS
from prunekit.measure.params import count_params
from prunekit.models.hf import example_inputs as hf_inputs
from prunekit.sparse.masks import remove_masks
from prunekit.structured.layer_stack import stack_of
from prunekit.structured.layers import SkipBlock, skip_blocks
from prunekit.structured.oracle import run_outputs

#: the config fields a pruned model's widths and vocabulary size live in (reported by SavedPretrained)
WIDTH_FIELDS = (
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "num_hidden_layers",
    "vocab_size",
)
#: the ``--format`` names: the family prefix whose stock tools load the directory
FORMATS = ("hf", "sentence")


@dataclass
class SavedPretrained(JsonData):
    """What :func:`save_pretrained` / :func:`save_sentence_transformer` wrote, and how close the reload is."""

    path: str
    format: str
    model_class: str
    config: dict[str, Any] = field(default_factory=dict)  # the width fields of the written config
    changed: dict[str, list] = field(default_factory=dict)  # fields the writer set: [before, after]
    layers: int = 0
    params: int = 0
    max_abs_diff: float = 0.0  # between the pruned model and the directory loaded back by the stock loader


def _transformers() -> Any:
    from prunekit.models.hf import import_transformers as load

    return load()


def _check_target(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} is a file; give a directory to write")
    if directory.is_dir() and any(directory.iterdir()):
        raise ConfigError(f"{directory} is not empty; choose a new or empty directory")


def _without_placeholders(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with :class:`SkipBlock` layers of its layer stack deleted (stock transformers has
    no placeholder layer); a SkipBlock anywhere else is refused."""
    work = copy.deepcopy(model)
    blocks = {n: m.replaced for n, m in work.named_modules() if isinstance(m, SkipBlock)}
    stray = [n for n in blocks if stack_of(work, n) is None]
    if stray:
        raise ExportError(
            f"{stray[0]} was removed by layer pruning but is not a layer of the model's layer stack: "
            "stock transformers cannot build the model without it; use prunekit.save"
        )
    if blocks:
        skip_blocks(work, blocks)
    return work


def _head_dim(model: nn.Module) -> int | None:
    """The one head width of the attention modules (heads are removed whole), or None."""
    found = {
        getattr(m, a)
        for m in model.modules()
        for a in HEAD_DIM_ATTRS
        if isinstance(getattr(m, a, None), int) and not isinstance(getattr(m, a), bool)
    }
    return found.pop() if len(found) == 1 else None


def stock_config(model: nn.Module) -> tuple[Any, dict[str, list]]:
    """The config that makes ``type(model)`` hold ``model``'s tensor shapes, and the fields it changes.

    ``hidden_size`` and ``vocab_size`` follow the input embedding's width and rows, and ``head_dim`` is
    stated when it is no longer ``hidden_size / num_attention_heads``; head counts, FFN widths and the layer
    count are already kept up to date by :func:`prunekit.prune` and :func:`prunekit.prune_layers` when every
    layer agrees.
    """
    config = copy.deepcopy(model.config)
    changes: dict[str, list] = {}

    def put(name: str, value: Any) -> None:
        old = getattr(config, name, None)
        if old != value:
            setattr(config, name, value)
            changes[name] = [old, value]

    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(embedding, nn.Embedding) and isinstance(getattr(config, "hidden_size", None), int):
        put("hidden_size", embedding.embedding_dim)
    if isinstance(embedding, nn.Embedding) and isinstance(getattr(config, "vocab_size", None), int):
        put("vocab_size", embedding.num_embeddings)  # a vocabulary cut (prunekit.models.vocab)
    heads, hidden, dim = (
        getattr(config, "num_attention_heads", None),
        getattr(config, "hidden_size", None),
        None,
    )
    if isinstance(heads, int) and isinstance(hidden, int):
        dim = _head_dim(model)
        if dim is not None and (getattr(config, "head_dim", None) is not None or heads * dim != hidden):
            put("head_dim", dim)
    return config, changes


def _layer_key(name: str) -> str:
    return re.sub(r"\.\d+\.", ".*.", name)


def _refusal(model: nn.Module, ours: dict, theirs: dict, changes: dict) -> str | None:
    """Why ``type(model)`` built from the new config does not hold ``model``'s tensors; None if it does."""
    wrong = [n for n in ours if n in theirs and tuple(ours[n].shape) != tuple(theirs[n].shape)]
    names = sorted(set(ours) ^ set(theirs))
    if not wrong and not names:
        return None
    cls = type(model).__name__
    if not wrong:
        return f"{cls} built from the pruned config has different tensor names ({names[0]})"
    name = wrong[0]
    shapes = {tuple(ours[n].shape) for n in ours if _layer_key(n) == _layer_key(name)}
    head = f"{name} is {tuple(ours[name].shape)} but {cls} builds {tuple(theirs[name].shape)}"
    if len(shapes) > 1:
        why = (
            f"widths differ per layer and {type(model.config).__name__} has one value for all layers "
            "(transformers has no per-layer width field for this model)"
        )
    elif "head_dim" in changes:
        why = f"{cls} sizes a head as hidden_size / num_attention_heads, so pruned heads cannot be stated"
    else:
        why = f"{type(model.config).__name__} has no field for this width"
    return f"{head}: {why}"


def _check_stock_shapes(work: nn.Module, config: Any, changes: dict, what: str) -> None:
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            built = type(work)(config)
    except Exception as err:  # the class refuses the config (e.g. heads that do not divide hidden_size)
        raise ExportError(
            f"{what}: {type(work).__name__} cannot be built from the pruned config: {err}"
        ) from err
    why = _refusal(work, work.state_dict(), built.state_dict(), changes)
    if why is not None:
        raise ExportError(f"{what}: {why}; save with prunekit.save instead (prunekit.load rebuilds it)")


def _compare(a: Any, b: Any) -> float:
    """Max abs difference between two models' outputs (every output tensor)."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            return float("inf")
        if x.is_floating_point():
            worst = max(worst, float((x.double() - y.double()).abs().max()) if x.numel() else 0.0)
        elif not torch.equal(x, y):
            return float("inf")
    return worst


def _tolerance(outputs: list[torch.Tensor]) -> float:
    peak = max((float(t.abs().max()) for t in outputs if t.is_floating_point() and t.numel()), default=1.0)
    return 1e-4 * max(1.0, peak)


def _empty(directory: Path) -> bool:
    return not any(directory.iterdir())


def _write_hf(
    model: nn.Module, out: Path, example_inputs: ExampleInputs | None, what: str
) -> SavedPretrained:
    """Write the stock directory of ``model`` into ``out`` (which exists), verified by a stock reload."""
    tf = _transformers()
    if not isinstance(model, tf.PreTrainedModel):
        raise ConfigError(f"{what}: save_pretrained needs a transformers model, got {type(model).__name__}")
    work = _without_placeholders(model)
    config, changes = stock_config(work)
    _check_stock_shapes(work, config, changes, what)
    work.config = config
    if any(parametrize.is_parametrized(m) for m in work.modules()):
        remove_masks(work)  # masks baked into the weights (the copy's)
    work.save_pretrained(str(out))
    back = type(model).from_pretrained(str(out), local_files_only=True).eval()
    x = example_inputs if example_inputs is not None else hf_inputs(model)
    ref = run_outputs(model, x)
    diff = _compare(ref, run_outputs(back, x))
    if not diff <= _tolerance(ref):
        raise ExportError(f"{what}: the reloaded model differs from the pruned one (max |diff| {diff:.3g})")
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    fields = {f: getattr(config, f) for f in WIDTH_FIELDS if getattr(config, f, None) is not None}
    return SavedPretrained(
        "", "hf", type(model).__name__, fields, changes, layers, int(count_params(back).total), diff
    )


def save_pretrained(
    model: nn.Module, directory: str | os.PathLike, *, example_inputs: ExampleInputs | None = None
) -> SavedPretrained:
    """Write a pruned transformers ``model`` as a ``save_pretrained`` directory stock transformers loads.

    ``example_inputs`` (default: token ids or pixels from the config) are run through ``model`` and through
    the directory loaded back with ``from_pretrained``; the result says their max abs difference. Refused
    with one :class:`~prunekit.errors.ExportError` line when the config cannot state the pruned widths
    (module docstring): nothing is written, ``model`` is never changed. ``directory`` must be new or empty;
    it is written atomically.
    """
    directory = Path(directory)
    _check_target(directory)
    what = f"cannot write {directory}"
    saved = atomic_dir(directory, lambda tmp: _write_hf(model, tmp, example_inputs, what), replaceable=_empty)
    saved.path = str(directory)
    return saved


def save_sentence_transformer(
    embedder: nn.Module, directory: str | os.PathLike, *, sentences: list[str] | None = None
) -> SavedPretrained:
    """Write a pruned :class:`~prunekit.models.sentence.SentenceEmbedder` as a sentence-transformers
    directory: ``SentenceTransformer(directory).encode(sentences)`` gives ``embedder.embed(sentences)``.

    The encoder is written as by :func:`save_pretrained` (same refusals), with the tokenizer, mean pooling
    and normalisation modules and ``max_seq_length``; the result's ``max_abs_diff`` compares the embeddings
    of ``sentences`` (default: two fixed sentences) from the directory loaded back by sentence-transformers.
    """
    from prunekit.models.sentence import SentenceEmbedder

    directory = Path(directory)
    what = f"cannot write {directory}"
    if not isinstance(embedder, SentenceEmbedder) or embedder.tokenizer is None:
        raise ConfigError(
            f"{what}: a sentence-transformers directory needs a SentenceEmbedder with its tokenizer"
        )
    _check_target(directory)
    sentences = sentences or ["A cat sat on the mat.", "Pruned models still have to load in stock tools."]
    saved, diff = atomic_dir(
        directory, lambda tmp: _write_sentence(embedder, tmp, sentences, what), replaceable=_empty
    )
    saved.path, saved.format, saved.max_abs_diff = str(directory), "sentence", diff
    return saved


def _write_sentence(
    embedder: Any, tmp: Path, sentences: list[str], what: str
) -> tuple[SavedPretrained, float]:
    """Fill ``tmp`` with the sentence-transformers directory; the encoder goes through :func:`_write_hf`."""
    enc = tmp / "encoder"
    enc.mkdir()
    tokens = embedder.tokenize(sentences[:2])
    inputs = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
    saved = _write_hf(embedder.encoder, enc, inputs, what)
    embedder.tokenizer.save_pretrained(str(enc))
    out = tmp / "st"
    _sentence_transformer(enc, embedder).save(str(out))
    shutil.rmtree(enc)
    back = _load_sentence_transformer(out)
    diff = _compare([embedder.embed(sentences)], [back.encode(sentences, convert_to_tensor=True)])
    if not diff <= 1e-4:
        raise ExportError(f"{what}: the reloaded sentence-transformers model differs (max |diff| {diff:.3g})")
    for child in out.iterdir():
        child.rename(tmp / child.name)
    out.rmdir()
    return saved, diff


def _sentence_transformer(encoder_dir: Path, embedder: nn.Module) -> Any:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    width = int(embedder.encoder.get_input_embeddings().embedding_dim)
    modules = [Transformer(str(encoder_dir)), Pooling(width, pooling_mode="mean")]
    proj = getattr(embedder, "projection", None)
    if proj is not None:  # SentenceEmbedder.projection: a Dense module with no activation
        from sentence_transformers.base.modules import Dense

        bias = proj.bias.detach().clone() if proj.bias is not None else None
        dense = Dense(
            proj.in_features,
            proj.out_features,
            bias=bias is not None,
            activation_function=nn.Identity(),
            init_weight=proj.weight.detach().clone(),
            init_bias=bias,
        )
        modules.append(dense)  # fmt: skip
    modules.append(Normalize())
    st = SentenceTransformer(modules=modules, device="cpu")
    st.max_seq_length = embedder.max_length
    return st


def _load_sentence_transformer(path: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


_STOCK_SCRIPT = """
import json, sys
import torch, safetensors.torch as st
args = json.loads(sys.argv[1])
out = {}
if args["kind"] == "sentence":
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(args["dir"], device="cpu")
    out["output"] = model.encode(args["sentences"], convert_to_tensor=True)
else:
    import transformers
    transformers.logging.set_verbosity_error()
    model = getattr(transformers, args["auto"]).from_pretrained(args["dir"], local_files_only=True).eval()
    x = st.load_file(args["inputs"])
    with torch.no_grad():
        out["output"] = model(**x)[0].contiguous()
        if args["generate"]:
            ids = x["input_ids"][:1]
            out["generated"] = model.generate(ids, max_new_tokens=args["generate"], do_sample=False)
out["prunekit_imported"] = torch.tensor(int(any(m.split(".")[0] == "prunekit" for m in sys.modules)))
st.save_file(out, args["out"])
"""


def stock_outputs(
    directory: str | os.PathLike,
    inputs: dict[str, torch.Tensor] | list[str],
    *,
    auto_class: str = "AutoModel",
    generate: int = 0,
    timeout: float = 600,
) -> dict[str, torch.Tensor]:
    """Load ``directory`` with stock tools in a fresh Python process that never imports prunekit, and run it.

    ``inputs``: keyword tensors for ``transformers.<auto_class>.from_pretrained(directory)`` (the result's
    ``output`` is the model's first output: ``last_hidden_state`` or ``logits``; ``generate=N`` adds
    ``generated``, N greedy tokens after the first row of ``input_ids``), or sentences for
    ``SentenceTransformer(directory).encode`` (``output``: the embeddings). ``prunekit_imported`` is 1 if
    the process imported prunekit after all. A failing load is an ExportError with the process's last line.
    """
    import json
    import subprocess
    import sys

    import safetensors.torch

    with tempfile.TemporaryDirectory(prefix="pk-stock-") as tmp:
        args: dict[str, Any] = {"dir": str(Path(directory).resolve()), "out": f"{tmp}/out.safetensors"}
        args |= {"auto": auto_class, "generate": generate, "inputs": f"{tmp}/in.safetensors"}
        if isinstance(inputs, dict):
            args["kind"] = "hf"
            safetensors.torch.save_file({k: v.contiguous() for k, v in inputs.items()}, args["inputs"])
        else:
            args |= {"kind": "sentence", "sentences": list(inputs)}
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run(
            [sys.executable, "-c", _STOCK_SCRIPT, json.dumps(args)],
            cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ExportError(f"stock tools cannot load {directory}: {last}")
        return safetensors.torch.load_file(args["out"])
