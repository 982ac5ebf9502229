"""Model files: state_dicts (``.pt``/``.pth``/``.bin`` read with ``torch.load(weights_only=True)``, and
``.safetensors``) loaded into the architecture ``arch`` builds; pickled whole modules only when the user
trusts the file.

Every failure is one :class:`~prunekit.errors.ModelLoadError` line naming the file.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from prunekit.errors import ModelLoadError
from prunekit.models.family import is_code_spec, is_family_spec

STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".pksparse")


def is_file_spec(spec: str) -> bool:
    """True for a path with a state-dict suffix or any existing file."""
    path = Path(spec)
    return path.suffix in STATE_DICT_SUFFIXES or path.is_file()


def load_file(path: Path, *, arch: str | None, trust_pickle: bool) -> nn.Module:
    """The module a file holds: a state_dict loaded strictly into ``load_model(arch)``, or (only with
    ``trust_pickle``) an unpickled module."""
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
        unsafe = unsafe_globals(path)
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


def unsafe_globals(path: Path) -> list[str]:
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
    if not is_family_spec(arch) and not is_code_spec(arch):
        raise ModelLoadError(f"--arch must be torchvision:NAME or module.path:factory, got {arch!r}")
    from prunekit.models.spec import load_model  # late: spec.py reads files with this module

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
