"""SemiHand ablation on SynthHands (synthetic-style labelled -> real-style unlabelled), a table like the paper's.

Stage 1 trains the source-only network (L_sup on labelled synthetic-style images). Stage 2 fine-tunes copies
of it for the same number of steps with the components switched on one after the other:

* ``baseline``: source-only, continued for the fine-tuning steps (same compute, no unlabelled data);
* ``+ consistency``: view consistency (pose + mask equivariance) and cross-modal consistency;
* ``+ pseudo-labels``: plus the gated pseudo-labels, without biomechanical correction;
* ``+ correction``: plus correction inside the pseudo-labels (full SemiHand).

Every row is evaluated on the real-style *test* subjects (wrist-relative 3D error with the known root depth
and scale, the paper's protocol; AUC over 20-50 mm) and its pseudo-labels on the unlabelled real-style
training images are scored against their (unused) annotation, before and after correction.

Writes ``<out>/semihand_ablation.csv`` and ``<out>/semihand_ablation.md`` and prints the table.

    python experiments/semihand_ablation.py                       # default budget (about an hour on 1 CPU core)
    python experiments/semihand_ablation.py --pretrain-steps 100 --finetune-steps 50 --rows baseline,full
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytorch_lightning as pl
import torch

from handssl.data.semi import SemiSupervisedDataModule
from handssl.data.synthhands.single_view import SynthHands
from handssl.models.components.pose25d import encode_25d, lift_25d
from handssl.models.components.pseudo_labels import PseudoLabeler
from handssl.models.semihand import SemiHandModule, _default_corrector

ROWS: dict[str, dict[str, Any]] = {
    "baseline": {"use_consistency": False, "use_pseudo_labels": False, "use_correction": False},
    "consistency": {"use_consistency": True, "use_pseudo_labels": False, "use_correction": False},
    "pseudo_labels": {"use_consistency": True, "use_pseudo_labels": True, "use_correction": False},
    "correction": {"use_consistency": True, "use_pseudo_labels": True, "use_correction": True},
    "pseudo_labels_tau_inf": {
        "use_consistency": True,
        "use_pseudo_labels": True,
        "use_correction": False,
        "threshold": math.inf,
    },
    "correction_tau_inf": {
        "use_consistency": True,
        "use_pseudo_labels": True,
        "use_correction": True,
        "threshold": math.inf,
    },
    "pseudo_only": {"use_consistency": False, "use_pseudo_labels": True, "use_correction": True},
    "rounds": {"use_consistency": True, "use_pseudo_labels": True, "use_correction": True, "mode": "rounds"},
}
TITLES = {
    "pretrained": "source-only (stage 1)",
    "baseline": "baseline (source-only, continued)",
    "consistency": "+ consistency (vc + cc)",
    "pseudo_labels": "+ pseudo-labels (no correction)",
    "correction": "+ correction (SemiHand, mean teacher)",
    "pseudo_labels_tau_inf": "+ pseudo-labels (no correction), tau = inf",
    "correction_tau_inf": "+ correction, tau = inf",
    "pseudo_only": "pseudo-labels + correction, no consistency",
    "rounds": "SemiHand, offline rounds",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--finetune-steps", type=int, default=500)
    parser.add_argument("--rows", default="baseline,consistency,pseudo_labels,correction")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--unlabeled-fraction", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=2e-3, help="stage-1 learning rate")
    parser.add_argument("--finetune-lr", type=float, default=5e-4)
    parser.add_argument("--threshold", type=float, default=1.5, help="tau on the pseudo-label spread")
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument(
        "--pseudo-label-lifting",
        default="known",
        choices=("known", "predicted"),
        help="root depth / scale used to lift pseudo-labels for correction (known: the paper's assumption)",
    )
    parser.add_argument(
        "--pretrained", default=None, help="reuse a stage-1 checkpoint (skips stage 1 and its row)"
    )
    parser.add_argument(
        "--merge", nargs="*", default=None, help="only merge these result CSVs into one table"
    )
    parser.add_argument(
        "--score-pseudo-labels",
        default=None,
        metavar="CKPT",
        help="only score a checkpoint's pseudo-labels (raw vs corrected) on synthetic-style and real-style crops",
    )
    parser.add_argument("--widths", default="16,32,64,128", help="backbone stage widths")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-subjects", type=int, default=8)
    parser.add_argument("--test-subjects", type=int, default=4)
    parser.add_argument("--sequences", type=int, default=4, help="sequences per subject")
    parser.add_argument("--frames", type=int, default=64, help="frames per sequence")
    parser.add_argument("--eval-items", type=int, default=1024, help="test items evaluated (0: all)")
    parser.add_argument(
        "--pl-items", type=int, default=512, help="unlabelled items whose pseudo-labels are scored"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the SynthHands world and of stage 1")
    parser.add_argument("--finetune-seed", type=int, default=None, help="seed of stage 2 (default: seed + 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default=None, help="disk cache of rendered SynthHands views")
    parser.add_argument("--work-dir", default="runs/semihand_ablation")
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--tag", default="semihand_ablation", help="file stem of the CSV and markdown tables")
    return parser.parse_args(argv)


def datasets(args: argparse.Namespace) -> dict[str, list[SynthHands]]:
    common = dict(
        image_size=args.image_size,
        sequences_per_subject=args.sequences,
        frames_per_sequence=args.frames,
        cache_dir=args.cache_dir,
        seed=args.seed,
    )
    return {
        "labeled": [SynthHands("train", "synthetic", num_subjects=args.train_subjects, **common)],
        "unlabeled": [SynthHands("train", "real", num_subjects=args.train_subjects, **common)],
        "test": [SynthHands("test", "real", num_subjects=args.test_subjects, **common)],
    }


def make_datamodule(
    args: argparse.Namespace, sets: dict[str, list[SynthHands]], fraction: float
) -> SemiSupervisedDataModule:
    test = sets["test"]
    if args.eval_items:
        test = [torch.utils.data.Subset(test[0], _spread_indices(len(test[0]), args.eval_items))]
    return SemiSupervisedDataModule(
        labeled=sets["labeled"],
        unlabeled=sets["unlabeled"],
        val=None,
        test=test,
        image_size=args.image_size,
        batch_size=args.batch_size,
        unlabeled_fraction=fraction,
        eval_batch_size=64,
        seed=args.seed,
    )


def _spread_indices(total: int, count: int) -> list[int]:
    count = min(count, total)
    return [round(i * (total - 1) / max(count - 1, 1)) for i in range(count)]


def trainer(args: argparse.Namespace, steps: int, name: str) -> pl.Trainer:
    return pl.Trainer(
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


def module(args: argparse.Namespace, **overrides: Any) -> SemiHandModule:
    options: dict[str, Any] = dict(
        backbone_widths=tuple(int(w) for w in args.widths.split(",")),
        backbone_blocks=(1,) * len(args.widths.split(",")),
        decoder_channels=32,
        image_size=args.image_size,
        threshold=args.threshold,
        ema_decay=args.ema_decay,
        pseudo_label_lifting=args.pseudo_label_lifting,
        use_mask=True,
        warmup_steps=50,
        eval_network="teacher",
    )
    options.update(overrides)
    return SemiHandModule(**options)


@torch.no_grad()
def pseudo_label_scores(model: SemiHandModule, dm: SemiSupervisedDataModule, items: int) -> dict[str, float]:
    """Pseudo-labels of the final network on unlabelled items, scored against their unused annotation.

    The same network labels every item with and without correction (``tau`` as trained), so the two errors
    differ only by the correction. Both 2.5D labels are lifted with the annotated root depth and scale, the
    evaluation protocol, so the errors compare with the test MPJPE.
    """
    labeler = model.pseudo_labeler
    model.pseudo_labeler = PseudoLabeler(
        corrector=_default_corrector(),
        threshold=labeler.threshold,
        use_correction=True,
        depth_weight=labeler.depth_weight,
        uv_unit_px=labeler.uv_unit_px,
        root=labeler.root,
    )
    raw, final, accepted, changed = [], [], [], []
    seen = 0
    for batch in dm.pseudo_label_dataloader():
        labels, _ = model.compute_pseudo_labels(
            batch, model.teacher if model.teacher is not None else model.student
        )
        gt, K = batch["eval_joints3d"], batch["K"]
        _, root_depth, scale = encode_25d(gt, model.hparams.root_joint)
        for store, (uv, depth) in (
            (raw, (labels.uv_raw, labels.depth_raw)),
            (final, (labels.uv, labels.depth)),
        ):
            joints = lift_25d(uv, depth, K, root_depth, scale, model.hparams.root_joint)
            store.append(((joints - joints[:, :1]) - (gt - gt[:, :1])).norm(dim=-1).mean(-1))
        accepted.append(labels.accepted)
        changed.append(labels.changed)
        seen += batch["image"].shape[0]
        if seen >= items:
            break
    model.pseudo_labeler = labeler
    raw_t, final_t, acc_t = torch.cat(raw), torch.cat(final), torch.cat(accepted)
    return {
        "pl_error_raw_mm": float(raw_t.mean()),
        "pl_error_corrected_mm": float(final_t.mean()),
        "pl_accept_rate": float(acc_t.float().mean()),
        "pl_error_accepted_mm": float(final_t[acc_t].mean()) if acc_t.any() else math.nan,
        "pl_error_rejected_mm": float(final_t[~acc_t].mean()) if (~acc_t).any() else math.nan,
        "pl_changed_rate": float(torch.cat(changed).float().mean()),
    }


def score_domains(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Pseudo-label error with and without correction of one checkpoint on both domains' crops."""
    torch.set_num_threads(args.threads)
    model = module(args, use_consistency=False, use_pseudo_labels=False, use_correction=False)
    model.load_state_dict(torch.load(args.score_pseudo_labels, map_location="cpu")["state_dict"])
    model.eval()
    common = dict(
        image_size=args.image_size, sequences_per_subject=args.sequences, frames_per_sequence=args.frames
    )
    out = []
    for style, split, subjects in (
        ("synthetic", "train", args.train_subjects),
        ("synthetic", "test", args.test_subjects),
        ("real", "train", args.train_subjects),
        ("real", "test", args.test_subjects),
    ):
        data = SynthHands(
            split, style, num_subjects=subjects, cache_dir=args.cache_dir, seed=args.seed, **common
        )
        items = torch.utils.data.Subset(data, _spread_indices(len(data), args.pl_items))
        dm = SemiSupervisedDataModule(
            unlabeled=[items], image_size=args.image_size, unlabeled_fraction=1.0, eval_batch_size=64
        )
        scores = {"style": style, "split": split, **pseudo_label_scores(model, dm, args.pl_items)}
        out.append(scores)
        print(json.dumps(scores), flush=True)
    return out


def evaluate(
    model: SemiHandModule, dm: SemiSupervisedDataModule, args: argparse.Namespace, name: str
) -> dict[str, float]:
    result = trainer(args, 0, name).test(model, dm, verbose=False)[0]
    scores = {
        "auc_20_50": result["test/synthhands/auc"],
        "mpjpe_mm": result["test/mpjpe"],
        "pa_mpjpe_mm": result["test/pa_mpjpe"],
    }
    scores.update(pseudo_label_scores(model, dm, args.pl_items))
    return scores


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.score_pseudo_labels:
        return score_domains(args)
    if args.merge is not None:
        merged: list[dict[str, Any]] = []
        for path in args.merge:
            with open(path) as handle:
                merged += [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(handle)]
        write_tables(merged, args)
        return merged
    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, workers=True)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    sets = datasets(args)
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; choose from {sorted(ROWS)}")

    results: list[dict[str, Any]] = []
    if args.pretrained:
        ckpt = Path(args.pretrained)
    else:
        start = time.time()
        source = module(args, lr=args.lr, **ROWS["baseline"])
        trainer(args, args.pretrain_steps, "pretrained").fit(source, make_datamodule(args, sets, 0.0))
        pretrain_time = time.time() - start
        ckpt = Path(args.work_dir) / "pretrained.ckpt"
        torch.save({"state_dict": source.state_dict()}, ckpt)
        scores = evaluate(source, make_datamodule(args, sets, 0.0), args, "pretrained_test")
        row = {
            "row": "pretrained",
            "title": TITLES["pretrained"],
            "steps": args.pretrain_steps,
            "train_s": pretrain_time,
        }
        results.append({**row, **scores})
        print(json.dumps(results[-1]), flush=True)

    for row in rows:
        pl.seed_everything(args.seed + 1 if args.finetune_seed is None else args.finetune_seed, workers=True)
        options = dict(ROWS[row])
        fraction = (
            args.unlabeled_fraction if options["use_consistency"] or options["use_pseudo_labels"] else 0.0
        )
        model = module(args, lr=args.finetune_lr, init_checkpoint=str(ckpt), warmup_steps=0, **options)
        dm = make_datamodule(args, sets, fraction)
        t0 = time.time()
        trainer(args, args.finetune_steps, row).fit(model, dm)
        elapsed = time.time() - t0
        scores = evaluate(model, dm, args, f"{row}_test")
        results.append(
            {"row": row, "title": TITLES[row], "steps": args.finetune_steps, "train_s": elapsed, **scores}
        )
        print(json.dumps(results[-1]), flush=True)
        write_tables(results, args)
    return results


def write_tables(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fields = list(results[0])
    with open(out / f"{args.tag}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(results)
    header = (
        "| setting | steps | AUC 20-50 | MPJPE (mm) | PA-MPJPE (mm) | PL error raw (mm) | PL error corrected (mm) "
        "| PL accepted | PL error accepted (mm) | train (s) |"
    )
    lines = [
        f"SemiHand ablation on SynthHands (synthetic-style labelled -> real-style unlabelled; real-style test "
        f"subjects). Command: `python experiments/semihand_ablation.py {_argv_text(args)}`",
        "",
        header,
        "|" + "|".join(["---"] * (header.count("|") - 1)) + "|",
    ]
    for r in results:
        lines.append(
            f"| {r['title']} | {r['steps']} | {r['auc_20_50']:.3f} | {r['mpjpe_mm']:.1f} | {r['pa_mpjpe_mm']:.1f} "
            f"| {r['pl_error_raw_mm']:.1f} | {r['pl_error_corrected_mm']:.1f} | {r['pl_accept_rate']:.0%} "
            f"| {r['pl_error_accepted_mm']:.1f} | {r['train_s']:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    (out / f"{args.tag}.md").write_text(text)
    print(text)


def _number(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def _argv_text(args: argparse.Namespace) -> str:
    return " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if k not in ("out", "work_dir", "cache_dir")
    )


if __name__ == "__main__":
    main()
