"""torchvision models as ``torchvision:NAME`` specs: random weights, no backbone weights (nothing is
downloaded).

>>> load_torchvision("resnet18").fc.out_features
1000
>>> infer_torchvision(load_torchvision("resnet34"))
'torchvision:resnet34'
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from torch import nn

from prunekit.errors import ModelLoadError
from prunekit.models.family import Family, register_family
from prunekit.models.record import same_architecture


def _models() -> Any:
    import torchvision.models  # absolute: the torchvision package, not this module

    return torchvision.models


def load_torchvision(name: str) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None)``, with no backbone weights either."""
    models = _models()
    known = models.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else "; see torchvision.models.list_models()"
        raise ModelLoadError(f"unknown torchvision model {name!r}{hint}")
    kwargs = {"weights": None}
    if "weights_backbone" in inspect.signature(models.get_model_builder(name)).parameters:
        kwargs["weights_backbone"] = None
    return models.get_model(name, **kwargs)


def default_input_shape(name: str) -> tuple[int, ...] | None:
    """Classification models only: detection, segmentation, video and optical flow take other inputs."""
    models = _models()
    if name not in models.list_models(module=models):
        return None
    side = 299 if name == "inception_v3" else 224
    return (1, 3, side, side)


def infer_torchvision(model: nn.Module) -> str | None:
    """``torchvision:NAME`` for the first builder in ``model``'s own torchvision module whose model has
    ``model``'s class and state-dict shapes (built on the meta device), else None."""
    module = type(model).__module__
    if not module.startswith("torchvision.models."):
        return None
    models = _models()
    for name in models.list_models():
        builder = models.get_model_builder(name)
        if builder.__module__ == module and same_architecture(model, lambda n=name: load_torchvision(n)):
            return f"torchvision:{name}"
    return None


def bare_name_hint(spec: str) -> str:
    """`` (did you mean torchvision:NAME?)`` when ``spec`` is a bare torchvision model name, else ``""``."""
    try:
        known = _models().list_models()
    except ImportError:
        return ""
    return f" (did you mean torchvision:{spec}?)" if spec in known else ""


FAMILY = register_family(
    Family(
        "torchvision",
        load_torchvision,
        form="torchvision:NAME",
        requires="torchvision",
        extra="vision",
        input_shape=default_input_shape,
        infer_spec=infer_torchvision,
    )
)
