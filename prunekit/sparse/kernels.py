"""Sparse kernel modules for CPU inference: Linear and Conv2d with a ``torch.sparse`` CSR or BSR weight.

A kernel is a storage layout plus the op that multiplies with it:

- ``"csr-mm"``: CSR weight ``W`` (out x in), ``y = (W @ x^T)^T + b`` through ``torch.addmm`` (MKL sparse x
  dense on CPU); usually the fastest for several rows of input.
- ``"csr-mm-tiled"``: ``"csr-mm"`` on tiles of ``TILE_ROWS`` rows of ``x`` at a time, so that the slice of
  ``x^T`` the sparse rows gather from stays in cache; pays for many rows of a wide input (e.g. 1,024 tokens
  into a 1,536 -> 384 FFN projection), loses for narrow inputs.
- ``"csr-linear"``: the same CSR weight through ``F.linear(x, W, b)``; usually the fastest for one row.
- ``"bsr-mm"`` / ``"bsr-linear"``: the same two ops on a block-sparse (BSR) weight; they only pay when the
  zeros come in whole blocks (``sparsify(pattern="block:RxC")``).
- ``"csr-im2col"`` (Conv2d only): unfold the input into columns (im2col), one CSR x dense product, fold the
  result back into an image.

Indices are int32 (they index MKL directly; int64 indices are converted on every call). The weight is a
buffer: these modules are for inference, not training. :func:`prunekit.sparse.accelerate` decides per layer,
by timing on this machine, which kernel (if any) to use.

>>> import torch
>>> from torch import nn
>>> dense = nn.Linear(64, 32)
>>> with torch.no_grad():
...     dense.weight[dense.weight.abs() < 0.1] = 0
>>> fast = SparseLinear.from_linear(dense, "csr-mm")
>>> x = torch.randn(5, 7, 64)
>>> torch.allclose(fast(x), dense(x), atol=1e-5)
True
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prunekit.errors import ConfigError

LINEAR_KERNELS = ("csr-mm", "csr-mm-tiled", "csr-linear", "bsr-mm", "bsr-linear")
CONV_KERNELS = ("csr-im2col",)
BLOCK_SIZES = (32, 16, 8, 4)
MIN_BLOCK_FILL = 0.5
TILE_ROWS = 32


def _sparse_weight(weight: Tensor, layout: str, blocksize: int | None) -> Tensor:
    """A CSR or BSR copy of a dense 2-D ``weight`` with int32 indices."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and not the user's concern
        warnings.simplefilter("ignore", UserWarning)
        w = weight.detach()
        if layout == "csr":
            s = w.to_sparse_csr()
            return torch.sparse_csr_tensor(
                s.crow_indices().to(torch.int32), s.col_indices().to(torch.int32), s.values(), size=s.shape
            )
        s = w.to_sparse_bsr((blocksize, blocksize))
        return torch.sparse_bsr_tensor(
            s.crow_indices().to(torch.int32), s.col_indices().to(torch.int32), s.values(), size=s.shape
        )


def block_size_for(weight: Tensor) -> int | None:
    """The largest square block size in ``BLOCK_SIZES`` that divides both dims of the 2-D ``weight`` and whose
    non-zero blocks are at least ``MIN_BLOCK_FILL`` full; ``None`` if there is none (BSR would mostly store
    zeros: the sparsity is not block-shaped).

    >>> w = torch.zeros(8, 8); w[:4, :4] = 1.0
    >>> block_size_for(w), block_size_for(torch.eye(8))
    (4, None)
    """
    rows, cols = weight.shape
    nnz = int(torch.count_nonzero(weight))
    for b in BLOCK_SIZES:
        if rows % b or cols % b or nnz == 0:
            continue
        blocks = weight.ne(0).reshape(rows // b, b, cols // b, b).any(dim=3).any(dim=1)
        if nnz >= MIN_BLOCK_FILL * int(blocks.sum()) * b * b:
            return b
    return None


class _DenseState(nn.Module):
    """State dict, loading and deep copies of a sparse kernel module in its dense form.

    ``state_dict()`` holds the dense ``weight`` / ``bias`` the module replaced (same names and shapes as the
    ``nn.Linear`` / ``nn.Conv2d``), so a model with sparse kernels saves, loads and compares like the dense
    model; ``load_state_dict`` turns a dense weight back into this module's layout. ``copy.deepcopy``
    rebuilds the module from its dense form (``torch.sparse`` tensors have no deep copy).
    """

    def to_dense(self) -> nn.Module:
        raise NotImplementedError

    def _rebuilt(self, dense: nn.Module) -> nn.Module:
        raise NotImplementedError

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        for name, tensor in self.to_dense().state_dict().items():
            destination[prefix + name] = tensor  # a fresh dense copy: keep_vars has no variable to keep

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        dense = self.to_dense()
        dense._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._buffers.update(self._rebuilt(dense)._buffers)

    def __deepcopy__(self, memo: dict) -> nn.Module:
        copied = self._rebuilt(self.to_dense())
        copied.train(self.training)
        memo[id(self)] = copied
        return copied


class SparseLinear(_DenseState):
    """A Linear layer whose weight is a ``torch.sparse`` CSR/BSR tensor; inputs of any leading shape.

    >>> layer = SparseLinear(torch.tensor([[0.0, 2.0], [1.0, 0.0]]), torch.tensor([0.5, 0.0]), "csr-linear")
    >>> layer(torch.tensor([[1.0, 1.0]])).tolist()
    [[2.5, 1.0]]
    """

    def __init__(
        self, weight: Tensor, bias: Tensor | None, kernel: str, blocksize: int | None = None
    ) -> None:
        super().__init__()
        if kernel not in LINEAR_KERNELS:
            raise ConfigError(f"kernel must be one of {', '.join(LINEAR_KERNELS)}, got {kernel!r}")
        if weight.dim() != 2:
            raise ConfigError(f"SparseLinear needs a 2-D weight, got shape {tuple(weight.shape)}")
        layout, _, op = kernel.partition("-")  # op: "mm", "mm-tiled" or "linear"
        if layout == "bsr":
            blocksize = blocksize or block_size_for(weight)
            if blocksize is None:
                raise ConfigError("no block size fits this weight: use a csr kernel")
        else:
            blocksize = None
        self.kernel, self.op, self.blocksize = kernel, op, blocksize
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", _sparse_weight(weight, layout, blocksize))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, layer: nn.Linear, kernel: str = "csr-mm") -> SparseLinear:
        """Sparse copy of ``layer`` (its effective weight, masks applied).

        >>> SparseLinear.from_linear(nn.Linear(4, 3)).weight.layout
        torch.sparse_csr
        """
        return cls(layer.weight, layer.bias, kernel)

    def _rebuilt(self, dense: nn.Module) -> SparseLinear:
        return SparseLinear(dense.weight, dense.bias, self.kernel, self.blocksize)

    def forward(self, input: Tensor) -> Tensor:  # named like nn.Linear's, for callers passing input=...
        lead = input.shape[:-1]
        rows = input.reshape(-1, self.in_features)
        if self.op == "linear":
            out = F.linear(rows, self.weight, self.bias)
        elif self.op == "mm" or rows.shape[0] <= TILE_ROWS:
            out = self._mm(rows)
        else:
            out = rows.new_empty(rows.shape[0], self.out_features)
            for start in range(0, rows.shape[0], TILE_ROWS):
                out[start : start + TILE_ROWS] = self._mm(rows[start : start + TILE_ROWS])
        return out.reshape(*lead, self.out_features)

    def _mm(self, rows: Tensor) -> Tensor:
        """``rows @ W^T + b`` as ``(W @ rows^T + b)^T``: sparse x dense, the product MKL does fastest."""
        if self.bias is None:
            return torch.mm(self.weight, rows.t()).t()
        return torch.addmm(self.bias[:, None], self.weight, rows.t()).t()

    def to_dense(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the same weights (the zeros written out).

        >>> SparseLinear.from_linear(nn.Linear(4, 3)).to_dense().weight.shape
        torch.Size([3, 4])
        """
        weight = self.weight.to_dense()
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        layer.to(dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            layer.weight.copy_(weight)
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        return layer

    def extra_repr(self) -> str:
        stored = self.weight.values().numel()  # BSR: whole blocks, zeros inside them included
        density = stored / (self.in_features * self.out_features)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}, "
            f"stored={density:.3f}"
        )


def conv_unsupported(conv: nn.Conv2d) -> str | None:
    """Why ``conv`` cannot run as :class:`SparseConv2d` (``None`` if it can).

    >>> conv_unsupported(nn.Conv2d(4, 4, 3, groups=2))
    'grouped conv (groups=2)'
    """
    if conv.groups != 1:
        return f"grouped conv (groups={conv.groups})"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r}"
    return None


class SparseConv2d(_DenseState):
    """A Conv2d (groups=1, zero padding) run as im2col + one CSR x dense product.

    >>> conv = nn.Conv2d(3, 8, 3, padding=1)
    >>> x = torch.randn(2, 3, 5, 5)
    >>> torch.allclose(SparseConv2d.from_conv(conv)(x), conv(x), atol=1e-5)
    True
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        why = conv_unsupported(conv)
        if why is not None:
            raise ConfigError(f"SparseConv2d cannot run this conv: {why}")
        self.kernel = "csr-im2col"
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.padding_mode = conv.padding_mode
        self.kernel_size, self.stride = conv.kernel_size, conv.stride
        self.padding, self.dilation = conv.padding, conv.dilation
        weight = conv.weight.detach().reshape(conv.out_channels, -1)
        self.register_buffer("weight", _sparse_weight(weight, "csr", None))
        bias = conv.bias.detach()[:, None].clone() if conv.bias is not None else None
        self.register_buffer("bias", bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> SparseConv2d:
        """Sparse copy of ``conv`` (its effective weight, masks applied)."""
        return cls(conv)

    def _rebuilt(self, dense: nn.Module) -> SparseConv2d:
        return SparseConv2d(dense)

    def to_dense(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with the same weights (the zeros written out).

        >>> conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        >>> back = SparseConv2d.from_conv(conv).to_dense()
        >>> torch.equal(back.weight, conv.weight), back.stride
        (True, (2, 2))
        """
        weight = self.weight.to_dense()
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
        )
        conv.to(dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            conv.weight.copy_(weight.reshape(conv.weight.shape))
            if self.bias is not None:
                conv.bias.copy_(self.bias[:, 0])
        return conv

    def _out_size(self, size: int, i: int) -> int:
        span = self.dilation[i] * (self.kernel_size[i] - 1) + 1
        return (size + 2 * self.padding[i] - span) // self.stride[i] + 1

    def forward(self, input: Tensor) -> Tensor:  # named like nn.Conv2d's
        x = input
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        n, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, C*kh*kw, L)
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # (C*kh*kw, N*L)
        if self.bias is None:
            out = torch.mm(self.weight, cols)
        else:
            out = torch.addmm(self.bias, self.weight, cols)
        out = out.reshape(self.out_channels, n, self._out_size(h, 0), self._out_size(w, 1))
        out = out.transpose(0, 1).contiguous()
        return out[0] if unbatched else out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, kernel={self.kernel}"
        )
