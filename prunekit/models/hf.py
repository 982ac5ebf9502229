"""Hugging Face transformers models as ``hf:`` specs, offline: from a config, inline JSON or a local
directory.

Spec forms (the text after ``hf:``):

- ``path/to/config.json`` — a config file with ``model_type`` (and optionally ``architectures``: the class
  to build, e.g. ``["GPT2LMHeadModel"]``; default ``AutoModel``); weights are freshly initialised.
- ``{"model_type": "bert", "hidden_size": 32, ...}`` — the same config, inline.
- ``path/to/dir`` — a local pretrained directory (``config.json`` + weights), loaded with
  ``from_pretrained(..., local_files_only=True)``; nothing is downloaded.

Pruning updates the attention modules' head attributes and, where every layer agrees, the config
(``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``, ...): see
:mod:`prunekit.graph.rules_attn`. Per-layer widths a config cannot express live in the plan, which
:func:`prunekit.load` replays on the model built from the same spec.

>>> m = load_hf('{"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, '
...             '"num_attention_heads": 4, "intermediate_size": 64, "vocab_size": 50}')
>>> type(m).__name__, m.config.num_attention_heads
('BertModel', 4)
>>> load_hf(infer_hf(m).removeprefix("hf:")).config.intermediate_size
64
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._inputs import ExampleInputs
from prunekit.errors import ConfigError, ModelLoadError
from prunekit.models.family import Family, register_family
from prunekit.models.record import same_architecture


def import_transformers() -> Any:
    """The ``transformers`` package, its logging quietened; :class:`ModelLoadError` when it is missing."""
    try:
        import transformers
    except ImportError as err:
        raise ModelLoadError('hf:CONFIG specs need transformers: pip install "prunekit[hf]"') from err
    transformers.logging.set_verbosity_error()
    return transformers


def _read_config(text: str) -> dict[str, Any]:
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ModelLoadError(f"hf: inline config is not valid JSON: {err}") from err
    else:
        path = Path(text)
        if not path.is_file():
            raise ModelLoadError(f"hf: no config file or model directory {text!r}")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ModelLoadError(f"hf: cannot read config {path}: {err}") from err
    if not isinstance(data, dict) or "model_type" not in data:
        raise ModelLoadError('hf: a config needs "model_type", e.g. {"model_type": "bert", ...}')
    return data


def _model_class(tf: Any, architectures: list[str] | None) -> Any:
    name = (architectures or [None])[0]
    if name is None:
        return tf.AutoModel
    cls = getattr(tf, name, None)
    if not isinstance(cls, type) or not issubclass(cls, nn.Module):
        raise ModelLoadError(f"hf: transformers has no model class {name!r} (config 'architectures')")
    return cls


def load_hf(spec: str) -> nn.Module:
    """Build a transformers model from ``spec`` (see the module docstring); eval mode, CPU, offline.

    >>> load_hf('{"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2, "vocab_size": 40, '
    ...         '"architectures": ["GPT2LMHeadModel"]}').config.n_head
    2
    """
    tf = import_transformers()
    directory = Path(spec)
    if not spec.lstrip().startswith("{") and directory.is_dir():
        if not (directory / "config.json").is_file():
            raise ModelLoadError(f"hf: {spec} has no config.json")
        arch = json.loads((directory / "config.json").read_text()).get("architectures")
        try:
            model = _model_class(tf, arch).from_pretrained(str(directory), local_files_only=True)
        except OSError as err:
            raise ModelLoadError(f"hf: cannot load {spec}: {str(err).splitlines()[0]}") from err
        return model.eval()
    data = _read_config(spec)
    arch = data.pop("architectures", None)
    model_type = data.pop("model_type")
    try:
        config = tf.AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError) as err:
        raise ModelLoadError(f"hf: unknown model_type {model_type!r}: {err}") from err
    config.architectures = arch
    cls = _model_class(tf, arch)
    torch.manual_seed(0)  # from_config initialises randomly: the same spec builds the same weights
    model = cls.from_config(config) if cls is tf.AutoModel else cls(config)
    return model.eval()


def example_inputs(model: nn.Module, batch: int = 1, seq: int = 8) -> dict[str, torch.Tensor]:
    """Example inputs for a transformers model: ``input_ids`` for text, ``pixel_values`` for vision.

    >>> m = load_hf('{"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, '
    ...             '"num_attention_heads": 2, "intermediate_size": 32, "vocab_size": 50}')
    >>> tuple(example_inputs(m)["input_ids"].shape)
    (1, 8)
    """
    config = model.config
    if getattr(model, "main_input_name", "input_ids") == "pixel_values":
        size = int(getattr(config, "image_size", 224))
        channels = int(getattr(config, "num_channels", 3))
        return {
            "pixel_values": torch.randn(
                batch, channels, size, size, generator=torch.Generator().manual_seed(0)
            )
        }
    vocab = int(getattr(config, "vocab_size", 100))
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids}


def batch_seq(shape: tuple[int, ...], prefix: str = "hf") -> tuple[int, int]:
    """``(BATCH, SEQ)`` from a two-number ``--input-shape``; a ConfigError for any other length.

    >>> batch_seq((1, 16))
    (1, 16)
    """
    if len(shape) != 2:
        text = ",".join(str(d) for d in shape)
        raise ConfigError(f"{prefix}: models take --input-shape BATCH,SEQ (e.g. 1,16), got {text}")
    return shape[0], shape[1]


def _family_inputs(model: nn.Module, shape: tuple[int, ...]) -> ExampleInputs:
    batch, seq = batch_seq(shape)
    return example_inputs(model, batch=batch, seq=seq)


def infer_hf(model: nn.Module) -> str | None:
    """``hf:{...}``: the model's own ``config`` as inline JSON (with its class as ``architectures``), if it
    builds the same architecture; else None. The recorded spec needs no file beside the checkpoint."""
    config = getattr(model, "config", None)
    if not type(model).__module__.startswith("transformers."):  # a model of transformers' own classes only
        return None
    tf = import_transformers()
    if not isinstance(model, tf.PreTrainedModel) or not isinstance(config, tf.PretrainedConfig):
        return None
    data = config.to_diff_dict()
    data.pop("transformers_version", None)
    data["model_type"] = config.model_type
    data["architectures"] = [type(model).__name__]
    try:
        spec = json.dumps(data, sort_keys=True)
    except TypeError:  # a config holding something JSON cannot state
        return None
    return f"hf:{spec}" if same_architecture(model, lambda: load_hf(spec)) else None


FAMILY = register_family(
    Family(
        "hf",
        load_hf,
        form="hf:CONFIG",
        requires="transformers",
        extra="hf",
        input_shape=lambda _: (1, 8),  # BATCH,SEQ of token ids (vision models: batch only)
        example_inputs=_family_inputs,
        local_paths=True,
        infer_spec=infer_hf,
    )
)
