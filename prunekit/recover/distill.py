"""Knowledge distillation: a pruned student learns from its dense teacher.

Logit KD (Hinton et al., 2015): the student matches the teacher's temperature-softened class distribution::

    kd   = KL(softmax(t / T) || softmax(s / T)) * T**2      # mean over samples ("batchmean")
    loss = (1 - alpha) * task_loss + alpha * kd

``T**2`` keeps the gradient scale of the soft term independent of ``T``. Logits shaped ``(..., C)`` (e.g.
``(batch, seq, vocab)``) are flattened to rows of ``C`` classes; the mean runs over all rows.

Feature KD (optional, :class:`FeatureKD`): forward hooks record the outputs of named modules in both models
and the student is pulled towards the teacher's with a mean squared error. It needs equal shapes: a
structurally pruned student whose width changed cannot be compared position by position, and this module does
not add a learned projection for that; pick layers whose output width pruning kept (block outputs, the
residual stream, the logits' input) or use logit KD only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prunekit.errors import ConfigError


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """``KL(softmax(t/T) || softmax(s/T)) * T**2``, averaged over samples; zero when the logits agree.

    >>> s = torch.tensor([[2.0, 0.0, -1.0]])
    >>> float(kd_loss(s, s))
    0.0
    >>> round(float(kd_loss(torch.zeros(1, 2), torch.tensor([[0.0, 4.0]]), temperature=1.0)), 4)
    0.6031
    """
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape: KD needs the same classes"
        )
    classes = student_logits.shape[-1]
    s = student_logits.reshape(-1, classes).float() / temperature
    t = teacher_logits.detach().reshape(-1, classes).float() / temperature
    kl = F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), reduction="batchmean", log_target=True)
    return kl * temperature**2


def distill_loss(
    task_loss: Tensor, student_logits: Tensor, teacher_logits: Tensor, *, alpha: float, temperature: float
) -> Tensor:
    """``(1 - alpha) * task_loss + alpha * kd_loss(student, teacher, temperature)``.

    >>> s = torch.tensor([[1.0, 0.0]])
    >>> float(distill_loss(torch.tensor(2.0), s, s, alpha=0.25, temperature=2.0))
    1.5
    """
    return (1.0 - alpha) * task_loss + alpha * kd_loss(student_logits, teacher_logits, temperature)


def logits_of(outputs: Any) -> Tensor:
    """The logits in a model's outputs: the tensor itself, or the ``logits`` field of a mapping or output
    object (Hugging Face ``ModelOutput``). Anything else is an error, never a guess.

    >>> logits_of({"logits": torch.zeros(1, 3)}).shape
    torch.Size([1, 3])
    """
    if isinstance(outputs, Tensor):
        return outputs
    found = outputs.get("logits") if isinstance(outputs, Mapping) else getattr(outputs, "logits", None)
    if isinstance(found, Tensor):
        return found
    raise ConfigError(
        f"KD needs a logits tensor (or an output with .logits) from the model, got {type(outputs).__name__}"
    )


def check_kd_args(alpha: object, temperature: object) -> None:
    """Raise :class:`ConfigError` unless ``0 <= alpha <= 1`` and ``temperature > 0`` (finite numbers).

    >>> check_kd_args(0.5, 4.0)
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"kd_alpha must be a number in [0, 1], got {alpha!r}")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0.0 < temperature < float("inf")
    ):
        raise ConfigError(f"kd_temperature must be a finite number > 0, got {temperature!r}")


class FeatureKD:
    """MSE between the outputs of named modules of the student and the teacher (equal shapes only).

    ``layers`` is a list of module names found in both models, or a mapping ``student name -> teacher name``.
    Forward hooks record the outputs; :meth:`loss` (after one forward of each model) returns the mean over
    the layers of ``mse(student_out, teacher_out)`` and clears the records. :meth:`close` removes the hooks.

    >>> student, teacher = nn.Sequential(nn.Linear(2, 3)), nn.Sequential(nn.Linear(2, 3))
    >>> fkd = FeatureKD(student, teacher, ["0"])
    >>> x = torch.ones(4, 2)
    >>> _ = student(x), teacher(x)
    >>> fkd.loss().shape
    torch.Size([])
    >>> fkd.close()
    """

    def __init__(
        self, student: nn.Module, teacher: nn.Module, layers: Sequence[str] | Mapping[str, str]
    ) -> None:
        pairs = dict(layers) if isinstance(layers, Mapping) else {name: name for name in layers}
        if isinstance(layers, str) or not pairs:
            raise ConfigError("feature_kd takes a non-empty list of module names (or a student->teacher map)")
        s_modules, t_modules = dict(student.named_modules()), dict(teacher.named_modules())
        for s_name, t_name in pairs.items():
            if s_name not in s_modules:
                raise ConfigError(f"feature_kd: the student has no module named {s_name!r}")
            if t_name not in t_modules:
                raise ConfigError(f"feature_kd: the teacher has no module named {t_name!r}")
        self.pairs = pairs
        self._student: dict[str, Tensor] = {}
        self._teacher: dict[str, Tensor] = {}
        self._handles = []
        for s_name, t_name in pairs.items():
            self._handles.append(s_modules[s_name].register_forward_hook(_recorder(self._student, s_name)))
            self._handles.append(t_modules[t_name].register_forward_hook(_recorder(self._teacher, t_name)))

    def loss(self) -> Tensor:
        """Mean over the layer pairs of the MSE between student and (detached) teacher outputs."""
        terms = []
        try:
            for s_name, t_name in self.pairs.items():
                if s_name not in self._student or t_name not in self._teacher:
                    raise ConfigError(
                        f"feature_kd: layer {s_name!r} / {t_name!r} did not run in the last forward pass"
                    )
                s, t = self._student[s_name], self._teacher[t_name].detach()
                if s.shape != t.shape:
                    raise ConfigError(
                        f"feature_kd: student {s_name!r} gives {tuple(s.shape)}, teacher {t_name!r} gives "
                        f"{tuple(t.shape)}; feature KD needs equal shapes: pick layers whose width was kept"
                    )
                terms.append(F.mse_loss(s.float(), t.float()))
        finally:
            self._student.clear()
            self._teacher.clear()
        return torch.stack(terms).mean()

    def close(self) -> None:
        """Remove the forward hooks (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _recorder(store: dict[str, Tensor], name: str):
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if not isinstance(output, Tensor):
            raise ConfigError(f"feature_kd: module {name!r} returns {type(output).__name__}, not a tensor")
        store[name] = output

    return hook
