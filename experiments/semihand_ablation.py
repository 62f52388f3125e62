"""SemiHand ablation on SynthHands v2 (synthetic-style labelled -> real-style unlabelled), like the paper's table.

SemiHand: Yang, Chen, Yao, "SemiHand: Semi-supervised Hand Pose Estimation with Consistency", ICCV 2021.

Rows (all scored on the real-style *test* subjects: MPJPE and PA-MPJPE in mm, AUC of the 3D PCK over
20-50 mm, wrist-relative, 2.5D lifted with the known root depth and scale, the paper's protocol):

* ``mean_pose``: the mean wrist-relative pose of the labelled training hands (a floor every row must beat);
* ``source_only``: stage 1, labelled synthetic-style images only (``L_sup``); evaluated with its teacher, the
  network stage 2 starts from (stage 2 continues the teacher and its EMA count);
* ``oracle``: the same network trained as long on *real-style* labels (the target oracle);
* ``consistency``, ``pseudo_labels`` (no correction), ``full`` (+ correction, Eq. 6's ``l(r, p)``): stage 2 from
  the source-only checkpoint with the components switched on one after the other (mean teacher);
* optional ``rounds`` (the paper's offline rounds), ``tau_none`` / ``tau_all`` (accept no / every label).

For every row the pseudo-labels of its network on the unlabelled real-style images are scored against their
(unused) annotation without and with correction (``pl_raw_mm``, ``pl_corrected_mm``; the same labeller, the
mean template, for every row). The gate of issue 10: ``full`` closes >= 35 % of the MPJPE gap between
``source_only`` and ``oracle`` (``gap_closed``).

Resumable: each row is appended to ``<out>/<tag>.csv`` as it finishes (with its checkpoint in the work folder)
and skipped when the script runs again; ``--budget-min`` stops starting rows once the time is spent.

    python experiments/semihand_ablation.py --quick                 # smoke run, about 2 min on 2 cores
    python experiments/semihand_ablation.py --threads 2             # the full table
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytorch_lightning as pl
import torch

from handssl.data import SemiSupervisedDataModule
from handssl.data.synthhands import SynthHands
from handssl.metrics.functional import mpjpe, pa_mpjpe, pck_auc
from handssl.models import SemiHandModule
from handssl.models.components.pseudo_label_pass import label_unlabeled_set

SEMI = {
    "consistency": dict(use_consistency=True, use_pseudo_labels=False, use_correction=False),
    "pseudo_labels": dict(use_consistency=True, use_pseudo_labels=True, use_correction=False),
    "full": dict(use_consistency=True, use_pseudo_labels=True, use_correction=True),
    "rounds": dict(use_consistency=True, use_pseudo_labels=True, use_correction=True, mode="rounds"),
    "tau_none": dict(use_consistency=True, use_pseudo_labels=True, use_correction=True, accept_fraction=0.0),
    "tau_all": dict(use_consistency=True, use_pseudo_labels=True, use_correction=True, accept_fraction=1.0),
}
TITLES = {
    "mean_pose": "mean pose",
    "source_only": "source-only",
    "oracle": "target oracle (real-style labels)",
    "consistency": "+ consistency (vc + cc)",
    "pseudo_labels": "+ pseudo-labels (no correction)",
    "full": "+ correction (full SemiHand, mean teacher)",
    "rounds": "full SemiHand, offline rounds",
    "tau_none": "full, accept no label",
    "tau_all": "full, accept every label",
}
DEFAULT_ROWS = "mean_pose,source_only,oracle,consistency,pseudo_labels,full"
FIELDS = (
    "row",
    "title",
    "mpjpe",
    "pa_mpjpe",
    "auc_20_50",
    "pl_raw_mm",
    "pl_corrected_mm",
    "accept_rate",
    "refused_rate",
    "steps",
    "seconds",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated, from {', '.join(TITLES)}")
    parser.add_argument("--quick", action="store_true", help="tiny world and a few steps (a smoke test)")
    parser.add_argument("--pretrain-steps", type=int, default=2000, help="source-only (and oracle) steps")
    parser.add_argument("--finetune-steps", type=int, default=1000, help="stage-2 steps per row")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument("--accept-fraction", type=float, default=0.3)
    parser.add_argument("--widths", default="16,32,64,128")
    parser.add_argument("--train-subjects", type=int, default=16)
    parser.add_argument("--test-subjects", type=int, default=4)
    parser.add_argument(
        "--frames", type=int, default=64, help="frames per sequence (4 sequences per subject)"
    )
    parser.add_argument("--eval-items", type=int, default=1024, help="test items scored (0: all)")
    parser.add_argument("--pl-batches", type=int, default=8, help="unlabelled batches of 64 scored per row")
    parser.add_argument("--target", default="real", choices=("real", "real_object"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-min", type=float, default=None, help="start no row after this many minutes")
    parser.add_argument("--cache-dir", default=None, help="disk cache of rendered SynthHands views")
    parser.add_argument(
        "--work-dir", default=None, help="checkpoints and logs (default: runs/semihand_ablation/<tag>)"
    )
    parser.add_argument("--out", default="experiments/results/semihand_ablation")
    parser.add_argument(
        "--tag", default=None, help="file stem (default: semihand_ablation_<target>_seed<seed>)"
    )
    args = parser.parse_args(argv)
    args.tag = args.tag or f"semihand_ablation_{args.target}_seed{args.seed}"
    args.work_dir = args.work_dir or str(Path("runs/semihand_ablation") / args.tag)
    if args.quick:
        args.pretrain_steps, args.finetune_steps = 20, 10
        args.train_subjects, args.test_subjects, args.frames = 1, 1, 16
        args.eval_items, args.pl_batches, args.batch_size = 32, 1, 16
        args.work_dir, args.out = args.work_dir + "_quick", args.out + "_quick"
    args.cache_dir = args.cache_dir or str(Path(args.work_dir) / "render_cache")
    return args


def synthhands(args: argparse.Namespace, split: str, style: str, subjects: int) -> SynthHands:
    return SynthHands(
        split,
        style,
        image_size=64,
        num_subjects=subjects,
        frames_per_sequence=args.frames,
        seed=args.seed,
        cache_dir=args.cache_dir,
    )


def datamodule(args: argparse.Namespace, labeled_style: str, fraction: float) -> SemiSupervisedDataModule:
    test = synthhands(args, "test", args.target, args.test_subjects)
    if args.eval_items and args.eval_items < len(test):
        step = len(test) / args.eval_items
        test = torch.utils.data.Subset(test, [int(i * step) for i in range(args.eval_items)])
    return SemiSupervisedDataModule(
        labeled=[synthhands(args, "train", labeled_style, args.train_subjects)],
        unlabeled=[synthhands(args, "train", args.target, args.train_subjects)],
        val=None,
        test=[test],
        image_size=64,
        batch_size=args.batch_size,
        unlabeled_fraction=fraction,
        eval_batch_size=64,
        seed=args.seed,
    )


def network(args: argparse.Namespace, **overrides: Any) -> SemiHandModule:
    widths = tuple(int(w) for w in args.widths.split(","))
    options: dict[str, Any] = dict(
        backbone_widths=widths,
        backbone_blocks=(1,) * len(widths),
        decoder_channels=32,
        image_size=64,
        use_consistency=False,
        use_pseudo_labels=False,
        use_correction=False,
        accept_fraction=args.accept_fraction,
        ema_decay=0.99,
        lr=args.lr,
        warmup_steps=50,
        eval_network="teacher",
        pseudo_label_lifting="known",
    )
    options.update(overrides)
    return SemiHandModule(**options)


def fit(
    args: argparse.Namespace, model: SemiHandModule, dm: SemiSupervisedDataModule, steps: int, name: str
) -> Path:
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=pl.loggers.CSVLogger(args.work_dir, name=name),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=25,
    )
    trainer.fit(model, dm)
    path = Path(args.work_dir) / f"{name}.ckpt"
    trainer.save_checkpoint(path)
    return path


@torch.no_grad()
def test_scores(predict: Any, dm: SemiSupervisedDataModule) -> dict[str, float]:
    dm.setup("test")
    preds, targets, valids = [], [], []
    for batch in dm.test_dataloader():
        preds.append(predict(batch))
        target = batch["joints3d"]
        targets.append(target - target[:, :1])
        valids.append(batch["valid"].bool())
    pred, target, valid = torch.cat(preds), torch.cat(targets), torch.cat(valids)
    return {
        "mpjpe": float(mpjpe(pred, target, valid)),
        "pa_mpjpe": float(pa_mpjpe(pred, target, valid)),
        "auc_20_50": float(pck_auc(pred, target, 20.0, 50.0, 20, valid)),
    }


@torch.no_grad()
def pseudo_label_scores(
    args: argparse.Namespace, model: SemiHandModule, dm: SemiSupervisedDataModule
) -> dict:
    """Pseudo-label error of ``model``'s teacher without / with correction (the default mean template)."""
    scorer = network(args, use_correction=True)
    scorer.load_state_dict(model.state_dict(), strict=False)
    scorer.template.load_state(model.template.state())
    scorer.eval()
    table = label_unlabeled_set(scorer, dm, max_batches=args.pl_batches)
    mean = lambda x: float(x[torch.isfinite(x)].mean())  # noqa: E731
    return {
        "pl_raw_mm": mean(table["error_raw_mm"]),
        "pl_corrected_mm": mean(table["error_final_mm"]),
        "accept_rate": float(table["accepted"].float().mean()),
        "refused_rate": float(table["refused"].float().mean()),
    }


def run_row(args: argparse.Namespace, row: str) -> dict[str, Any]:
    start = time.time()
    result: dict[str, Any] = {"row": row, "title": TITLES[row], "steps": 0}
    if row == "mean_pose":
        dm = datamodule(args, "synthetic", 0.0)
        labeled = dm.labeled
        joints = torch.stack(
            [labeled[i]["joints3d"] for i in range(0, len(labeled), max(1, len(labeled) // 128))]
        )
        mean_pose = (joints - joints[:, :1]).mean(0)
        result.update(test_scores(lambda b: mean_pose.expand(b["image"].shape[0], -1, -1), dm))
    else:
        source = Path(args.work_dir) / "source_only.ckpt"
        if row == "source_only":
            dm = datamodule(args, "synthetic", 0.0)
            model = network(args)
            fit(args, model, dm, args.pretrain_steps, row)
            result["steps"] = args.pretrain_steps
        elif row == "oracle":
            dm = datamodule(args, args.target, 0.0)
            model = network(args)
            fit(args, model, dm, args.pretrain_steps + args.finetune_steps, row)
            result["steps"] = args.pretrain_steps + args.finetune_steps
        else:
            if not source.is_file():
                raise SystemExit(f"row {row} needs the source_only row first ({source} missing)")
            dm = datamodule(args, "synthetic", 0.5)
            model = network(
                args, init_checkpoint=str(source), lr=args.finetune_lr, warmup_steps=0, **SEMI[row]
            )
            fit(args, model, dm, args.finetune_steps, row)
            result["steps"] = args.finetune_steps
        model.eval()
        result.update(test_scores(model.predict_joints3d, dm))
        result.update(pseudo_label_scores(args, model, datamodule(args, "synthetic", 0.5)))
    result["seconds"] = round(time.time() - start, 1)
    return result


def load_rows(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {r["row"]: r for r in csv.DictReader(handle)}


def write_markdown(args: argparse.Namespace, rows: dict[str, dict[str, Any]], path: Path) -> None:
    fmt = lambda v, d=1: "" if v in (None, "") else f"{float(v):.{d}f}"  # noqa: E731
    lines = [
        f"# SemiHand ablation, SynthHands v2 synthetic -> {args.target} (seed {args.seed})",
        "",
        "| row | MPJPE mm | PA-MPJPE mm | AUC 20-50 | pseudo-label mm raw | corrected | accepted | refused | steps | s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        lines.append(
            f"| {r['title']} | {fmt(r['mpjpe'])} | {fmt(r['pa_mpjpe'])} | {fmt(r['auc_20_50'], 3)} | "
            f"{fmt(r.get('pl_raw_mm'))} | {fmt(r.get('pl_corrected_mm'))} | {fmt(r.get('accept_rate'), 2)} | "
            f"{fmt(r.get('refused_rate'), 2)} | {r['steps']} | {fmt(r['seconds'], 0)} |"
        )
    if {"source_only", "oracle", "full"} <= set(rows):
        s, o, f = (float(rows[k]["mpjpe"]) for k in ("source_only", "oracle", "full"))
        closed = (s - f) / (s - o) if s != o else float("nan")
        lines += ["", f"Gap closed by full SemiHand: {closed:.0%} (gate: >= 35 %)."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, workers=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{args.tag}.csv"
    done = load_rows(csv_path)
    start = time.time()
    for row in [r.strip() for r in args.rows.split(",") if r.strip()]:
        if row not in TITLES:
            raise SystemExit(f"unknown row {row!r}; choose from {', '.join(TITLES)}")
        if row in done:
            print(f"{row}: done already, skipped")
            continue
        if args.budget_min is not None and time.time() - start > 60 * args.budget_min:
            print(f"budget of {args.budget_min} min spent; stopping before {row} (run again to resume)")
            break
        result = run_row(args, row)
        new = not csv_path.is_file()
        with open(csv_path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(result)
        done[row] = {k: str(v) for k, v in result.items()}
        print(
            f"{row}: " + ", ".join(f"{k}={v}" for k, v in result.items() if k not in ("row", "title")),
            flush=True,
        )
    write_markdown(args, done, out / f"{args.tag}.md")
    print((out / f"{args.tag}.md").read_text())


if __name__ == "__main__":
    main()
