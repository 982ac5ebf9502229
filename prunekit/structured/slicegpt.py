"""The SliceGPT invariant transform of a pre-norm residual stream (``stream="slicegpt"``).

Ashkboos et al. 2024 ("SliceGPT: Compress Large Language Models by Deleting Rows and Columns"): in a
pre-norm transformer every block reads the stream through a norm and adds its output back, so an
orthogonal ``Q`` applied to the whole stream changes nothing once

1. each norm's scale (and LayerNorm's shift) is folded into the linears that read it
   (``W <- W diag(g)``, ``b <- b + W beta``), leaving a scale-free norm;
2. for LayerNorm, the stream is centred: every stream writer's output (``W <- M W``, ``b <- M b`` with
   ``M = I - 11^T/D``) and every embedding is made mean-free, so the mean LayerNorm subtracts is zero and
   the norm becomes an RMSNorm (:class:`CentredNorm`, the same parameters, the mean not taken);
3. ``Q`` (the eigenvectors of the stream's second moment ``sum x x^T`` at every norm input over the
   calibration batches, by falling eigenvalue: one global ``Q``) rotates the stream: embeddings
   ``E <- E Q``, writers ``W <- Q^T W``, readers ``W <- W Q``; an RMSNorm without scale commutes with ``Q``.

The rotated model equals the original up to rounding. Its stream channels are then the principal
directions, and their activation energy is the eigenvalues: the direct stream cut
(:mod:`prunekit.structured.stream`, ``"activation"`` ranking) deletes the weakest ones. The norms then
average over the ``D'`` kept channels, so their weights become ``sqrt(D / D')`` (:func:`rescale`): the
norm of the kept part is what the full norm saw, up to the deleted energy.

What the transform follows is stated per model class (:data:`STREAM_MAPS`, a registry by qualified
class name: :func:`register_stream_map`): Hugging Face ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` /
``MistralForCausalLM`` (RMSNorm, untied head), torchvision's and timm's ``VisionTransformer`` (LayerNorm,
converted; timm's with class-token pooling and no LayerScale).
Any other model is refused in one line naming its class and first norm. The plan records the transform
(``Plan.meta["transform"]``: kind, norms, the LayerNorms made RMSNorm); a saved checkpoint holds the
rotated weights, so load replays only the class change (:func:`replay`) and the cut; ``Q`` is not stored
(recomputable from the original weights and the same calibration batches: ``eigh`` of their moment).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit._inputs import call_model, eval_mode
from prunekit.criteria._data import split_batch
from prunekit.errors import ConfigError, PlanError

KIND = "slicegpt"
REASON = "SliceGPT: the weakest principal directions of the stream deleted"


#: classes whose forward is plain ``layer_norm`` over their weight and bias (made :class:`CentredNorm`)
PLAIN_LAYERNORMS = ("torch.nn.modules.normalization.LayerNorm", "timm.layers.norm.LayerNorm")


def _plain_layernorm(m: nn.Module) -> bool:
    return _qualified(type(m)) in PLAIN_LAYERNORMS


class CentredNorm(nn.LayerNorm):
    """A LayerNorm whose input is known to be mean-free: ``rms_norm(x) * weight + bias`` (no centring).

    The parameters and ``state_dict`` keys are LayerNorm's, so a checkpoint of it loads into a LayerNorm
    model once :func:`replay` has swapped the class.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x, self.normalized_shape, self.weight, self.eps)
        return y if self.bias is None else y + self.bias


@dataclass
class Linear:
    """A weight ``[out, in]`` and its bias (or None), given as the tensors themselves."""

    weight: torch.Tensor
    bias: torch.Tensor | None


@dataclass
class StreamMap:
    """Where a model's residual stream goes: everything the transform rotates."""

    #: (tensor, dim): tensors whose ``dim`` is the stream, written into it (embeddings, class token...)
    embeddings: list[tuple[torch.Tensor, int]]
    writers: list[Linear]  #: linears whose output is added to the stream
    #: (norm module name, the linears reading its output): every norm on the stream
    norms: list[tuple[str, list[Linear]]]
    layernorm: bool  #: the norms are LayerNorms (centred and made :class:`CentredNorm`)
    width: int
    extra: dict[str, Any] = field(default_factory=dict)


STREAM_MAPS: dict[str, Callable[[nn.Module], StreamMap]] = {}


def register_stream_map(class_name: str, build: Callable[[nn.Module], StreamMap]) -> None:
    """Let ``stream="slicegpt"`` follow models of class ``class_name`` with ``build``: the class's qualified
    name (``module.Class``, which wins) or its bare name (any class of that name)."""
    STREAM_MAPS[class_name] = build


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _lin(m: nn.Module) -> Linear:
    return Linear(m.weight, m.bias)


def _hf_causal_lm(model: nn.Module) -> StreamMap:
    body, head = model.model, model.lm_head
    if head.weight is body.embed_tokens.weight:
        raise ConfigError(
            f"stream='slicegpt': {type(model).__name__} ties lm_head to embed_tokens; the rotation needs "
            "them apart (load it with tie_word_embeddings=False)"
        )
    norms, writers = [], []
    for i, layer in enumerate(body.layers):
        a, mlp = layer.self_attn, layer.mlp
        norms.append((f"model.layers.{i}.input_layernorm", [_lin(a.q_proj), _lin(a.k_proj), _lin(a.v_proj)]))
        norms.append((f"model.layers.{i}.post_attention_layernorm", [_lin(mlp.gate_proj), _lin(mlp.up_proj)]))
        writers += [_lin(a.o_proj), _lin(mlp.down_proj)]
    norms.append(("model.norm", [_lin(head)]))
    return StreamMap(
        [(body.embed_tokens.weight, 1)], writers, norms, False, body.embed_tokens.weight.shape[1]
    )


def _torchvision_vit(model: nn.Module) -> StreamMap:
    if not isinstance(getattr(model.heads, "head", None), nn.Linear) or len(model.heads) != 1:
        raise ConfigError(
            "stream='slicegpt': a VisionTransformer with a representation layer is not followed"
        )
    enc = model.encoder
    emb = [(model.conv_proj.weight, 0), (model.class_token, 2), (enc.pos_embedding, 2)]
    if model.conv_proj.bias is not None:
        emb.append((model.conv_proj.bias, 0))
    norms, writers = [], []
    for name, block in enc.layers.named_children():
        att = block.self_attention
        if not att._qkv_same_embed_dim:
            raise ConfigError(f"stream='slicegpt': encoder.layers.{name} has separate q/k/v projections")
        norms.append((f"encoder.layers.{name}.ln_1", [Linear(att.in_proj_weight, att.in_proj_bias)]))
        norms.append((f"encoder.layers.{name}.ln_2", [_lin(block.mlp[0])]))
        writers += [_lin(att.out_proj), _lin(block.mlp[3])]
    norms.append(("encoder.ln", [_lin(model.heads.head)]))
    return StreamMap(emb, writers, norms, True, model.hidden_dim)


def _timm_vit(model: nn.Module) -> StreamMap:
    """timm's ``VisionTransformer`` (DeiT, ViT; class-token pooling, plain pre-norm blocks)."""
    whole = {"norm_pre": model.norm_pre, "fc_norm": model.fc_norm, "patch_embed.norm": model.patch_embed.norm}
    for name, m in whole.items():
        if not isinstance(m, nn.Identity):
            raise ConfigError(
                f"stream='slicegpt': timm's VisionTransformer with a {name} ({type(m).__name__})"
            )
    if getattr(model, "attn_pool", None) is not None or not isinstance(model.head, nn.Linear):
        raise ConfigError(
            "stream='slicegpt': timm's VisionTransformer with attention pooling or no linear head"
        )
    proj = model.patch_embed.proj
    emb = [(proj.weight, 0)] + ([(proj.bias, 0)] if proj.bias is not None else [])
    emb += [
        (t, 2) for t in (model.cls_token, getattr(model, "reg_token", None), model.pos_embed) if t is not None
    ]
    norms, writers = [], []
    for i, block in enumerate(model.blocks):
        scales = [getattr(block, n, None) for n in ("ls1", "ls2")] + [getattr(block.attn, "norm", None)]
        if not all(m is None or isinstance(m, nn.Identity) for m in scales):
            raise ConfigError(
                f"stream='slicegpt': blocks.{i} scales its outputs (LayerScale) or normalises heads"
            )
        norms.append((f"blocks.{i}.norm1", [_lin(block.attn.qkv)]))
        norms.append((f"blocks.{i}.norm2", [_lin(block.mlp.fc1)]))
        writers += [_lin(block.attn.proj), _lin(block.mlp.fc2)]
    norms.append(("norm", [_lin(model.head)]))
    return StreamMap(emb, writers, norms, True, model.embed_dim)


for _name in ("llama.modeling_llama.Llama", "qwen2.modeling_qwen2.Qwen2", "mistral.modeling_mistral.Mistral"):
    register_stream_map(f"transformers.models.{_name}ForCausalLM", _hf_causal_lm)
# by module too: timm's VisionTransformer has the same class name and another layout
register_stream_map("torchvision.models.vision_transformer.VisionTransformer", _torchvision_vit)
register_stream_map("timm.models.vision_transformer.VisionTransformer", _timm_vit)


def stream_map(model: nn.Module) -> StreamMap:
    """The :class:`StreamMap` of ``model``, or one ConfigError naming what the transform cannot follow."""
    cls = type(model)
    build = STREAM_MAPS.get(_qualified(cls)) or STREAM_MAPS.get(cls.__name__)
    if build is None:
        kinds = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)
        norm = next(
            (f"{n} ({type(m).__name__})" for n, m in model.named_modules() if isinstance(m, kinds)), None
        )
        named = sorted(
            f"{k.rpartition('.')[2]} ({k.partition('.')[0]})" if "." in k else k for k in STREAM_MAPS
        )
        bare = {k.rpartition(".")[2] for k in STREAM_MAPS}
        raise ConfigError(
            f"stream='slicegpt' follows the pre-norm residual stream of {', '.join(named)}; "
            f"{_qualified(cls) if cls.__name__ in bare else cls.__name__} is not one of them"
            + (f" (its first norm is {norm}: register a map with register_stream_map)" if norm else "")
            + "; stream=True cuts the stream directly"
        )
    return build(model)


def _tensors(smap: StreamMap, model: nn.Module) -> list[torch.Tensor]:
    out = [t for t, _ in smap.embeddings]
    for lin in [*smap.writers, *(r for _, rs in smap.norms for r in rs)]:
        out += [lin.weight] + ([lin.bias] if lin.bias is not None else [])
    for name, _ in smap.norms:
        out += [p for p in model.get_submodule(name).parameters(recurse=False)]
    return out


def _fold(model: nn.Module, smap: StreamMap) -> None:
    """Step 1: every norm's scale and shift into its readers; the norm left with weight 1, bias 0."""
    for name, readers in smap.norms:
        norm = model.get_submodule(name)
        g = norm.weight.detach().double()
        beta = getattr(norm, "bias", None)
        for r in readers:
            w = r.weight.detach().double()
            if beta is not None and bool(beta.detach().any()):
                if r.bias is None:
                    raise ConfigError(
                        f"stream='slicegpt': {name} has a shift but a linear reading it no bias"
                    )
                r.bias.data.copy_(r.bias.detach().double() + w @ beta.detach().double())
            r.weight.data.copy_(w * g)
        norm.weight.data.fill_(1.0)
        if beta is not None:
            beta.data.zero_()


def _centre(model: nn.Module, smap: StreamMap, swapped: list[tuple[nn.Module, type]]) -> list[str]:
    """Step 2 (LayerNorm): a mean-free stream, and the LayerNorms made :class:`CentredNorm` (each added to
    ``swapped`` with its own class, for the undo)."""
    for t, dim in smap.embeddings:
        t.data.sub_(t.detach().double().mean(dim, keepdim=True).to(t.dtype))
    for w in smap.writers:
        w.weight.data.sub_(w.weight.detach().double().mean(0, keepdim=True).to(w.weight.dtype))
        if w.bias is not None:
            w.bias.data.sub_(w.bias.detach().double().mean())
    names = []
    for name, _ in smap.norms:
        norm = model.get_submodule(name)
        swapped.append((norm, type(norm)))
        norm.__class__ = CentredNorm
        names.append(name)
    return names


def _moment(model: nn.Module, smap: StreamMap, data: Any) -> torch.Tensor:
    """``sum x x^T`` (float64) of the stream at every norm input over the calibration batches."""
    if data is None:
        raise ConfigError(
            "stream='slicegpt' computes a PCA of the stream: pass data=<iterable of input batches>"
        )
    acc = torch.zeros(smap.width, smap.width, dtype=torch.float64)

    def hook(_m: nn.Module, args: tuple) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        if x.shape[-1] != smap.width:
            raise ConfigError(f"the stream is {x.shape[-1]} wide at a norm, the map says {smap.width}")
        acc.add_(x.T @ x)

    handles = [model.get_submodule(n).register_forward_pre_hook(hook) for n, _ in smap.norms]
    n = 0
    try:
        with eval_mode(model), torch.no_grad():
            for n, batch in enumerate(data, 1):
                inputs, _ = split_batch(batch)
                try:
                    call_model(model, inputs)
                except ConfigError:
                    raise
                except Exception as exc:
                    why = f"{type(exc).__name__}: {exc}"
                    msg = f"calibration batch {n - 1} does not run through the model: {why}"
                    raise ConfigError(msg) from None
    finally:
        for h in handles:
            h.remove()
    if n == 0:
        raise ConfigError("stream='slicegpt' got calibration data with no batches")
    return acc


def _rotate(smap: StreamMap, q: torch.Tensor) -> None:
    """Step 3: the stream rotated by ``q`` (``x -> q^T x``)."""
    for t, dim in smap.embeddings:
        r = torch.movedim(t.detach().double(), dim, -1) @ q
        t.data.copy_(torch.movedim(r, -1, dim))
    for w in smap.writers:
        w.weight.data.copy_(q.T @ w.weight.detach().double())
        if w.bias is not None:
            w.bias.data.copy_(q.T @ w.bias.detach().double())
    for _, readers in smap.norms:
        for r in readers:
            r.weight.data.copy_(r.weight.detach().double() @ q)


@dataclass
class Transformed:
    """A model after :func:`transform`: what the plan records, and how to put the model back."""

    record: dict[str, Any]
    eigenvalues: torch.Tensor  #: of the stream's second moment, falling (mean per position and site)
    _backup: list[tuple[torch.Tensor, torch.Tensor]]
    _swapped: list[tuple[nn.Module, type]]  #: the norms made CentredNorm, with their own classes

    def into_plan(self, plan: Any, scored: Any = None) -> Any:
        """Plan transform: the record under ``meta["transform"]`` and the deletion among the reasons the
        plan is approximate."""
        plan.meta["transform"] = dict(self.record)
        if plan.removed_units and REASON not in plan.meta.setdefault("approximate", []):
            plan.meta["approximate"].append(REASON)
        return plan

    def undo(self) -> None:
        """The model's weights and norm classes as they were before :func:`transform`."""
        for t, old in self._backup:
            t.data.copy_(old)
        for m, cls in self._swapped:
            m.__class__ = cls


def transform(model: nn.Module, data: Any) -> Transformed:
    """Fold, centre (LayerNorm) and rotate ``model``'s stream in place (see the module docstring).

    On any error the model is put back as it was and the error raised (ConfigError for bad input).
    """
    smap = stream_map(model)
    for name, _ in smap.norms if smap.layernorm else ():  # before any weight changes: one clear line
        norm = model.get_submodule(name)
        if not _plain_layernorm(norm):
            raise ConfigError(f"stream='slicegpt': {name} is a {_qualified(type(norm))}, not a LayerNorm")
    tensors = _tensors(smap, model)
    backup = [(t, t.detach().clone()) for t in {id(t): t for t in tensors}.values()]
    swapped: list[tuple[nn.Module, type]] = []
    done = Transformed({}, torch.zeros(0), backup, swapped)
    try:
        with torch.no_grad():
            _fold(model, smap)
            centred = _centre(model, smap, swapped) if smap.layernorm else []
            moment = _moment(model, smap, data)
            evals, evecs = torch.linalg.eigh(moment)
            order = torch.argsort(evals, descending=True)
            _rotate(smap, evecs[:, order])
    except BaseException:
        done.undo()
        raise
    done.record = {"kind": KIND, "norms": [n for n, _ in smap.norms], "rmsnorm": centred, "width": smap.width}
    done.eigenvalues = evals[order]
    return done


def rescale(model: nn.Module, record: dict[str, Any]) -> None:
    """After the cut: each norm's weight ``sqrt(D / D')`` (it averages over the ``D'`` kept channels)."""
    with torch.no_grad():
        for name in record["norms"]:
            w = model.get_submodule(name).weight
            w.data.fill_(math.sqrt(record["width"] / w.shape[0]))


def replay(model: nn.Module, plan_meta: dict[str, Any]) -> list[tuple[nn.Module, type]]:
    """A recorded transform's structure on a freshly built ``model``: its LayerNorms made
    :class:`CentredNorm` (the weights, already rotated, come from the checkpoint). Returns the swapped
    modules with their own classes (for undo); PlanError when a recorded norm is missing or not a
    LayerNorm."""
    record = plan_meta.get("transform")
    if not record:
        return []
    if record.get("kind") != KIND:
        raise PlanError(f"unknown stream transform {record.get('kind')!r}")
    swapped = []
    for name in record.get("rmsnorm", []):
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise PlanError(f"the plan's transform names a norm {name!r} the model lacks") from None
        if type(m) is CentredNorm:
            continue
        if not _plain_layernorm(m):
            raise PlanError(f"the plan's transform makes {name!r} an RMSNorm, but it is a {type(m).__name__}")
        swapped.append((m, type(m)))
        m.__class__ = CentredNorm
    return swapped
