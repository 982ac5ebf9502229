"""timm coverage: a broad sample of ``timm.list_models()`` (CNNs, ViTs, hybrids, MLPs), ``pretrained=False``,
small inputs, each checked with the exactness oracle (``prunekit.check`` at ratio 0.5). Writes section
``timm``
of docs/RESULTS.md with every failure and its reason.

    .venv/bin/python bench/bench_timm.py [--threads 1] [--no-write] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import check_each, common_args, finish, machine_line

from prunekit.structured import check
from prunekit.structured.randomize import randomize

# (name, family); input side 64 where the model takes ``img_size``, else its own default
SAMPLE = [
    ("resnet18", "CNN"), ("resnet50d", "CNN"), ("resnext26ts", "CNN"), ("seresnext26d_32x4d", "CNN"),
    ("skresnet18", "CNN"), ("res2net50_14w_8s", "CNN"), ("regnetx_002", "CNN"), ("regnety_002", "CNN"),
    ("efficientnet_b0", "CNN"), ("tf_efficientnet_lite0", "CNN"), ("mobilenetv2_050", "CNN"),
    ("mobilenetv3_small_050", "CNN"), ("mobilenetv4_conv_small", "CNN"), ("mnasnet_small", "CNN"),
    ("ghostnet_050", "CNN"), ("ghostnetv2_100", "CNN"), ("rexnet_100", "CNN"), ("densenet121", "CNN"),
    ("dla34", "CNN"), ("dpn48b", "CNN"), ("cspresnet50", "CNN"), ("cspdarknet53", "CNN"),
    ("darknet17", "CNN"), ("vgg11", "CNN"), ("repvgg_a0", "CNN"), ("hrnet_w18_small", "CNN"),
    ("inception_v3", "CNN"), ("xception41", "CNN"), ("ese_vovnet19b_dw", "CNN"), ("selecsls42b", "CNN"),
    ("tresnet_m", "CNN"), ("nf_resnet26", "CNN"), ("dm_nfnet_f0", "CNN"), ("hgnetv2_b0", "CNN"),
    ("convnext_atto", "CNN"), ("convnextv2_atto", "CNN"), ("starnet_s1", "CNN"),
    ("inception_next_atto", "CNN"), ("lcnet_050", "CNN"), ("fbnetv3_b", "CNN"),
    ("vit_tiny_patch16_224", "ViT"), ("deit_tiny_patch16_224", "ViT"), ("deit3_small_patch16_224", "ViT"),
    ("vit_small_patch16_rope_224", "ViT"), ("eva02_tiny_patch14_224", "ViT"),
    ("beit_base_patch16_224", "ViT"), ("cait_xxs24_224", "ViT"), ("flexivit_small", "ViT"),
    ("vit_relpos_small_patch16_224", "ViT"), ("xcit_nano_12_p16_224", "ViT"), ("crossvit_tiny_240", "ViT"),
    ("pit_ti_224", "ViT"), ("swin_tiny_patch4_window7_224", "ViT"), ("swinv2_cr_tiny_224", "ViT"),
    ("pvt_v2_b0", "ViT"), ("twins_pcpvt_small", "ViT"), ("tiny_vit_5m_224", "ViT"),
    ("levit_128s", "hybrid"), ("mobilevit_xxs", "hybrid"), ("mobilevitv2_050", "hybrid"),
    ("efficientformer_l1", "hybrid"), ("efficientformerv2_s0", "hybrid"), ("edgenext_xx_small", "hybrid"),
    ("fastvit_t8", "hybrid"), ("efficientvit_b0", "hybrid"), ("efficientvit_m0", "hybrid"),
    ("coat_lite_tiny", "hybrid"), ("convit_tiny", "hybrid"), ("poolformer_s12", "MLP/meta"),
    ("poolformerv2_s12", "MLP/meta"), ("resmlp_12_224", "MLP/meta"), ("mixer_s16_224", "MLP/meta"),
    ("gmlp_ti16_224", "MLP/meta"), ("sequencer2d_s", "MLP/meta"), ("mambaout_femto", "MLP/meta"),
    ("davit_tiny", "hybrid"), ("focalnet_tiny_srf", "hybrid"), ("gcvit_xxtiny", "hybrid"),
    ("maxvit_pico_rw_256", "hybrid"), ("coatnet_nano_rw_224", "hybrid"), ("nextvit_small", "hybrid"),
    ("rdnet_tiny", "CNN"),
]  # fmt: skip


# diagnosed causes of the failures seen (printed next to the raw error)
EXPLAIN: dict[str, str] = {}


def build(name: str):
    import timm

    try:
        model = timm.create_model(name, pretrained=False, img_size=64).eval()
        with torch.no_grad():
            model(torch.randn(1, 3, 64, 64))
        side = 64
    except (TypeError, RuntimeError, AssertionError):  # no img_size, or 64 too small: the default size
        model = timm.create_model(name, pretrained=False)
        side = timm.get_pretrained_cfg(name).input_size[-1] if timm.get_pretrained_cfg(name) else 224
    return model.eval(), side


def one(name: str) -> dict:
    t0 = time.perf_counter()
    try:
        model, side = build(name)
    except Exception as exc:
        return {"name": name, "status": "build", "why": f"{type(exc).__name__}: {exc}".splitlines()[0][:160]}
    torch.manual_seed(0)
    randomize(model)
    x = torch.randn(1, 3, side, side)
    try:
        rep = check(model, x, ratio=0.5)
    except Exception as exc:
        return {
            "name": name,
            "side": side,
            "status": "error",
            "why": f"{type(exc).__name__}: {exc}".splitlines()[0][:200],
            "seconds": time.perf_counter() - t0,
        }
    pinned_reasons = sorted({r.split(": ", 1)[-1] for g in rep.pinned for r in g["reasons"]})
    return {
        "name": name,
        "side": side,
        "status": "ok" if rep.ok and not rep.rule_errors else "inexact",
        "max_abs_err": rep.max_abs_err,
        "tolerance": rep.tolerance,
        "macs_ratio": rep.macs_ratio,
        "params_ratio": rep.params_ratio,
        "prunable": rep.n_prunable_groups,
        "groups": rep.n_groups,
        "rule_errors": rep.rule_errors[:2],
        "pinned_reasons": pinned_reasons[:3],
        "seconds": time.perf_counter() - t0,
    }


def markdown(rows: list[dict], machine: str) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    lines = [
        "## timm coverage (structured pruning, exactness oracle)",
        "",
        f"`bench/bench_timm.py`. {machine} {len(rows)} models sampled across families from "
        "`timm.list_models()`, `pretrained=False`, weights randomised (so no channel is trivially zero), "
        "input 1×3×64×64 where the model takes `img_size` (else its default). Each row is "
        "`prunekit.check(model, x, ratio=0.5)`: the physically pruned copy vs the masked reference "
        f"(tolerance 1e-4 relative). **{len(ok)}/{len(rows)} exact**"
        + ("; the rest are explained below." if len(ok) < len(rows) else "."),
        "",
        "| model | family | input | status | MACs ratio | params ratio | prunable / groups | max abs err "
        "| s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    fam = dict(SAMPLE)
    for r in rows:
        if r["status"] in ("ok", "inexact"):
            lines.append(
                f"| {r['name']} | {fam.get(r['name'], '')} | {r['side']} | {r['status']} | "
                f"{r['macs_ratio']:.3f} | {r['params_ratio']:.3f} | {r['prunable']} / {r['groups']} | "
                f"{r['max_abs_err']:.1e} | {r['seconds']:.1f} |"
            )
        else:
            lines.append(
                f"| {r['name']} | {fam.get(r['name'], '')} | {r.get('side', '—')} | {r['status']} "
                "| — | — | — "
                f"| — | {r.get('seconds', 0):.1f} |"
            )
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        lines += ["", "Failures:", ""]
        for r in bad:
            why = (
                r.get("why")
                or f"max abs err {r.get('max_abs_err')} > {r.get('tolerance')}; {r.get('rule_errors')}"
            )
            cause = f" — **why:** {EXPLAIN[r['name']]}" if r["name"] in EXPLAIN else ""
            lines.append(f"- `{r['name']}` ({r['status']}): {why}{cause}")
    low = [r for r in ok if r["macs_ratio"] > 0.95]
    if low:
        lines += ["", "Exact but (almost) nothing prunable (MACs ratio > 0.95), with the pin reasons:", ""]
        for r in low:
            lines.append(f"- `{r['name']}`: {'; '.join(r['pinned_reasons']) or 'no prunable groups'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[common_args(threads=1)])
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--jobs", type=int, default=1, help="models checked in parallel processes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import timm

    rows = check_each(args.only or [n for n, _ in SAMPLE], one, jobs=args.jobs)
    machine = machine_line(1 if args.jobs > 1 else torch.get_num_threads(), timm=timm.__version__)
    finish("timm", markdown(rows, machine), args, write=not args.only)


if __name__ == "__main__":
    main()
