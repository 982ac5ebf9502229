"""Model specs (``torchvision:NAME``, ``module.path:factory``, files) and, later, real model families."""

from __future__ import annotations

from prunekit.models.spec import check_forward, example_inputs_for, load_model, parse_input_shape

__all__ = ["check_forward", "example_inputs_for", "load_model", "parse_input_shape"]
