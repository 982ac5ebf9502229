"""``nn.MultiheadAttention`` with whole heads removed, or its input/output stream cut.

PyTorch's ``nn.MultiheadAttention`` assumes ``num_heads * head_dim == embed_dim``: the residual width and the
attention width are one number. After heads are removed, or channels of the stream (``embed_dim``: the
``in_proj`` columns and ``out_proj`` rows), the two differ. :class:`PrunedMultiheadAttention` is a subclass
with the same parameters, buffers, attributes and ``state_dict`` keys whose forward computes with
``num_heads`` heads of ``head_dim`` each, from plain ops (``linear``, ``view``,
``scaled_dot_product_attention``).
:func:`prunekit.apply` turns an ``nn.MultiheadAttention`` whose ``num_heads`` or ``embed_dim`` changes into
one (see ``CLASS_SWAPS``); a saved plan replays the same way.

>>> mha = torch.nn.MultiheadAttention(8, 2, batch_first=True).eval()
>>> x = torch.randn(1, 5, 8)
>>> ref, _ = mha(x, x, x, need_weights=False)
>>> mha.__class__ = PrunedMultiheadAttention
>>> out, _ = mha(x, x, x, need_weights=False)
>>> bool(torch.allclose(out, ref, atol=1e-5))
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import handle_torch_function, has_torch_function


def head_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    num_heads: int,
    head_dim: int,
    in_proj_weight: torch.Tensor,
    in_proj_bias: torch.Tensor | None,
    out_proj_weight: torch.Tensor,
    out_proj_bias: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None = None,
    need_weights: bool = True,
    attn_mask: torch.Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-head attention on batch-first ``(N, L, E)`` inputs with ``num_heads * head_dim`` inner width.

    Masks follow ``nn.MultiheadAttention``: boolean ``True`` means "not allowed"; ``attn_mask`` is
    ``(L, S)``. One traced call (it dispatches ``__torch_function__``), so the structural engine gives it a
    rule (:mod:`prunekit.graph.rules_attn`).

    >>> w, b = torch.randn(3 * 4, 6), torch.zeros(12)
    >>> out, _ = head_attention(torch.randn(1, 3, 6), *[torch.randn(1, 3, 6)] * 2, 2, 2, w, b,
    ...                         torch.randn(6, 4), None, need_weights=False)
    >>> tuple(out.shape)
    (1, 3, 6)
    """
    args = (query, key, value, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias)
    if has_torch_function(args):
        return handle_torch_function(
            head_attention,
            args,
            query,
            key,
            value,
            num_heads,
            head_dim,
            in_proj_weight,
            in_proj_bias,
            out_proj_weight,
            out_proj_bias,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
            dropout_p=dropout_p,
        )
    n, length, s = query.shape[0], query.shape[1], key.shape[1]
    wq, wk, wv = in_proj_weight.chunk(3)
    bq, bk, bv = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
    q = F.linear(query, wq, bq).view(n, length, num_heads, head_dim).transpose(1, 2)
    k = F.linear(key, wk, bk).view(n, s, num_heads, head_dim).transpose(1, 2)
    v = F.linear(value, wv, bv).view(n, s, num_heads, head_dim).transpose(1, 2)
    mask = _float_mask(attn_mask, key_padding_mask, q.dtype, n, length, s)
    causal = is_causal and mask is None
    if need_weights:
        scores = q @ k.transpose(-2, -1) * head_dim**-0.5
        if mask is not None:
            scores = scores + mask
        elif causal:
            scores = scores.masked_fill(torch.ones(length, s, dtype=torch.bool).triu(1), float("-inf"))
        weights = scores.softmax(-1)
        out = F.dropout(weights, dropout_p) @ v
        weights = weights.mean(1) if average_attn_weights else weights
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
        weights = None
    out = out.transpose(1, 2).reshape(n, length, num_heads * head_dim)
    return F.linear(out, out_proj_weight, out_proj_bias), weights


def _float_mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    dtype: torch.dtype,
    n: int,
    length: int,
    s: int,
) -> torch.Tensor | None:
    """One additive float mask of shape (N, 1, L, S) (or (L, S)) from the two MHA-style masks."""
    mask = None
    if attn_mask is not None:
        mask = _additive(attn_mask, dtype)
    if key_padding_mask is not None:
        kpm = _additive(key_padding_mask, dtype).view(n, 1, 1, s)
        mask = kpm if mask is None else mask + kpm
    return mask


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose attention width ``num_heads * head_dim`` may differ from ``embed_dim``.

    Not built directly: :func:`prunekit.apply` swaps the class of a pruned ``nn.MultiheadAttention`` (same
    state). Supports what the structural engine lets through: packed q/k/v weights, no ``bias_k``/``bias_v``,
    no ``add_zero_attn``, 2-D ``attn_mask``, ``key_padding_mask``.

    >>> m = torch.nn.MultiheadAttention(8, 4); m.__class__ = PrunedMultiheadAttention
    >>> m(torch.randn(3, 2, 8), torch.randn(3, 2, 8), torch.randn(3, 2, 8))[0].shape
    torch.Size([3, 2, 8])
    """

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or unbatched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        out, weights = head_attention(
            query,
            key,
            value,
            self.num_heads,
            self.head_dim,
            self.in_proj_weight,
            self.in_proj_bias,
            self.out_proj.weight,
            self.out_proj.bias,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
            weights = weights.squeeze(0) if weights is not None else None
        return out, weights


#: classes :func:`prunekit.apply` swaps when the plan changes one of their attributes
CLASS_SWAPS: dict[type, type] = {nn.MultiheadAttention: PrunedMultiheadAttention}
