"""timm models as ``timm:NAME`` specs, built with ``pretrained=False`` (nothing is downloaded).

>>> m = load_timm("resnet18")
>>> m.fc.out_features
1000
>>> infer_timm(m)
'timm:resnet18'
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from prunekit.errors import ModelLoadError
from prunekit.models.family import Family, register_family
from prunekit.models.record import same_architecture


def _timm() -> Any:
    try:
        import timm
    except ImportError as err:
        raise ModelLoadError('timm:NAME specs need timm: pip install "prunekit[timm]"') from err
    return timm


def load_timm(name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)`` in eval mode; unknown names get close matches.

    >>> load_timm("vit_tiny_patch16_224", img_size=32).patch_embed.img_size
    (32, 32)
    """
    timm = _timm()
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ModelLoadError(f"unknown timm model {name!r}{hint}")
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def default_input_shape(name: str) -> tuple[int, ...]:
    """``(1, C, H, W)`` from the model's pretrained config (224 when it says nothing)."""
    timm = _timm()
    cfg = timm.get_pretrained_cfg(name) if name in timm.list_models() else None
    shape = tuple(getattr(cfg, "input_size", None) or (3, 224, 224)) if cfg is not None else (3, 224, 224)
    return (1, *shape)


def infer_timm(model: nn.Module) -> str | None:
    """``timm:NAME`` from the model's ``pretrained_cfg`` (or ``default_cfg``) ``architecture``, if building
    that name gives the same architecture, else None."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    name = cfg.get("architecture") if isinstance(cfg, dict) else None
    if not isinstance(name, str) or name not in _timm().list_models():
        return None
    return f"timm:{name}" if same_architecture(model, lambda: load_timm(name)) else None


FAMILY = register_family(
    Family(
        "timm",
        load_timm,
        form="timm:NAME",
        requires="timm",
        extra="timm",
        input_shape=default_input_shape,
        infer_spec=infer_timm,
    )
)
