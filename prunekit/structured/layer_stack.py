"""Layer stacks of Hugging Face models: removed layers are deleted, the rest re-indexed, the config follows.

A *layer stack* is the one ``nn.ModuleList`` of a model (or of its submodule) with a ``config`` whose
length is ``config.num_hidden_layers`` (``encoder.layer`` of BERT, ``model.layers`` of LLaMA,
``transformer.h`` of GPT-2). Removing some of its layers (:func:`delete_layers`) takes them out of the
list and renumbers the rest: their state-dict names become ``model.layers.0 ...`` and every ``layer_idx``
attribute (which indexes the key/value cache) follows; ``config.num_hidden_layers`` says the new count and
the per-layer config lists (``layer_types``) keep the kept layers' entries, so ``save_pretrained`` output is
what stock transformers builds. The list remembers the original index of each kept layer
(:func:`removed_layers`), so a checkpoint records the removal in the original numbering and replays it on a
freshly built model.

>>> import torch, transformers
>>> cfg = transformers.LlamaConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
...                                intermediate_size=32, vocab_size=50)
>>> m = transformers.LlamaForCausalLM(cfg)
>>> stack_of(m, "model.layers.1")
'model.layers'
>>> _ = delete_layers(m, "model.layers", [1])
>>> m.config.num_hidden_layers, [layer.self_attn.layer_idx for layer in m.model.layers], removed_layers(m)
(2, [0, 1], {'model.layers.1': 'LlamaDecoderLayer'})
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

#: per-layer config lists kept in step with the layers (one entry per layer)
PER_LAYER_FIELDS = ("layer_types",)
_ORIGINAL = "prunekit_original_layers"  # ModuleList attribute: original index of each current layer
_KINDS = "prunekit_removed_kinds"  # ModuleList attribute: {original index: class name} of removed layers


def _stacks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(stack name, the module whose config counts its layers) for every candidate layer stack."""
    found: dict[str, nn.Module] = {}  # a model and its base model share one config and one stack
    for owner_name, owner in model.named_modules():
        count = getattr(getattr(owner, "config", None), "num_hidden_layers", None)
        if not isinstance(count, int) or isinstance(count, bool):
            continue
        prefix = f"{owner_name}." if owner_name else ""
        for name, m in owner.named_modules():
            if isinstance(m, nn.ModuleList) and len(m) == count:
                found.setdefault(prefix + name, owner)
    return list(found.items())


def layer_stack(model: nn.Module) -> str | None:
    """The name of ``model``'s layer stack (module docstring), or None when it has none or several. The
    module with the config may be a submodule (the encoder of a sentence embedder)."""
    found = _stacks(model)
    return found[0][0] if len(found) == 1 else None


def _config_of(model: nn.Module, stack: str) -> Any:
    return next(owner.config for name, owner in _stacks(model) if name == stack)


def stack_of(model: nn.Module, name: str) -> str | None:
    """The layer stack that ``name`` is a layer of, or None."""
    stack = layer_stack(model)
    parent, _, child = name.rpartition(".")
    return stack if stack is not None and parent == stack and child.isdigit() else None


def delete_layers(model: nn.Module, stack: str, positions: Iterable[int]) -> dict[str, Any]:
    """Delete the layers at ``positions`` (current numbering) of ``model.<stack>``, in place; return what
    :func:`restore_layers` needs to undo it."""
    modules: nn.ModuleList = model.get_submodule(stack)
    config = _config_of(model, stack)
    gone = sorted(set(positions))
    if not gone or gone[0] < 0 or gone[-1] >= len(modules):
        raise IndexError(f"{stack} has {len(modules)} layers; cannot delete {gone}")
    undo = {
        "stack": stack,
        "owner": config,
        "modules": dict(modules._modules),
        "original": getattr(modules, _ORIGINAL, None),
        "kinds": dict(getattr(modules, _KINDS, {})),
        "config": {f: getattr(config, f, None) for f in ("num_hidden_layers", *PER_LAYER_FIELDS)},
        "layer_idx": _layer_indices(modules),
    }
    original = list(getattr(modules, _ORIGINAL, None) or range(len(modules)))
    kinds = dict(getattr(modules, _KINDS, {}))
    layers = list(modules)
    kept = [i for i in range(len(layers)) if i not in gone]
    for i in gone:
        kinds[original[i]] = type(layers[i]).__name__
    for new, old in enumerate(kept):
        for m in layers[old].modules():
            if getattr(m, "layer_idx", None) == old:
                m.layer_idx = new
    modules._modules.clear()
    for new, old in enumerate(kept):
        modules._modules[str(new)] = layers[old]
    setattr(modules, _ORIGINAL, [original[i] for i in kept])
    setattr(modules, _KINDS, kinds)
    config.num_hidden_layers = len(kept)
    for field in PER_LAYER_FIELDS:
        values = getattr(config, field, None)
        if isinstance(values, list) and len(values) == len(layers):
            setattr(config, field, [values[i] for i in kept])
    return undo


def _layer_indices(modules: nn.Module) -> list[tuple[nn.Module, int]]:
    return [(m, m.layer_idx) for m in modules.modules() if isinstance(getattr(m, "layer_idx", None), int)]


def restore_layers(model: nn.Module, undo: dict[str, Any]) -> None:
    """Undo :func:`delete_layers` exactly (the same module objects, attributes and config values)."""
    modules: nn.ModuleList = model.get_submodule(undo["stack"])
    modules._modules.clear()
    modules._modules.update(undo["modules"])
    for attr, value in ((_ORIGINAL, undo["original"]), (_KINDS, undo["kinds"])):
        if value:
            setattr(modules, attr, value)
        elif hasattr(modules, attr):
            delattr(modules, attr)
    for field, value in undo["config"].items():
        if value is not None:
            setattr(undo["owner"], field, value)
    for m, idx in undo["layer_idx"]:
        m.layer_idx = idx


def removed_layers(model: nn.Module) -> dict[str, str]:
    """The layers deleted from ``model``'s layer stack, by their original name, with their class name."""
    stack = layer_stack(model)
    if stack is None:
        return {}
    kinds = getattr(model.get_submodule(stack), _KINDS, {})
    return {f"{stack}.{i}": kind for i, kind in sorted(kinds.items())}
