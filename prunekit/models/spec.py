"""Turn a model spec string into an ``nn.Module``, and make example inputs for it.

A spec is one of::

    torchvision:NAME          a torchvision builder, random weights     torchvision:resnet18
    module.path:factory       a callable returning an nn.Module         mypkg.models:build_net
    path/to/file.pt           a state_dict (with arch=...) or, only with trust_pickle=True, a pickled module
    path/to/file.safetensors  a state_dict (with arch=...)
    path/to/file.pksparse     a state_dict in prunekit's compressed sparse format (with arch=...)
    path/to/checkpoint/       a directory written by prunekit.save (spec + plans + safetensors weights)

Prefixed forms are looked up in ``LOADERS`` by the text before the first ``:`` (a later release adds
``ultralytics:`` and ``hf:``); nothing is recognised by substrings. Every failure is a one-line
:class:`~prunekit.errors.ModelLoadError` (or :class:`~prunekit.errors.ConfigError` for a bad input shape).

Files are read with ``torch.load(weights_only=True)``, which cannot run code. A file that needs more
(a pickled whole module) is refused unless ``trust_pickle=True``: unpickling runs code from the file.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from prunekit._inputs import ExampleInputs, call_model
from prunekit.errors import ConfigError, ModelLoadError

STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".pksparse")
SPEC_FORMS = (
    "torchvision:NAME, module.path:factory, a .pt/.pth/.bin/.safetensors/.pksparse file or a prunekit "
    "checkpoint dir"
)


def load_model(spec: str, *, arch: str | None = None, trust_pickle: bool = False) -> nn.Module:
    """Build the model that ``spec`` names, in eval mode, on the CPU.

    ``arch`` (a ``torchvision:NAME`` or ``module.path:factory`` spec) builds the module that a state_dict file
    is loaded into (``strict=True``). ``trust_pickle=True`` allows unpickling a whole module from a file.

    >>> load_model("torchvision:resnet18").fc.out_features
    1000
    >>> load_model("torchvision:alexnett")
    Traceback (most recent call last):
    ...
    prunekit.errors.ModelLoadError: unknown torchvision model 'alexnett'; close names: alexnet
    """
    prefix, _, rest = spec.partition(":")
    if prefix in LOADERS:
        _reject_arch(spec, arch)
        model = LOADERS[prefix](rest)
    elif (Path(spec) / "prunekit.json").is_file():
        _reject_arch(spec, arch)
        from prunekit.deploy.checkpoint import load  # late: the checkpoint module builds models with this one

        model = load(spec)
    elif _is_file_spec(spec):
        model = _load_file(Path(spec), arch=arch, trust_pickle=trust_pickle)
    elif _is_factory_spec(spec):
        _reject_arch(spec, arch)
        model = _load_factory(spec)
    else:
        raise ModelLoadError(f"cannot tell what model {spec!r} is; use {SPEC_FORMS}{_torchvision_hint(spec)}")
    return model.eval()


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse ``"1,3,224,224"`` into ``(1, 3, 224, 224)``.

    >>> parse_input_shape("1,3,224,224")
    (1, 3, 224, 224)
    """
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ConfigError(
            f"input shape must be positive integers separated by commas like 1,3,224,224, got {text!r}"
        )
    return tuple(int(part) for part in parts)


def example_inputs_for(
    spec_or_model: str | nn.Module, input_shape: tuple[int, ...] | None = None, model: nn.Module | None = None
) -> ExampleInputs:
    """Seeded random inputs to run the model on: of ``input_shape`` if given, else the spec's default shape.

    A float tensor, except for ``hf:`` models (and checkpoints of them), which get the dict of token ids (or
    pixel values) :func:`prunekit.models.hf.example_inputs` builds for ``model``; their shape is
    ``BATCH,SEQ`` (default 1,8). Defaults exist only where the shape is known for sure: torchvision
    classifiers (1x3x224x224; inception_v3 1x3x299x299), timm models, ultralytics models. Anything else
    needs ``input_shape``; the error says so.

    >>> example_inputs_for("torchvision:resnet18").shape
    torch.Size([1, 3, 224, 224])
    >>> example_inputs_for("mypkg:build", (2, 16)).shape
    torch.Size([2, 16])
    """
    if input_shape is None:
        input_shape = _default_input_shape(spec_or_model)
    if _family(spec_or_model) == "hf":
        if model is None:
            raise ConfigError("example inputs of an hf: model need the model (its vocabulary or image size)")
        if len(input_shape) != 2:
            shape = ",".join(str(d) for d in input_shape)
            raise ConfigError(f"hf: models take --input-shape BATCH,SEQ (e.g. 1,16), got {shape}")
        from prunekit.models.hf import example_inputs

        return example_inputs(model, batch=input_shape[0], seq=input_shape[1])
    generator = torch.Generator().manual_seed(0)
    return torch.randn(input_shape, generator=generator)


def _family(spec_or_model: str | nn.Module) -> str | None:
    """The spec prefix (``torchvision``, ``hf``, ...), looking inside checkpoint directories."""
    if not isinstance(spec_or_model, str):
        return None
    if (Path(spec_or_model) / "prunekit.json").is_file():
        from prunekit.deploy.checkpoint import read_info

        inner = read_info(spec_or_model)["spec"]
        return _family(inner) if inner else None
    prefix, sep, _ = spec_or_model.partition(":")
    return prefix if sep and prefix in LOADERS else None


def check_forward(model: nn.Module, example_inputs: ExampleInputs) -> None:
    """Run ``model`` once on ``example_inputs``; a failure becomes a one-line ConfigError about the shape.

    >>> check_forward(nn.Linear(4, 2), torch.zeros(1, 4))
    """
    try:
        with torch.no_grad():
            call_model(model, example_inputs)
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if isinstance(example_inputs, torch.Tensor):
            what = "an input of shape " + ",".join(str(d) for d in example_inputs.shape)
        else:
            what = "its example inputs"
        raise ConfigError(
            f"the model fails on {what} ({type(err).__name__}: {first_line}); pass the right --input-shape"
        ) from err


# --- prefixed specs -----------------------------------------------------------------------------------------


def _load_torchvision(name: str) -> nn.Module:
    """torchvision.models.get_model(name, weights=None), with no backbone weights either (no downloads)."""
    models = _import_torchvision()
    known = models.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else "; see torchvision.models.list_models()"
        raise ModelLoadError(f"unknown torchvision model {name!r}{hint}")
    kwargs = {"weights": None}
    if "weights_backbone" in inspect.signature(models.get_model_builder(name)).parameters:
        kwargs["weights_backbone"] = None
    return models.get_model(name, **kwargs)


def _load_ultralytics(name: str) -> nn.Module:
    from prunekit.models.ultralytics import load_yolo  # late: ultralytics is an optional extra

    return load_yolo(name)


def _load_hf(spec: str) -> nn.Module:
    from prunekit.models.hf import load_hf  # late: transformers is an optional extra

    return load_hf(spec)


def _load_timm(name: str) -> nn.Module:
    from prunekit.models.timm import load_timm  # late: timm is an optional extra

    return load_timm(name)


LOADERS: dict[str, Callable[[str], nn.Module]] = {
    "torchvision": _load_torchvision,
    "ultralytics": _load_ultralytics,
    "hf": _load_hf,
    "timm": _load_timm,
}


def _import_torchvision():
    try:
        import torchvision.models
    except ImportError as err:
        raise ModelLoadError(
            "torchvision:... specs need torchvision: pip install 'prunekit[vision]'"
        ) from err
    return torchvision.models


def _torchvision_hint(spec: str) -> str:
    try:
        import torchvision.models
    except ImportError:
        return ""
    return f" (did you mean torchvision:{spec}?)" if spec in torchvision.models.list_models() else ""


def _reject_arch(spec: str, arch: str | None) -> None:
    if arch is not None:
        raise ModelLoadError(f"--arch is only for state_dict files, but {spec!r} is not a file")


# --- module.path:factory ------------------------------------------------------------------------------------


def _is_factory_spec(spec: str) -> bool:
    module_path, sep, attr_path = spec.partition(":")
    dotted = module_path.split(".") + attr_path.split(".")
    return bool(sep) and all(part.isidentifier() for part in dotted)


def _load_factory(spec: str) -> nn.Module:
    """Import ``module.path``, follow ``factory`` (dotted attributes allowed), call it with no arguments."""
    model = call_factory(spec, what="an nn.Module")
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def call_factory(spec: str, *, what: str) -> object:
    """Import ``module.path`` of ``module.path:factory``, follow the attributes, call it with no arguments.

    ``what`` names what the factory should return, for the error messages.

    >>> call_factory("prunekit.demo.data:load_splits", what="data").x_test.shape[0]
    450
    """
    module_path, sep, attr_path = spec.partition(":")
    if not sep or not module_path or not attr_path:
        raise ModelLoadError(f"{spec!r} is not module.path:factory (a callable returning {what})")
    try:
        obj = importlib.import_module(module_path)
    except ImportError as err:
        raise ModelLoadError(f"cannot import {module_path!r} for {spec!r}: {err}") from err
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise ModelLoadError(f"{module_path!r} has no attribute {attr_path!r} (from {spec!r})")
        obj = getattr(obj, attr)
    if isinstance(obj, nn.Module) or not callable(obj):
        kind = "an nn.Module instance" if isinstance(obj, nn.Module) else type(obj).__name__
        raise ModelLoadError(f"{spec!r} is {kind}, not a callable that returns {what}")
    try:
        return obj()
    except Exception as err:
        raise ModelLoadError(f"calling {spec!r} failed: {type(err).__name__}: {err}") from err


# --- files --------------------------------------------------------------------------------------------------


def _is_file_spec(spec: str) -> bool:
    path = Path(spec)
    return path.suffix in STATE_DICT_SUFFIXES or path.is_file()


def _load_file(path: Path, *, arch: str | None, trust_pickle: bool) -> nn.Module:
    if not path.is_file():
        raise ModelLoadError(f"no such file: {path}")
    if path.suffix == ".safetensors":
        model = _build_arch(path, arch)
        _load_safetensors_into(model, path)
        return model
    if path.suffix == ".pksparse":
        from prunekit.sparse.storage import load_sparse

        model = _build_arch(path, arch)
        _load_state_dict_into(model, load_sparse(path), path)
        return model
    obj = _torch_load(path, trust_pickle=trust_pickle)
    if isinstance(obj, nn.Module):
        if arch is not None:
            raise ModelLoadError(f"{path} holds a whole module; drop --arch")
        return obj
    _require_state_dict(path, obj)
    model = _build_arch(path, arch)
    _load_state_dict_into(model, obj, path)
    return model


def _torch_load(path: Path, *, trust_pickle: bool) -> object:
    """torch.load(weights_only=True); weights_only=False only if that fails and the user trusts the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path)
        if not unsafe:
            raise ModelLoadError(f"cannot read {path}: {_first_line(err)}") from err
        if not trust_pickle:
            user_first = sorted(unsafe, key=lambda name: (name.split(".")[0] == "torch", name))
            raise ModelLoadError(
                f"{path} is a pickled module (it imports {', '.join(user_first[:2])}); "
                "pass --trust-pickle only if you trust its source"
            ) from err
    except Exception as err:
        raise ModelLoadError(f"cannot read {path}: {_first_line(err)}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ModelLoadError(f"cannot unpickle {path}: {type(err).__name__}: {_first_line(err)}") from err


def is_ultralytics_spec(spec: str) -> bool:
    """``ultralytics:...``, a model ``.yaml`` (ultralytics' model configs), or a ``.pt`` file whose pickle
    needs ultralytics classes (read from the file's pickle opcodes; nothing is unpickled).

    >>> is_ultralytics_spec("ultralytics:yolov8n.yaml"), is_ultralytics_spec("torchvision:resnet18")
    (True, False)
    """
    path = Path(spec)
    if spec.startswith("ultralytics:") or path.suffix in (".yaml", ".yml"):
        return True
    if path.suffix == ".pt" and path.is_file():
        return any(name.split(".", 1)[0] == "ultralytics" for name in _unsafe_globals(path))
    return False


def _unsafe_globals(path: Path) -> list[str]:
    """Names of the Python objects a torch file would import when unpickled ([] if it cannot tell)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        return []


def _require_state_dict(path: Path, obj: object) -> None:
    if not isinstance(obj, Mapping):
        raise ModelLoadError(f"{path} holds a {type(obj).__name__}, not an nn.Module or a state_dict")
    others = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise ModelLoadError(
            f"{path} is a dict with non-tensor entries ({', '.join(others[:3])}), not a state_dict; "
            "save model.state_dict() instead"
        )


def _build_arch(path: Path, arch: str | None) -> nn.Module:
    if arch is None:
        raise ModelLoadError(
            f"{path} is a state_dict; pass --arch torchvision:NAME or --arch module.path:factory "
            "to build the model"
        )
    if arch.partition(":")[0] not in LOADERS and not _is_factory_spec(arch):
        raise ModelLoadError(f"--arch must be torchvision:NAME or module.path:factory, got {arch!r}")
    return load_model(arch)


def _load_state_dict_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    _raise_on_key_mismatch(path, missing, unexpected)
    wrong = [k for k in expected if tuple(expected[k].shape) != tuple(state_dict[k].shape)]
    if wrong:
        details = ", ".join(
            f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong[:3]
        )
        raise ModelLoadError(f"{path} does not fit --arch: shape mismatch for {details}")
    model.load_state_dict(state_dict, strict=True)


def _load_safetensors_into(model: nn.Module, path: Path) -> None:
    """safetensors.torch.load_model knows how tied weights were de-duplicated by save_model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model as load_safetensors_model

    try:
        missing, unexpected = load_safetensors_model(model, path, strict=False)
    except SafetensorError as err:
        raise ModelLoadError(f"cannot read {path}: {_first_line(err)}") from err
    except RuntimeError as err:  # size mismatch, raised by nn.Module.load_state_dict
        raise ModelLoadError(f"{path} does not fit --arch: {_first_line(err)}") from err
    _raise_on_key_mismatch(path, sorted(missing), sorted(unexpected))


def _raise_on_key_mismatch(path: Path, missing: list[str], unexpected: list[str]) -> None:
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
        if unexpected:
            parts.append(
                f"unexpected keys {', '.join(unexpected[:3])}" + (" ..." if len(unexpected) > 3 else "")
            )
        raise ModelLoadError(f"{path} does not fit --arch: {'; '.join(parts)}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --- default input shapes -----------------------------------------------------------------------------------


def default_input_shape(spec_or_model: str | nn.Module) -> tuple[int, ...]:
    """The example-input shape a spec implies (see :func:`example_inputs_for`); ConfigError if none.

    >>> default_input_shape("torchvision:inception_v3")
    (1, 3, 299, 299)
    """
    return _default_input_shape(spec_or_model)


def _default_input_shape(spec_or_model: str | nn.Module) -> tuple[int, ...]:
    if isinstance(spec_or_model, str) and (Path(spec_or_model) / "prunekit.json").is_file():
        from prunekit.deploy.checkpoint import read_info

        info = read_info(spec_or_model)
        shape = (info.get("metadata") or {}).get("input_shape")
        if shape:
            return tuple(int(d) for d in shape)
        if info["spec"]:
            return _default_input_shape(info["spec"])
    if isinstance(spec_or_model, str):
        prefix, _, rest = spec_or_model.partition(":")
        if prefix in DEFAULT_SHAPES:
            shape = DEFAULT_SHAPES[prefix](rest)
            if shape is not None:
                return shape
        what = repr(spec_or_model)
    else:
        what = f"a {type(spec_or_model).__name__}"
    raise ConfigError(
        f"no default input shape for {what}; pass --input-shape, e.g. --input-shape 1,3,224,224"
    )


def _torchvision_input_shape(name: str) -> tuple[int, ...] | None:
    """Classification models only: detection, segmentation, video and optical flow take other inputs."""
    models = _import_torchvision()
    if name not in models.list_models(module=models):
        return None
    side = 299 if name == "inception_v3" else 224
    return (1, 3, side, side)


def _ultralytics_input_shape(name: str) -> tuple[int, ...] | None:
    from prunekit.models.ultralytics import default_input_shape

    return default_input_shape(name)


def _timm_input_shape(name: str) -> tuple[int, ...] | None:
    from prunekit.models.timm import default_input_shape

    return default_input_shape(name)


DEFAULT_SHAPES: dict[str, Callable[[str], tuple[int, ...] | None]] = {
    "torchvision": _torchvision_input_shape,
    "ultralytics": _ultralytics_input_shape,
    "timm": _timm_input_shape,
    "hf": lambda _: (1, 8),  # BATCH,SEQ of token ids (vision models: batch only; their image size is known)
}
