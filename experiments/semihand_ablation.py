"""SemiHand ablation on SynthHands v2 (synthetic-style labels -> unpaired real-style images), over seeds.

SemiHand: Yang, Chen, Yao, "SemiHand: Semi-supervised Hand Pose Estimation with Consistency", ICCV 2021.

Every row is the recipe users run, ``handssl fit -c experiments/semihand_full.yaml`` (or
``semihand_oracle.yaml``), with only the row's option changed, the same steps, batch and schedule:

* ``source_only``: every unsupervised switch off (same 16 labelled items per step, same cosine schedule);
* ``consistency``: + pose/mask equivariance and cross-modal consistency;
* ``pseudo_labels``: + confidence-gated pseudo-labels, no biomechanical correction;
* ``full``: + correction (inside the pseudo-labels and Eq. 6's ``l(r, p)``): the shipped recipe;
* ``oracle``: ``experiments/semihand_oracle.yaml``: the source-only recipe on the *unlabelled* real-style
  subjects with their labels (the target oracle).

A seed changes the initialisation (``--seed_everything``) and the order and augmentation of the sampled items
(``--data.init_args.seed``); the worlds, subjects and test items stay fixed. Each row reports the test MPJPE on
the real-style test subjects (``handssl fit ... --test_after_fit true``: 2.5D lifted with the known root depth
and scale, the paper's protocol; wrist-relative), its minutes, and, for the semi rows, the MPJPE of its teacher's
pseudo-labels on the unlabelled real-style items before and after correction (scored against their annotation,
which training never reads).

Resumable: each finished row is appended to ``<out>/rows.csv`` and skipped when the script runs again.

    python experiments/semihand_ablation.py --quick                                 # smoke run, ~2 min
    python experiments/semihand_ablation.py --seeds 0,1,2 --out experiments/results/semihand_ablation_v3
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

EXPERIMENTS = Path(__file__).resolve().parent
STEPS, START = 6000, 3000
"""``max_steps`` and ``unsupervised_start_step`` of experiments/model/semihand.yaml (keep them in sync)."""
ROWS: dict[str, tuple[str, list[str]]] = {
    "source_only": (
        "semihand_full.yaml",
        [
            "--model.init_args.use_consistency=false",
            "--model.init_args.use_pseudo_labels=false",
            "--model.init_args.use_correction=false",
        ],
    ),
    "consistency": (
        "semihand_full.yaml",
        ["--model.init_args.use_pseudo_labels=false", "--model.init_args.use_correction=false"],
    ),
    "pseudo_labels": ("semihand_full.yaml", ["--model.init_args.use_correction=false"]),
    "full": ("semihand_full.yaml", []),
    "oracle": ("semihand_oracle.yaml", []),
}
TITLES = {
    "source_only": "source-only",
    "consistency": "+ consistency",
    "pseudo_labels": "+ pseudo-labels (no correction)",
    "full": "+ correction (full SemiHand)",
    "oracle": "target oracle (real-style labels)",
}
FIELDS = (
    "row",
    "seed",
    "mpjpe",
    "pa_mpjpe",
    "auc",
    "pl_raw_mm",
    "pl_corrected_mm",
    "steps",
    "minutes",
    "command",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=STEPS, help="max_steps (the recipes' own by default)")
    parser.add_argument("--start", type=int, default=START, help="unsupervised_start_step (the recipe's)")
    parser.add_argument("--threads", type=int, default=2, help="OMP threads of each fit")
    parser.add_argument(
        "--pl-batches", type=int, default=16, help="unlabelled batches scored for pseudo-labels"
    )
    parser.add_argument("--quick", action="store_true", help="a few steps on tiny sets (a smoke test)")
    parser.add_argument("--out", default="experiments/results/semihand_ablation_v3")
    parser.add_argument("--work-dir", default="runs/semihand_ablation_v3", help="run folders of the fits")
    parser.add_argument("--budget-min", type=float, default=None, help="start no row after this many minutes")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.start, args.pl_batches = 12, 6, 1
    return args


def overrides(args: argparse.Namespace, seed: int) -> list[str]:
    """Options every row shares: the seed, the step budget and, with ``--quick``, tiny sets."""
    extra = [f"--seed_everything={seed}", f"--data.init_args.seed={seed}"]
    if args.steps != STEPS:
        extra.append(f"--trainer.max_steps={args.steps}")
    if args.start != START:
        extra += [
            f"--model.init_args.unsupervised_start_step={args.start}",
            "--model.init_args.unsupervised_ramp_steps=0",
        ]
    if args.quick:
        extra += [
            "--trainer.val_check_interval=6",
            "--trainer.limit_val_batches=1",
            "--data.init_args.batch_size=8",
            "--data.init_args.eval_batch_size=8",
        ]
    return extra


def recipe_args(args: argparse.Namespace, row: str, seed: int) -> list[str]:
    """The row's recipe and options, as ``handssl fit -c`` takes them."""
    recipe, options = ROWS[row]
    return ["-c", f"experiments/{recipe}", *options, *overrides(args, seed)]


def fit(args: argparse.Namespace, row: str, seed: int) -> tuple[Path, list[str]]:
    """Train the row's recipe for ``seed``; the final weights' checkpoint and the command."""
    name = f"{row}_seed{seed}"
    final = [  # the final weights, whatever the validation interval (rows report them, no selection)
        "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.every_n_train_steps={args.steps}",
        "--trainer.callbacks.filename=final",
    ]
    command = [
        "handssl",
        "fit",
        *recipe_args(args, row, seed),
        *final,
        f"--runs_dir={args.work_dir}",
        f"--run_name={name}",
        "--trainer.enable_progress_bar=false",
        "--wandb=disabled",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    runs = Path(args.work_dir) / name
    before = set(runs.glob("version_*")) if runs.is_dir() else set()
    log = Path(args.out) / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        subprocess.run(
            command, check=True, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=EXPERIMENTS.parent
        )
    (run_dir,) = set(runs.glob("version_*")) - before
    checkpoint = run_dir / "checkpoints" / "final.ckpt"
    return checkpoint, command


def evaluate(args: argparse.Namespace, row: str, seed: int, checkpoint: Path) -> dict[str, float]:
    """Test metrics of the final weights and, with a teacher, its pseudo-labels before and after correction.

    The model and data are the row's own config objects (``make_cli`` on the same arguments); the pseudo-labels
    are scored with the correction switched on, so that every row's teacher is judged by the same labeller.
    """
    import pytorch_lightning as pl
    import torch

    from handssl._lightning_cli import make_cli
    from handssl.models import SemiHandModule
    from handssl.models.components.pseudo_label_pass import label_unlabeled_set

    torch.set_num_threads(args.threads)
    cli = make_cli([*recipe_args(args, row, seed), "--model.init_args.use_correction=true"], run=False)
    model, datamodule = cli.model, cli.datamodule
    assert isinstance(model, SemiHandModule)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model.load_state_dict(state["state_dict"])
    model.on_load_checkpoint(state)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_test_batches=1 if args.quick else 1.0,
    )
    (metrics,) = trainer.test(model, datamodule=datamodule, verbose=False)
    result = {
        "mpjpe": metrics["test/mpjpe"],
        "pa_mpjpe": metrics.get("test/pa_mpjpe"),
        "auc": next((v for k, v in metrics.items() if k.endswith("/auc")), None),
    }
    model.eval()
    datamodule.setup("fit")
    table = label_unlabeled_set(model, datamodule, max_batches=args.pl_batches)
    assert table is not None
    mean = lambda x: float(x[torch.isfinite(x)].mean())  # noqa: E731
    result.update(pl_raw_mm=mean(table["error_raw_mm"]), pl_corrected_mm=mean(table["error_final_mm"]))
    return result


def run_row(args: argparse.Namespace, row: str, seed: int) -> dict[str, Any]:
    start = time.time()
    checkpoint, command = fit(args, row, seed)
    minutes = (time.time() - start) / 60
    result: dict[str, Any] = {
        "row": row,
        "seed": seed,
        "steps": args.steps,
        "minutes": round(minutes, 1),
        "command": " ".join(command),
    }
    result.update(evaluate(args, row, seed, checkpoint))
    return result


def load_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def summary(rows: list[dict[str, str]]) -> str:
    """The table (mean ± SD over seeds) and the gates of issue 20."""

    def stats(row: str, key: str) -> tuple[float, float, int]:
        values = [float(r[key]) for r in rows if r["row"] == row and r.get(key) not in (None, "")]
        if not values:
            return float("nan"), float("nan"), 0
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        return statistics.mean(values), sd, len(values)

    fmt = lambda m, s: f"{m:.1f} ± {s:.1f}" if s == s else f"{m:.1f}"  # noqa: E731
    lines = [
        "| row | seeds | MPJPE mm | PA-MPJPE mm | pseudo-labels mm raw | corrected | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        m, s, n = stats(row, "mpjpe")
        if not n:
            continue
        pa = stats(row, "pa_mpjpe")
        raw, cor, mins = stats(row, "pl_raw_mm"), stats(row, "pl_corrected_mm"), stats(row, "minutes")
        cells = [
            fmt(m, s),
            fmt(*pa[:2]),
            fmt(*raw[:2]) if raw[2] else "",
            fmt(*cor[:2]) if cor[2] else "",
            f"{mins[0]:.0f}",
        ]
        lines.append(f"| {TITLES[row]} | {n} | " + " | ".join(cells) + " |")
    src, orc, full = stats("source_only", "mpjpe"), stats("oracle", "mpjpe"), stats("full", "mpjpe")
    if src[2] and orc[2] and full[2]:
        lines.append(
            f"\nGap closed by full SemiHand (means): {(src[0] - full[0]) / (src[0] - orc[0]):.0%} (gate >= 40 %)"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rows.csv"
    done = {(r["row"], int(r["seed"])) for r in load_rows(path)}
    start = time.time()
    for seed in [int(s) for s in args.seeds.split(",")]:
        for row in [r.strip() for r in args.rows.split(",") if r.strip()]:
            if row not in ROWS:
                raise SystemExit(f"unknown row {row!r}; choose from {', '.join(ROWS)}")
            if (row, seed) in done:
                continue
            if args.budget_min is not None and time.time() - start > 60 * args.budget_min:
                print(f"budget of {args.budget_min} min spent; run again to continue", flush=True)
                break
            result = run_row(args, row, seed)
            new = not path.is_file()
            with open(path, "a", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
                if new:
                    writer.writeheader()
                writer.writerow(result)
            print(
                f"{row} seed {seed}: " + ", ".join(f"{k}={v}" for k, v in result.items() if k != "command"),
                flush=True,
            )
    table = summary(load_rows(path))
    (out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    sys.exit(main())
