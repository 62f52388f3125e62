"""The "always predict the mean training pose" baseline for a config's data, next to a trained run's result.

Builds the DataModule of a config exactly as `handssl fit` would, averages the root-relative training poses
(camera frame), and reports that constant prediction's test MPJPE / N-MPJPE / PA-MPJPE / AUC. With
`--run DIR` it also prints the run's `test_metrics.json` beside it.

    python experiments/tools/mean_pose_baseline.py -c experiments/quickstart.yaml --run runs/quickstart/version_0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from handssl.cli import HandSSLCLI
from handssl.data.datamodules import HandDataModule
from handssl.metrics.functional import mpjpe, n_mpjpe, pa_mpjpe, pck_auc
from handssl.models.base import BaseHandTask
from handssl.skeleton import root_relative


def relative_targets(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    joints = batch["joints3d"]
    return root_relative(joints), batch["valid"].bool()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-c", "--config", required=True, help="handssl config whose data to use")
    parser.add_argument("--run", type=Path, default=None, help="run directory holding test_metrics.json")
    args = parser.parse_args()
    cli = HandSSLCLI(
        BaseHandTask,
        HandDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=["-c", args.config, "--trainer.logger=false"],
        parser_kwargs={"parser_mode": "omegaconf+"},
    )
    data = cli.datamodule
    total, count = torch.zeros(21, 3, dtype=torch.float64), torch.zeros(21, 1, dtype=torch.float64)
    for batch in tqdm(data.train_dataloader(), desc="mean training pose"):
        rel, valid = relative_targets(batch)
        total += (torch.nan_to_num(rel) * valid.unsqueeze(-1)).sum(0).double()
        count += valid.sum(0).unsqueeze(-1).double()
    mean_pose = (total / count.clamp_min(1)).float()
    preds, targets, valids = [], [], []
    for batch in tqdm(data.test_dataloader(), desc="test set"):
        rel, valid = relative_targets(batch)
        preds.append(mean_pose.expand_as(rel))
        targets.append(rel)
        valids.append(valid)
    pred, target, valid = torch.cat(preds), torch.cat(targets), torch.cat(valids)
    baseline = {
        "test/mpjpe": mpjpe(pred, target, valid).item(),
        "test/n_mpjpe": n_mpjpe(pred, target, valid).item(),
        "test/pa_mpjpe": pa_mpjpe(pred, target, valid).item(),
        "test/auc_20-50": pck_auc(pred, target, valid=valid).item(),
    }
    trained = json.loads((args.run / "test_metrics.json").read_text()) if args.run else {}
    trained.setdefault("test/auc_20-50", trained.get("test/synthhands/auc", float("nan")))
    print(f"| metric | mean training pose | {args.run or 'trained'} |\n|---|---|---|")
    for key, value in baseline.items():
        print(f"| {key} | {value:.3f} | {trained.get(key, float('nan')):.3f} |")


if __name__ == "__main__":
    main()
