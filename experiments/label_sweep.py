"""Label sweep: the three NVS regimes at several label fractions on SynthHands; N-MPJPE against the fraction.

For each fraction it trains ``supervised`` (encoder + pose head on the labeled frames), ``pretrained`` (stage 1
synthesis on all frames, run once and shared by every fraction; stage 2 the pose head on the frozen encoder)
and ``semi`` (everything jointly, labeled frames oversampled into every batch), then evaluates MPJPE,
N-MPJPE and PA-MPJPE on the test subjects. Wall time is recorded per run (training only, validation
excluded, batch loading included), as wall time and as this process's CPU time (steadier than wall time on a
shared machine); ``total_wall_s`` / ``total_cpu_s`` of ``pretrained`` add stage 1. A ``mean_pose`` row per
fraction gives the error of predicting the labeled subset's mean pose for every image. Every ``--eval-every`` steps the N-MPJPE on a
small validation set is recorded with the training time spent so far (``curves.csv``), which shows how long
each regime takes to reach a given accuracy.

    python experiments/label_sweep.py --fractions 0.01 0.05 --max-steps 300 --out experiments/results/label_sweep

Writes ``<out>/label_sweep.csv``, ``<out>/curves.csv``, ``<out>/label_sweep.png``, ``<out>/label_sweep.md``
and the stage-1 and semi checkpoints (for ``experiments/bench_nvs.py``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from handssl.data.multiview import MultiViewDataModule
from handssl.data.synthhands.multi_view import SynthHandsMultiView
from handssl.metrics.functional import mpjpe, n_mpjpe, pa_mpjpe
from handssl.models.nvs import NVSModule
from handssl.viz import new_figure

REGIMES = ("supervised", "pretrained", "semi")
BASELINE = "mean_pose"
SHARE = {"supervised": 1.0, "stage1": 0.0, "stage2": 1.0, "semi": 0.5}


class TrainClock(pl.Callback):
    """Training wall and CPU time without validation, and the validation N-MPJPE at each check.

    Batch loading happens between ``on_train_batch_end`` and the next ``on_train_batch_start``, so it is
    counted too (as the gap since the previous batch ended).
    """

    def __init__(self, offset_s: float = 0.0) -> None:
        self.offset_s = offset_s
        self.train_s = 0.0
        self.cpu_s = 0.0
        self.curve: list[tuple[int, float, float]] = []
        self._mark: tuple[float, float] | None = None

    def _now(self) -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def on_train_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._mark = self._now()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        now = self._now()
        if self._mark is not None:
            self.train_s += now[0] - self._mark[0]
            self.cpu_s += now[1] - self._mark[1]
        self._mark = now

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark = self._now()  # validation time is not training time
        value = trainer.callback_metrics.get("val/n_mpjpe")
        if value is not None and not trainer.sanity_checking:
            self.curve.append((trainer.global_step, self.offset_s + self.train_s, float(value)))


def datasets(args: argparse.Namespace) -> dict[str, SynthHandsMultiView]:
    common = {
        "image_size": args.image_size,
        "style": args.style,
        "seed": args.seed,
        "cache_mb": args.cache_mb,
    }
    return {
        "train": SynthHandsMultiView(split="train", num_subjects=args.train_subjects, **common),
        "val": SynthHandsMultiView(split="val", sequences_per_subject=1, frames_per_sequence=16, **common),
        "test": SynthHandsMultiView(split="test", sequences_per_subject=2, frames_per_sequence=32, **common),
    }


def run(
    args: argparse.Namespace,
    data: dict[str, SynthHandsMultiView],
    regime: str,
    fraction: float,
    share: float,
    steps: int,
    offset_s: float = 0.0,
    **model_args: Any,
) -> tuple[NVSModule, TrainClock, dict[str, float]]:
    pl.seed_everything(args.seed, verbose=False)
    module = NVSModule(
        regime=regime,
        image_size=args.image_size,
        lr=args.lr,
        scheduler="cosine",
        warmup_steps=min(50, steps // 10),
        **model_args,
    )
    dm = MultiViewDataModule(
        train=data["train"],
        val=data["val"],
        test=data["test"],
        label_fraction=max(fraction, 1e-9),
        labeled_share=share,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        seed=args.seed,
    )
    clock = TrainClock(offset_s)
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator=args.accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        val_check_interval=min(args.eval_every, steps),
        check_val_every_n_epoch=None,
        callbacks=[clock],
    )
    trainer.fit(module, datamodule=dm)
    metrics = trainer.test(module, datamodule=dm, verbose=False)[0]
    metrics["num_labeled"] = len(dm.labeled_indices)
    return module, clock, metrics


def mean_pose_metrics(
    args: argparse.Namespace, data: dict[str, SynthHandsMultiView], fraction: float
) -> dict:
    """Test errors of predicting the labeled subset's mean root-relative pose for every image (no model)."""
    dm = MultiViewDataModule(
        train=data["train"],
        test=data["test"],
        label_fraction=fraction,
        labeled_share=1.0,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    mean, _ = dm.pose_statistics()
    preds, targets, valids = [], [], []
    for batch in dm.test_dataloader():
        joints = batch["joints3d"]
        targets.append(joints - joints[:, :1])
        valids.append(batch["valid"])
        preds.append(mean.expand_as(joints))
    pred, target, valid = torch.cat(preds), torch.cat(targets), torch.cat(valids)
    return {
        "test/mpjpe": float(mpjpe(pred, target, valid)),
        "test/n_mpjpe": float(n_mpjpe(pred, target, valid)),
        "test/pa_mpjpe": float(pa_mpjpe(pred, target, valid)),
        "num_labeled": len(dm.labeled_indices),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.05, 0.1, 1.0])
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    parser.add_argument("--max-steps", type=int, default=300, help="steps of supervised, semi and stage 1")
    parser.add_argument(
        "--stage2-steps", type=int, default=None, help="steps of stage 2 (default --max-steps)"
    )
    parser.add_argument(
        "--eval-every", type=int, default=100, help="validation N-MPJPE every this many steps"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-subjects", type=int, default=None, help="SynthHands training subjects")
    parser.add_argument("--style", default="synthetic")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--cache-mb", type=float, default=1024.0)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("experiments/results/label_sweep"))
    parser.add_argument(
        "--replot", action="store_true", help="only redraw <out>/label_sweep.png from its CSV"
    )
    args = parser.parse_args(argv)
    if args.replot:
        with open(args.out / "label_sweep.csv") as f:
            rows = [
                {**r, "label_fraction": float(r["label_fraction"]), "test_n_mpjpe": float(r["test_n_mpjpe"])}
                for r in csv.DictReader(f)
            ]
        plot(args.out, rows)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    stage2_steps = args.stage2_steps or args.max_steps
    args.out.mkdir(parents=True, exist_ok=True)
    data = datasets(args)
    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []

    def record(
        regime: str,
        fraction: float,
        steps: int,
        clock: TrainClock,
        metrics: dict,
        total: float,
        total_cpu: float,
    ) -> None:
        row = {
            "regime": regime,
            "label_fraction": fraction,
            "num_labeled": metrics["num_labeled"],
            "steps": steps,
            "wall_s": round(clock.train_s, 1),
            "cpu_s": round(clock.cpu_s, 1),
            "total_wall_s": round(total, 1),
            "total_cpu_s": round(total_cpu, 1),
            "test_mpjpe": round(metrics.get("test/mpjpe", math.nan), 2),
            "test_n_mpjpe": round(metrics.get("test/n_mpjpe", math.nan), 2),
            "test_pa_mpjpe": round(metrics.get("test/pa_mpjpe", math.nan), 2),
            "test_synthesis_l1": round(metrics.get("test/synthesis_l1", math.nan), 4),
            "test_copy_input_l1": round(metrics.get("test/copy_input_l1", math.nan), 4),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        curves.extend(
            {
                "regime": regime,
                "label_fraction": fraction,
                "step": s,
                "train_s": round(t, 1),
                "val_n_mpjpe": round(v, 2),
            }
            for s, t, v in clock.curve
        )
        write(args.out, rows, curves)

    stage1_path, stage1_s, stage1_cpu = None, 0.0, 0.0
    if "pretrained" in args.regimes:
        stage1, clock, metrics = run(args, data, "pretrained", 0.0, SHARE["stage1"], args.max_steps, stage=1)
        stage1_path = args.out / "stage1.ckpt"
        torch.save({"state_dict": stage1.state_dict(), "hyper_parameters": dict(stage1.hparams)}, stage1_path)
        stage1_s, stage1_cpu = clock.train_s, clock.cpu_s
        print(
            json.dumps(
                {
                    "stage1_wall_s": round(stage1_s, 1),
                    "stage1_cpu_s": round(stage1_cpu, 1),
                    "test_synthesis_l1": metrics.get("test/synthesis_l1"),
                    "test_copy_input_l1": metrics.get("test/copy_input_l1"),
                }
            ),
            flush=True,
        )
    for fraction in args.fractions:
        record(BASELINE, fraction, 0, TrainClock(), mean_pose_metrics(args, data, fraction), 0.0, 0.0)
        if "supervised" in args.regimes:
            _, clock, metrics = run(args, data, "supervised", fraction, SHARE["supervised"], args.max_steps)
            record("supervised", fraction, args.max_steps, clock, metrics, clock.train_s, clock.cpu_s)
        if "pretrained" in args.regimes:
            _, clock, metrics = run(
                args,
                data,
                "pretrained",
                fraction,
                SHARE["stage2"],
                stage2_steps,
                offset_s=stage1_s,
                stage=2,
                pretrained_checkpoint=str(stage1_path),
            )
            record(
                "pretrained",
                fraction,
                args.max_steps + stage2_steps,
                clock,
                metrics,
                stage1_s + clock.train_s,
                stage1_cpu + clock.cpu_s,
            )
        if "semi" in args.regimes:
            semi, clock, metrics = run(args, data, "semi", fraction, SHARE["semi"], args.max_steps)
            torch.save(
                {"state_dict": semi.state_dict(), "hyper_parameters": dict(semi.hparams)},
                args.out / f"semi_{fraction:g}.ckpt",
            )
            record("semi", fraction, args.max_steps, clock, metrics, clock.train_s, clock.cpu_s)
    plot(args.out, rows)
    print(f"wrote {args.out}/label_sweep.csv, curves.csv, label_sweep.md, label_sweep.png")


def write(out: Path, rows: list[dict[str, Any]], curves: list[dict[str, Any]]) -> None:
    for name, table in (("label_sweep.csv", rows), ("curves.csv", curves)):
        if table:
            with open(out / name, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(table[0]))
                writer.writeheader()
                writer.writerows(table)
    if rows:
        keys = list(rows[0])
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
        (out / "label_sweep.md").write_text("\n".join(lines) + "\n")


def plot(out: Path, rows: list[dict[str, Any]]) -> None:
    figure = new_figure(6.0, 4.0)
    ax = figure.add_subplot()
    for regime in (*REGIMES, BASELINE):
        points = sorted((r["label_fraction"], r["test_n_mpjpe"]) for r in rows if r["regime"] == regime)
        if points:
            style = {"linestyle": "--", "color": "grey"} if regime == BASELINE else {}
            ax.plot([100 * p[0] for p in points], [p[1] for p in points], marker="o", label=regime, **style)
    ax.set_xscale("log")
    ticks = sorted({100 * r["label_fraction"] for r in rows})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labeled frames (%)")
    ax.set_ylabel("test N-MPJPE (mm)")
    ax.set_title("SynthHands: NVS regimes against the label fraction")
    ax.grid(True, alpha=0.3)
    ax.legend()
    figure.savefig(out / "label_sweep.png")


if __name__ == "__main__":
    main()
