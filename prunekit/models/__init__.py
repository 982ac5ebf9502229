"""Model specs: registered families (``torchvision:NAME``, ``timm:``, ``hf:``, ``ultralytics:``, yours via
:func:`prunekit.models.family.register_family`), ``module.path:factory``, files and checkpoint directories."""

from __future__ import annotations

from prunekit.models.family import Family, FileFormat, is_code_spec, is_family_spec, register_family
from prunekit.models.spec import check_forward, example_inputs_for, load_model, parse_input_shape

__all__ = [
    "Family",
    "FileFormat",
    "check_forward",
    "example_inputs_for",
    "is_code_spec",
    "is_family_spec",
    "load_model",
    "parse_input_shape",
    "register_family",
]
