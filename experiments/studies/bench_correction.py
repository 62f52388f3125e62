"""SemiHand's biomechanical label correction, measured: on noisy ground truth and on real networks' pseudo-labels.

SemiHand (Yang, Chen, Yao, ICCV 2021, Sec. 3.2) registers a hand template onto each pseudo-label. Whether that
helps depends on how good the labels already are. This script measures it twice, on real-style SynthHands v2:

1. **Noisy ground truth** (the paper's own check, its supplementary Sec. E): the true 2.5D pose of test hands
   plus noise (``--noise-px`` in 2D, ``--noise-mm`` in depth; one shared error plus a small jitter per
   perturbed view), through the pseudo-labeller with the :class:`~handssl.models.SemiHandModule` defaults
   (mean template scaled to the known hand scale, ray-constrained where the views agree, mirror check).
   Reported: error of the uncorrected label, of the pseudo-label (average of views and corrections) and of
   the corrected label ``r = P(p_hat)``; and of a bare 3D :func:`handssl.biomech.correct`.
2. **Networks**: the shipped SemiHand networks (``handssl.pretrained``) label real-style unlabelled images;
   the same three errors, by quartile of the uncorrected error, with the 2D error and the ratio of predicted
   to true bone lengths (how much the network hedges towards a small, average hand).

    python experiments/studies/bench_correction.py            # about 2 min on 2 cores
    python experiments/studies/bench_correction.py --quick    # a smoke test

Writes ``<out>/correction.md`` and ``<out>/correction.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import handssl.pretrained as pretrained
from handssl.biomech import correct
from handssl.data import SynthHands, SynthHandsWorld
from handssl.geometry import project
from handssl.kinematics import bone_lengths_of
from handssl.models.components.pose25d import encode_25d, lift_25d
from handssl.models.components.pseudo_labels import pseudo_label_errors
from handssl.skeleton import MIDDLE_MCP, root_relative

NETWORKS = ("semihand-source-only-synthhands", "semihand-synthhands", "semihand-oracle-synthhands")


def wrist_relative_error(joints: Tensor, target: Tensor) -> Tensor:
    """``(B,)`` mean joint error (mm) after moving both poses' wrists to the origin."""
    return (root_relative(joints) - root_relative(target)).norm(dim=-1).mean(-1)


def noisy_ground_truth(model: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows of part 1: the pseudo-labeller of ``model`` on noisy true poses, per noise level."""
    data = SynthHands(
        "test",
        world=SynthHandsWorld(style="real", image_size=64),
        num_subjects=args.subjects,
        frames_per_sequence=args.frames,
    )
    step = max(1, len(data) // args.items)
    items = [data[i] for i in range(0, len(data), step)][: args.items]
    joints = torch.stack([s["joints3d"] for s in items]).double()
    K = torch.stack([s["K"] for s in items]).double()
    depth, root_depth, scale = encode_25d(joints, MIDDLE_MCP)
    uv = project(joints, K)
    labeler = model.pseudo_labeler
    template = model.template.scaled(scale.float()).double()
    generator = torch.Generator().manual_seed(0)
    rows = []
    for noise_px, noise_mm in zip(args.noise_px, args.noise_mm, strict=True):
        shared_uv = noise_px * torch.randn(uv.shape, generator=generator, dtype=uv.dtype)
        shared_d = (noise_mm / scale[:, None]) * torch.randn(
            depth.shape, generator=generator, dtype=depth.dtype
        )
        views = 1 + args.perturbations
        jitter = args.view_jitter_px * torch.randn(
            (len(items), views, 21, 2), generator=generator, dtype=uv.dtype
        )
        uv_views = (uv + shared_uv)[:, None] + jitter
        depth_views = (depth + shared_d)[:, None].expand(-1, views, -1)
        labels = labeler(uv_views, depth_views, K, root_depth, scale, template)
        registered = lift_25d(labels.uv_registered, labels.depth_registered, K, root_depth, scale, MIDDLE_MCP)
        noisy = lift_25d(uv + shared_uv, depth + shared_d, K, root_depth, scale, MIDDLE_MCP)
        rows.append(
            {
                "noise_px": noise_px,
                "noise_mm": noise_mm,
                "raw_mm": float(wrist_relative_error(labels.joints3d_raw, joints).mean()),
                "pseudo_label_mm": float(wrist_relative_error(labels.joints3d, joints).mean()),
                "registered_mm": float(wrist_relative_error(registered, joints).mean()),
                "bare_correct_mm": float(
                    wrist_relative_error(correct(noisy, template=template), joints).mean()
                ),
                "noisy_mm": float(wrist_relative_error(noisy, joints).mean()),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def network_rows(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Part 2 for one shipped network: its pseudo-labels on real-style unlabelled images."""
    sys.path.insert(0, str(Path(__file__).parent))
    import semihand_ablation  # the ablation's own data: the same world and unlabelled images

    ablation = semihand_ablation.parse_args(
        ["--cache-dir", args.cache_dir] + (["--quick"] if args.quick else [])
    )
    # Every network labels through the full module's pseudo-labeller (correction on, its mean template).
    model = pretrained.load(NETWORKS[1])
    model.load_state_dict(pretrained.load(name).state_dict())
    dm = semihand_ablation.datamodule(ablation, "synthetic", 0.5)
    dm.setup("fit")
    raw, final, registered, uv_err, ratio, refused, accepted = [], [], [], [], [], [], []
    for i, batch in enumerate(dm.pseudo_label_dataloader()):
        if i >= args.batches:
            break
        with torch.no_grad():
            labels, _ = model.compute_pseudo_labels(batch)
        gt, K = batch["eval_joints3d"], batch["K"]
        errors = pseudo_label_errors(labels, gt, batch["eval_valid"])
        refused.append(labels.refused)
        accepted.append(labels.accepted)
        raw.append(errors["error_raw"])
        final.append(errors["error_final"])
        _, root_depth, scale = encode_25d(gt, MIDDLE_MCP)
        r = lift_25d(labels.uv_registered, labels.depth_registered, K, root_depth, scale, MIDDLE_MCP)
        registered.append(wrist_relative_error(r, gt))
        uv_err.append((labels.uv_raw - project(gt, K)).norm(dim=-1).mean(-1))
        ratio.append((bone_lengths_of(labels.joints3d_raw) / bone_lengths_of(gt)).mean(-1))
    raw_t, final_t, reg_t = torch.cat(raw), torch.cat(final), torch.cat(registered)
    kept, used = ~torch.cat(refused), torch.cat(accepted)
    edges = raw_t.quantile(torch.tensor([0.25, 0.5, 0.75], dtype=raw_t.dtype))
    bins = torch.bucketize(raw_t, edges)
    quartiles = [
        {
            "raw_mm": float(raw_t[bins == q].mean()),
            "pseudo_label_mm": float(final_t[bins == q].mean()),
            "registered_mm": float(reg_t[bins == q].mean()),
        }
        for q in range(4)
    ]
    row = {
        "network": name,
        "items": int(raw_t.numel()),
        "raw_mm": float(raw_t.mean()),
        "pseudo_label_mm": float(final_t.mean()),
        "registered_mm": float(reg_t.mean()),
        "uv_error_px": float(torch.cat(uv_err).mean()),
        "kept_fraction": float(kept.float().mean()),
        "kept_raw_mm": float(raw_t[kept].mean()),
        "kept_pseudo_label_mm": float(final_t[kept].mean()),
        "accepted_raw_mm": float(raw_t[used].mean()),
        "accepted_pseudo_label_mm": float(final_t[used].mean()),
        "bone_ratio": float(torch.cat(ratio).mean()),
        "quartiles": quartiles,
    }
    print(json.dumps(row), flush=True)
    return row


def change(before: float, after: float) -> str:
    return f"{100 * (after - before) / before:+.0f} %"


def write_markdown(noisy: list[dict], networks: list[dict], path: Path) -> None:
    lines = [
        "# SemiHand label correction on real-style SynthHands v2",
        "",
        "## 1. Noisy ground truth (pseudo-labeller defaults: mean template at the known scale, rays, mirror check)",
        "",
        "| 2D noise px | depth noise mm | uncorrected mm | pseudo-label mm | change | r = P(p_hat) mm | change "
        "| bare correct mm | change |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in noisy:
        lines.append(
            f"| {r['noise_px']:g} | {r['noise_mm']:g} | {r['raw_mm']:.1f} | {r['pseudo_label_mm']:.1f} | "
            f"{change(r['raw_mm'], r['pseudo_label_mm'])} | {r['registered_mm']:.1f} | "
            f"{change(r['raw_mm'], r['registered_mm'])} | {r['bare_correct_mm']:.1f} | "
            f"{change(r['noisy_mm'], r['bare_correct_mm'])} |"
        )
    lines += [
        "",
        "## 2. Shipped networks' pseudo-labels on real-style unlabelled images",
        "",
        "| network | items | 2D error px | bone length pred / true | uncorrected mm | pseudo-label mm | change "
        "| r mm | change | by quartile of uncorrected error: uncorrected -> pseudo-label mm |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in networks:
        quart = "; ".join(f"{q['raw_mm']:.0f} -> {q['pseudo_label_mm']:.0f}" for q in r["quartiles"])
        lines.append(
            f"| {r['network']} | {r['items']} | {r['uv_error_px']:.1f} | {r['bone_ratio']:.2f} | {r['raw_mm']:.1f} | "
            f"{r['pseudo_label_mm']:.1f} | {change(r['raw_mm'], r['pseudo_label_mm'])} | "
            f"{r['registered_mm']:.1f} | {change(r['raw_mm'], r['registered_mm'])} | {quart} |"
        )
    lines += [
        "",
        "The same labels restricted to those the correction does not refuse (mirror check, moved > 40 mm) and to",
        "those the confidence gate accepts (the labels the gated loss trains on), uncorrected -> pseudo-label mm:",
        "",
        "| network | kept | kept: uncorrected -> pseudo-label | change | accepted: uncorrected -> pseudo-label | change |",
        "|---|---|---|---|---|---|",
    ]
    for r in networks:
        lines.append(
            f"| {r['network']} | {r['kept_fraction']:.2f} | {r['kept_raw_mm']:.1f} -> {r['kept_pseudo_label_mm']:.1f} | "
            f"{change(r['kept_raw_mm'], r['kept_pseudo_label_mm'])} | {r['accepted_raw_mm']:.1f} -> "
            f"{r['accepted_pseudo_label_mm']:.1f} | {change(r['accepted_raw_mm'], r['accepted_pseudo_label_mm'])} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--noise-px", type=float, nargs="+", default=[1.0, 2.0, 3.0, 6.0])
    parser.add_argument("--noise-mm", type=float, nargs="+", default=[3.0, 5.0, 8.0, 15.0])
    parser.add_argument("--view-jitter-px", type=float, default=0.3, help="extra 2D noise per perturbed view")
    parser.add_argument("--perturbations", type=int, default=4)
    parser.add_argument("--items", type=int, default=256, help="noisy ground truth: test hands")
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8, help="networks: unlabelled batches of 64")
    parser.add_argument("--networks", nargs="*", default=list(NETWORKS))
    parser.add_argument("--cache-dir", default="runs/synthhands_cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/correction"))
    args = parser.parse_args(argv)
    if args.quick:
        args.items, args.subjects, args.frames, args.batches = 16, 1, 4, 1
        args.networks = args.networks[:1]
        args.out = args.out.with_name(args.out.name + "_quick")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    reference = pretrained.load(NETWORKS[1])  # any SemiHand module: its pseudo-labeller and mean template
    noisy = noisy_ground_truth(reference, args)
    networks = [network_rows(name, args) for name in args.networks]
    (args.out / "correction.json").write_text(json.dumps({"noisy": noisy, "networks": networks}, indent=1))
    write_markdown(noisy, networks, args.out / "correction.md")
    print((args.out / "correction.md").read_text())


if __name__ == "__main__":
    main()
