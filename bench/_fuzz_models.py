"""Random small architectures for fuzzing the structural engine, built from an integer seed.

``program(seed)`` draws a *program*: JSON data naming the input and a list of blocks, each a dict with a
``kind`` and the block's constructor arguments. ``build(prog)`` turns a program into an ``nn.Module`` and its
example input, deterministically (weights from ``torch.manual_seed(seed)``, then made O(1) and non-trivial);
``describe(prog)`` prints it as one readable line per block, so a failing seed can be read and reproduced.

Blocks cover convolutions (grouped, depthwise, transposed), Batch/Group/Instance/LayerNorm, residual add/mul
(in place too), SE gating, cat/split/chunk, channel shuffles (stacked, unequal groups), pools and
interpolation, PReLU, module reuse, tied weights (conv-conv, linear-embedding), nn.MultiheadAttention and
scaled_dot_product_attention over tokens, integer-token inputs through an Embedding, and tensor, tuple or dict
outputs.

>>> prog = program(3)
>>> model, x = build(prog)
>>> out = model(x)
>>> describe(prog).splitlines()[0].startswith("seed 3:")
True
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

BATCH = 2
WIDTHS = (4, 6, 8, 12, 16)


def _act(kind: str, c: int) -> nn.Module | str:
    if kind == "prelu":
        return nn.PReLU(c)
    if kind == "prelu1":
        return nn.PReLU()
    return {"gelu": nn.GELU(), "silu": nn.SiLU(), "relu": nn.ReLU()}.get(kind, kind)


def _apply_act(act: nn.Module | str, x: torch.Tensor) -> torch.Tensor:
    if act == "none":
        return x
    if act == "relu_":
        return x.relu_()
    return act(x)


def _norm(kind: str, c: int) -> nn.Module | None:
    if kind == "bn":
        return nn.BatchNorm2d(c)
    if kind == "gn":
        return nn.GroupNorm(next(g for g in (4, 3, 2, 1) if c % g == 0), c)
    if kind == "in":
        return nn.InstanceNorm2d(c, affine=True)
    if kind == "ln":
        return nn.LayerNorm(c)  # channels last
    return None


def _apply_norm(norm: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    if norm is None:
        return x
    if isinstance(norm, nn.LayerNorm):
        return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return norm(x)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle: (b, g, c/g, h, w) -> transpose -> (b, c, h, w)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ConvBlock(nn.Module):
    """conv (plain, grouped, depthwise or transposed) -> norm -> activation."""

    def __init__(self, cin: int, cout: int, k: int, groups: int, transposed: bool, norm: str, act: str):
        super().__init__()
        if transposed:
            self.conv = nn.ConvTranspose2d(cin, cout, 2, stride=2, groups=groups)
        else:
            self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups)
        self.norm, self.act = _norm(norm, cout), _act(act, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _apply_act(self.act, _apply_norm(self.norm, self.conv(x)))


class Residual(nn.Module):
    """x (op) body(x), body = conv3x3 -> BN -> ReLU -> conv1x1; op in add | mul | add_ (in place)."""

    def __init__(self, c: int, mid: int, op: str):
        super().__init__()
        self.a, self.bn, self.b, self.op = (
            nn.Conv2d(c, mid, 3, padding=1),
            nn.BatchNorm2d(mid),
            nn.Conv2d(mid, c, 1),
            op,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(F.relu(self.bn(self.a(x))))
        if self.op == "add_":
            return y.add_(x)
        return x * y if self.op == "mul" else x + y


class SE(nn.Module):
    """Squeeze-excitation: x * sigmoid(fc2(relu(fc1(avgpool(x))))), fcs as Linear or 1x1 conv."""

    def __init__(self, c: int, mid: int, conv: bool):
        super().__init__()
        self.conv = conv
        if conv:
            self.fc1, self.fc2 = nn.Conv2d(c, mid, 1), nn.Conv2d(mid, c, 1)
        else:
            self.fc1, self.fc2 = nn.Linear(c, mid), nn.Linear(mid, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        if not self.conv:
            s = s.flatten(1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * (s if self.conv else s.view(x.shape[0], -1, 1, 1))


class Cat(nn.Module):
    """cat([conv_a(x), conv_b(x)], 1)."""

    def __init__(self, c: int, a: int, b: int):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, a, 1), nn.Conv2d(c, b, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), F.relu(self.b(x))], 1)


class Split(nn.Module):
    """y = conv(x); a, b = y.split(sizes) or y.chunk(2); then cat([conv2(b), a]) or a * sigmoid(b)."""

    def __init__(self, c: int, sizes: list[int], chunk: bool, glu: bool):
        super().__init__()
        self.sizes, self.chunk, self.glu = sizes, chunk, glu
        self.conv = nn.Conv2d(c, sum(sizes), 1)
        self.conv2 = None if glu else nn.Conv2d(sizes[1], sizes[1], 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        a, b = y.chunk(2, 1) if self.chunk else y.split(self.sizes, 1)
        if self.glu:
            return a * torch.sigmoid(b)
        return torch.cat([self.conv2(b), a], 1)


class Shuffle(nn.Module):
    """conv1x1 -> ReLU -> channel_shuffle(g) for each g in ``groups`` (stacked shuffles)."""

    def __init__(self, c: int, cout: int, groups: list[int]):
        super().__init__()
        self.conv, self.groups = nn.Conv2d(c, cout, 1), groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        for g in self.groups:
            x = channel_shuffle(x, g)
        return x


class Resize(nn.Module):
    """max/avg pool by 2, or nearest/bilinear interpolation by 2."""

    def __init__(self, op: str):
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "maxpool":
            return F.max_pool2d(x, 2)
        if self.op == "avgpool":
            return F.avg_pool2d(x, 2)
        return F.interpolate(
            x, scale_factor=2, mode=self.op, **({"align_corners": False} if self.op == "bilinear" else {})
        )


class Reuse(nn.Module):
    """One conv called twice: conv(relu(conv(x)))."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.relu(self.conv(x)))


class TiedConv(nn.Module):
    """Two convs sharing one weight (own biases): conv2(relu(conv1(x))) or conv1(x) + conv2(x)."""

    def __init__(self, c: int, serial: bool):
        super().__init__()
        self.serial = serial
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.conv2.weight = self.conv1.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.serial:
            return self.conv2(F.relu(self.conv1(x)))
        return self.conv1(x) + self.conv2(x)


class Attention(nn.Module):
    """Self-attention over tokens (b, n, e): nn.MultiheadAttention (need_weights=False) or sdpa with its own
    q/k/v projections (separate or fused + chunk), heads split with view and merged with reshape(-1) or
    reshape(num_heads * head_dim); optional pre-LayerNorm and residual."""

    def __init__(
        self, e: int, heads: int, head_dim: int, kind: str, fused: bool, merge: str, ln: bool, residual: bool
    ):
        super().__init__()
        self.kind, self.fused, self.merge, self.residual = kind, fused, merge, residual
        self.num_heads, self.head_dim = heads, head_dim
        self.ln = nn.LayerNorm(e) if ln else None
        if kind == "mha":
            self.mha = nn.MultiheadAttention(e, heads, batch_first=True)
        elif fused:
            self.qkv, self.proj = nn.Linear(e, 3 * heads * head_dim), nn.Linear(heads * head_dim, e)
        else:
            self.q, self.k, self.v = (nn.Linear(e, heads * head_dim) for _ in range(3))
            self.proj = nn.Linear(heads * head_dim, e)

    def _sdpa(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        q, k, v = self.qkv(t).chunk(3, -1) if self.fused else (self.q(t), self.k(t), self.v(t))
        q, k, v = (z.view(b, n, self.num_heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        o = o.reshape(b, n, -1) if self.merge == "minus1" else o.reshape(b, n, self.num_heads * self.head_dim)
        return self.proj(o)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self.ln(t) if self.ln is not None else t
        h = self.mha(h, h, h, need_weights=False)[0] if self.kind == "mha" else self._sdpa(h)
        return t + h if self.residual else h


class SpatialAttention(nn.Module):
    """Attention over the h*w positions of an image: flatten(2).transpose -> Attention -> (b, c, h, w)."""

    def __init__(self, **kw: Any):
        super().__init__()
        self.attn = Attention(**kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        t = self.attn(x.flatten(2).transpose(1, 2))
        return t.transpose(1, 2).reshape(b, -1, h, w)


class ToTokens(nn.Module):
    """(b, c, h, w) -> (b, h*w, c)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class SeqLinear(nn.Module):
    """Linear on tokens -> activation, or a residual MLP x + fc2(act(fc1(x))), or LayerNorm."""

    def __init__(self, e: int, out: int, act: str, mlp: bool, ln: bool):
        super().__init__()
        self.mlp = mlp
        self.ln = nn.LayerNorm(e) if ln else None
        self.fc1 = nn.Linear(e, out)
        self.fc2 = nn.Linear(out, e) if mlp else None
        self.act = _act(act, out) if act not in ("prelu",) else nn.PReLU()

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self.ln(t) if self.ln is not None else t
        h = _apply_act(self.act, self.fc1(h))
        return t + self.fc2(h) if self.mlp else h


class Head(nn.Module):
    """The classifier: image -> gap/flatten/conv head, tokens -> mean/flatten/tied-LM head; packed as a
    tensor, a tuple (logits, aux) or a dict {"out": logits, "feat": first block's output}."""

    def __init__(self, kind: str, c: int, n: int, flat: int, out: str, tied: nn.Embedding | None):
        super().__init__()
        self.kind, self.out = kind, out
        if kind == "conv":
            self.fc = nn.Conv2d(c, n, 1)
        elif kind == "tied_lm":
            self.fc = nn.Linear(c, tied.num_embeddings, bias=False)
            self.fc.weight = tied.weight
        else:
            self.fc = nn.Linear(flat if kind in ("flatten", "seq_flatten") else c, n)
        self.aux = nn.Linear(c, 3) if out == "tuple" else None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "gap":
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
        if self.kind == "flatten":
            return self.fc(F.adaptive_avg_pool2d(x, 2).flatten(1))
        if self.kind == "conv":
            return self.fc(x).mean((2, 3))
        if self.kind == "seq_mean":
            return self.fc(x.mean(1))
        if self.kind == "seq_flatten":
            return self.fc(x.flatten(1))
        return self.fc(x)  # tied_lm: logits per token

    def forward(self, x: torch.Tensor, feat: torch.Tensor) -> Any:
        y = self.logits(x)
        if self.out == "tuple":
            pooled = F.adaptive_avg_pool2d(x, 1).flatten(1) if x.dim() == 4 else x.mean(1)
            return y, self.aux(pooled)
        if self.out == "dict":
            return {"out": y, "feat": feat}
        return y


BLOCKS = {
    "conv": ConvBlock,
    "residual": Residual,
    "se": SE,
    "cat": Cat,
    "split": Split,
    "shuffle": Shuffle,
    "resize": Resize,
    "reuse": Reuse,
    "tied_conv": TiedConv,
    "spatial_attn": SpatialAttention,
    "to_tokens": ToTokens,
    "attn": Attention,
    "seq_linear": SeqLinear,
}


class FuzzNet(nn.Module):
    """input (-> embedding) -> blocks -> head."""

    def __init__(self, prog: dict[str, Any]):
        super().__init__()
        inp = prog["input"]
        self.embed = nn.Embedding(inp["vocab"], inp["dim"]) if inp["kind"] == "tokens" else None
        self.blocks = nn.ModuleList(BLOCKS[b["kind"]](**b["args"]) for b in prog["blocks"])
        h = prog["head"]
        self.head = Head(
            h["kind"],
            h["c"],
            h["n"],
            h["flat"],
            prog["output"],
            self.embed if h["kind"] == "tied_lm" else None,
        )

    def forward(self, x: torch.Tensor) -> Any:
        if self.embed is not None:
            x = self.embed(x)
        feat = x
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == 0:
                feat = x
        return self.head(x, feat)


def _divisors(c: int) -> list[int]:
    return [g for g in (2, 3, 4) if c % g == 0]


class _Draw:
    """Draws blocks while tracking the stream's shape: ("img", c, h) or ("seq", n, e)."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def conv(self, c: int, h: int) -> tuple[dict, int, int]:
        r = self.rng
        style = r.choice(["plain", "plain", "grouped", "depthwise", "transposed"])
        cout, groups, k, transposed = r.choice(WIDTHS), 1, r.choice([1, 3]), False
        if style == "grouped" and _divisors(c):
            groups = r.choice(_divisors(c))
            cout = groups * r.choice([1, 2, 3])
        elif style == "depthwise":
            groups, cout, k = c, c * r.choice([1, 1, 2]), 3
        elif style == "transposed" and h <= 8:
            transposed = True
            if r.random() < 0.25 and _divisors(c):
                groups = r.choice(_divisors(c))
                cout = groups * r.choice([1, 2])
        norm = r.choice(["bn", "bn", "gn", "in", "ln", "none"])
        act = r.choice(["relu", "relu_", "prelu", "prelu1", "gelu", "silu", "none"])
        args = {
            "cin": c,
            "cout": cout,
            "k": k,
            "groups": groups,
            "transposed": transposed,
            "norm": norm,
            "act": act,
        }
        return args, cout, h * 2 if transposed else h

    def image_block(self, c: int, h: int) -> tuple[dict, tuple]:
        r = self.rng
        kinds = ["conv"] * 3 + [
            "residual",
            "se",
            "cat",
            "split",
            "shuffle",
            "resize",
            "reuse",
            "tied_conv",
            "spatial_attn",
        ]
        kind = r.choice(kinds)
        if kind == "conv":
            args, c2, h2 = self.conv(c, h)
            return {"kind": kind, "args": args}, ("img", c2, h2)
        if kind == "residual":
            return {
                "kind": kind,
                "args": {"c": c, "mid": r.choice(WIDTHS), "op": r.choice(["add", "mul", "add_"])},
            }, ("img", c, h)
        if kind == "se":
            return {
                "kind": kind,
                "args": {"c": c, "mid": max(2, c // r.choice([2, 4])), "conv": r.random() < 0.5},
            }, ("img", c, h)
        if kind == "cat":
            a, b = r.choice(WIDTHS), r.choice(WIDTHS)
            return {"kind": kind, "args": {"c": c, "a": a, "b": b}}, ("img", a + b, h)
        if kind == "split":
            chunk = r.random() < 0.5
            glu = r.random() < 0.4
            a = r.choice(WIDTHS)
            sizes = [a, a] if chunk or glu else [a, r.choice(WIDTHS)]
            c2 = a if glu else sum(sizes)
            return {"kind": kind, "args": {"c": c, "sizes": sizes, "chunk": chunk, "glu": glu}}, (
                "img",
                c2,
                h,
            )
        if kind == "shuffle":
            groups = r.choice([[2], [3], [2, 2], [2, 3], [3, 2], [2, 4], [4, 2]])
            cout = math.lcm(*groups) * r.choice([1, 2, 3])
            return {"kind": kind, "args": {"c": c, "cout": cout, "groups": groups}}, ("img", cout, h)
        if kind == "resize":
            op = r.choice(["maxpool", "avgpool"]) if h >= 8 else r.choice(["nearest", "bilinear"])
            return {"kind": kind, "args": {"op": op}}, ("img", c, h // 2 if "pool" in op else h * 2)
        if kind in ("reuse", "tied_conv"):
            args = {"c": c} if kind == "reuse" else {"c": c, "serial": r.random() < 0.5}
            return {"kind": kind, "args": args}, ("img", c, h)
        return {"kind": "spatial_attn", "args": self.attention(c)}, ("img", c, h)

    def attention(self, e: int) -> dict:
        r = self.rng
        kind = r.choice(["mha", "sdpa", "sdpa"])
        heads = r.choice([g for g in (1, 2, 3, 4) if e % g == 0]) if kind == "mha" else r.choice([1, 2, 3, 4])
        head_dim = e // heads if kind == "mha" else r.choice([2, 3, 4])
        return {
            "e": e,
            "heads": heads,
            "head_dim": head_dim,
            "kind": kind,
            "fused": r.random() < 0.3,
            "merge": r.choice(["minus1", "attr"]),
            "ln": r.random() < 0.3,
            "residual": r.random() < 0.6,
        }

    def seq_block(self, e: int) -> tuple[dict, int]:
        r = self.rng
        if r.random() < 0.5:
            return {"kind": "attn", "args": self.attention(e)}, e
        mlp = r.random() < 0.5
        out = r.choice(WIDTHS)
        act = r.choice(["relu", "gelu", "silu", "none", "prelu"])
        return {
            "kind": "seq_linear",
            "args": {"e": e, "out": out, "act": act, "mlp": mlp, "ln": r.random() < 0.2},
        }, e if mlp else out


def program(seed: int) -> dict[str, Any]:
    """The random program of ``seed``: input, blocks (each {"kind", "args"}), head and output packing."""
    r = random.Random(seed)
    draw = _Draw(r)
    blocks: list[dict] = []
    if r.random() < 0.75:
        h = r.choice([8, 12, 16])
        stem, c, _ = draw.conv(3, h)
        stem.update(transposed=False, groups=1)  # the stem keeps the input's side
        inp = {"kind": "image", "c": 3, "h": h}
        blocks.append({"kind": "conv", "args": stem})
        for _ in range(r.randint(1, 4)):
            b, (_, c, h) = draw.image_block(c, h)
            blocks.append(b)
        state = ("img", c, h)
        if r.random() < 0.25:
            blocks.append({"kind": "to_tokens", "args": {}})
            state = ("seq", h * h, c)
    else:
        n, e = r.choice([4, 6, 8]), r.choice([8, 12, 16])
        inp = {"kind": "tokens", "vocab": r.choice([10, 20, 32]), "len": n, "dim": e}
        state = ("seq", n, e)
    if state[0] == "seq":
        _, n, e = state
        for _ in range(r.randint(1, 3)):
            b, e = draw.seq_block(e)
            blocks.append(b)
        kinds = ["seq_mean", "seq_flatten"]
        if inp["kind"] == "tokens":
            kinds.append("tied_lm")
            if e != inp["dim"] and "tied_lm" == r.choice(kinds):
                blocks.append(
                    {
                        "kind": "seq_linear",
                        "args": {"e": e, "out": inp["dim"], "act": "none", "mlp": False, "ln": False},
                    }
                )
                e = inp["dim"]
        kinds = [k for k in kinds if k != "tied_lm" or e == inp["dim"]]
        head = {"kind": r.choice(kinds), "c": e, "n": r.choice([3, 5]), "flat": n * e}
    else:
        _, c, h = state
        head = {"kind": r.choice(["gap", "flatten", "conv"]), "c": c, "n": r.choice([3, 5]), "flat": c * 4}
    return {
        "seed": seed,
        "input": inp,
        "blocks": blocks,
        "head": head,
        "output": r.choice(["tensor", "tensor", "tuple", "dict"]),
    }


def _randomize(model: nn.Module, gen: torch.Generator) -> None:
    """O(1) random weights and norm statistics, so no channel is trivially zero or equal to another."""
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_var":
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif leaf in ("running_mean", "bias") or leaf.endswith("_bias"):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.2)
            elif t.dim() <= 1:
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            else:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(max(1, fan_in)))


def build(prog: dict[str, Any]) -> tuple[nn.Module, torch.Tensor]:
    """The model of ``prog`` in eval mode, with its example input."""
    torch.manual_seed(prog["seed"])
    model = FuzzNet(prog).eval()
    gen = torch.Generator().manual_seed(prog["seed"])
    _randomize(model, gen)
    inp = prog["input"]
    if inp["kind"] == "tokens":
        x = torch.randint(0, inp["vocab"], (BATCH, inp["len"]), generator=gen)
    else:
        x = torch.randn(BATCH, inp["c"], inp["h"], inp["h"], generator=gen)
    return model, x


def describe(prog: dict[str, Any]) -> str:
    """One line per block: ``kind(arg=value, ...)``."""
    inp = prog["input"]
    if inp["kind"] == "tokens":
        first = f"tokens ({BATCH}, {inp['len']}) < {inp['vocab']} -> Embedding({inp['vocab']}, {inp['dim']})"
    else:
        first = f"image ({BATCH}, {inp['c']}, {inp['h']}, {inp['h']})"
    lines = [f"seed {prog['seed']}: {first}"]
    for i, b in enumerate(prog["blocks"]):
        args = ", ".join(f"{k}={v}" for k, v in b["args"].items())
        lines.append(f"  {i}: {b['kind']}({args})")
    h = prog["head"]
    lines.append(f"  head: {h['kind']}(c={h['c']}, n={h['n']}) -> {prog['output']}")
    return "\n".join(lines)
