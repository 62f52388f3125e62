"""Health of a SemiHand 2.5D network on SynthHands: 2D error, depth correlation, bone ratio, heatmap peak, axes.

For a checkpoint (``handssl fit`` or ``trainer.save_checkpoint``) or a shipped name, on SynthHands crops of the
chosen splits and styles (the labelled training subjects and the validation / test subjects), scored with
:func:`handssl.metrics.health.pose25d_health` plus MPJPE (root-relative, lifted with the known root depth and
scale, the paper's protocol) and the mean pose's MPJPE on the same crops (the floor every network must beat).

    python experiments/tools/health25d.py semihand-source-only-synthhands
    python experiments/tools/health25d.py runs/x/version_0/checkpoints/last.ckpt --sets test:synthetic,test:real \\
        --items 512 --out experiments/results/health/x.json

Gates of issue 20 (source-only on synthetic-style *test* crops): 2D error <= 4.5 px at 64 px, depth
correlation >= 0.8, bone ratio in [0.9, 1.1].
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch
from torch.utils.data import DataLoader, Subset

from handssl.data.datamodules import collate_samples
from handssl.data.synthhands import SynthHands, SynthHandsWorld
from handssl.metrics.functional import mpjpe
from handssl.metrics.health import HEALTH_KEYS
from handssl.models import SemiHandModule
from handssl.skeleton import root_relative

DEFAULT_SETS = "train:synthetic,val:synthetic,val:real,test:synthetic,test:real"


def load_model(name_or_path: str) -> SemiHandModule:
    """A SemiHandModule from a shipped name or a checkpoint file, in eval mode on the CPU."""
    from handssl import pretrained

    if not Path(name_or_path).is_file() and name_or_path in pretrained.available():
        model = pretrained.load(name_or_path)
    else:
        if not Path(name_or_path).is_file():
            raise SystemExit(
                f"health25d: {name_or_path!r} is neither a checkpoint file nor a shipped name "
                f"({', '.join(pretrained.available())})"
            )
        model = SemiHandModule.load_from_checkpoint(name_or_path, map_location="cpu")
    if not isinstance(model, SemiHandModule):
        raise SystemExit(f"health25d: {name_or_path} is a {type(model).__name__}, not a SemiHandModule")
    return model.eval()


def crops(split: str, style: str, items: int, seed: int) -> Subset:
    """``items`` evenly spaced crops of a SynthHands split (the labelled training subjects for ``train``)."""
    options: dict[str, Any] = dict(extra_keys=[])
    if split == "train":  # the labelled subjects of experiments/data/synthhands_synthetic_to_real.yaml
        options.update(num_subjects=16, first_subject=0, frames_per_sequence=128)
    dataset = SynthHands(split, world=SynthHandsWorld(style=style, seed=seed), **options)
    step = max(1, len(dataset) // items)
    return Subset(dataset, list(range(0, len(dataset), step))[:items])


@torch.no_grad()
def evaluate(model: SemiHandModule, dataset: Subset, mean_pose: torch.Tensor | None) -> dict[str, float]:
    """Health, MPJPE (known root and scale) and the mean pose's MPJPE over ``dataset``."""
    sums: dict[str, float] = {}
    batches = 0
    preds, targets, valids = [], [], []
    for batch in DataLoader(dataset, batch_size=64, collate_fn=collate_samples):
        out = model.eval_model(batch["image"])
        for key, value in model.health(out, batch).items():
            sums[key] = sums.get(key, 0.0) + float(value)
        batches += 1
        preds.append(root_relative(model.lift_known(out, batch)))
        targets.append(root_relative(batch["joints3d"]))
        valids.append(batch["valid"].bool())
    pred, target, valid = torch.cat(preds), torch.cat(targets), torch.cat(valids)
    result = {key: sums[key] / batches for key in HEALTH_KEYS}
    result["mpjpe"] = float(mpjpe(pred, target, valid))
    if mean_pose is not None:
        result["mean_pose_mpjpe"] = float(mpjpe(mean_pose.expand_as(target), target, valid))
    return result


def training_mean_pose(seed: int, items: int = 512) -> torch.Tensor:
    """Mean wrist-relative pose of the labelled training crops (camera frame of each crop)."""
    dataset = crops("train", "synthetic", items, seed)
    joints = torch.stack([dataset[i]["joints3d"] for i in range(len(dataset))])
    return root_relative(joints).mean(0)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="checkpoint file or shipped name")
    parser.add_argument("--sets", default=DEFAULT_SETS, help="comma-separated split:style pairs")
    parser.add_argument("--items", type=int, default=512, help="crops per set")
    parser.add_argument("--seed", type=int, default=0, help="SynthHands world seed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    mean_pose = training_mean_pose(args.seed)
    results: dict[str, dict[str, float]] = {}
    for pair in args.sets.split(","):
        split, _, style = pair.partition(":")
        results[pair] = evaluate(model, crops(split, style, args.items, args.seed), mean_pose)
    keys = [*HEALTH_KEYS, "mpjpe", "mean_pose_mpjpe"]
    print(f"{args.model}")
    print("| set | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for pair, row in results.items():
        print(f"| {pair} | " + " | ".join(f"{row[k]:.3g}" for k in keys) + " |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps({"model": args.model, "items": args.items, "sets": results}, indent=1)
        )
    return results


if __name__ == "__main__":
    main()
