"""SemiHand ablation on SynthHands v2 (synthetic-style labels -> unpaired real-style images), over seeds.

SemiHand: Yang, Chen, Yao, "SemiHand: Semi-supervised Hand Pose Estimation with Consistency", ICCV 2021.

Two stages, as in the paper (pre-train on the labelled source, then adapt). Per seed, **stage 1** trains the
source network once, ``handssl fit -c experiments/semihand_source_only.yaml`` (labelled synthetic-style items
only); every row then continues from its final weights for the same **stage 2** budget with the recipe users
run, ``handssl fit -c experiments/semihand_full.yaml --model.init_args.init_checkpoint <stage 1>
--model.init_args.unsupervised.start_step 0``, with only the row's option changed:

* ``source_only``: every unsupervised switch off and no unlabelled part (the same 16 labelled items per step,
  the same schedule);
* ``consistency``: + pose/mask equivariance and cross-modal consistency;
* ``pseudo_labels``: + confidence-gated pseudo-labels, no biomechanical correction;
* ``full``: + correction (inside the pseudo-labels and Eq. 6's ``l(r, p)``): the shipped recipe;
* ``oracle``: ``experiments/semihand_oracle.yaml``: stage 2 on the *unlabelled* real-style subjects with their
  labels (the target oracle at the same budget).

A seed changes the initialisation (``--seed_everything``) and the order and augmentation of the sampled items
(``--data.init_args.seed``); the worlds, subjects and test items stay fixed. Each row reports the test MPJPE of
its final weights on the real-style test subjects (2.5D lifted with the known root depth and scale, the paper's
protocol; wrist-relative), its minutes (stage 1 + stage 2), and the MPJPE of its teacher's pseudo-labels on the
unlabelled real-style items before and after correction (scored against their annotation, which training never
reads): as lifted in training (``pl_*_mm``) and lifted with the annotated root and scale (``pl_*_known_mm``).

Resumable: stage 1 is reused once it finished, each finished row is appended to ``<out>/rows.csv`` and skipped
when the script runs again.

    python experiments/studies/semihand_ablation.py --quick                                 # smoke run, ~3 min
    python experiments/studies/semihand_ablation.py --seeds 0,1,2 --out experiments/results/semihand_ablation_v4
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).resolve().parents[2]  # the repository root: the recipes' paths are relative to it
STAGE1_STEPS, STAGE2_STEPS = 6000, 3000
"""Steps of stage 1 (source pre-training) and stage 2 (each row)."""
NO_UNLABELED = ["--data.init_args.views.init_args.unlabeled_fraction=0", "--data.init_args.batch_size=16"]
ROWS: dict[str, tuple[str, list[str]]] = {
    "source_only": (
        "semihand_full.yaml",
        [
            "--model.init_args.consistency.enabled=false",
            "--model.init_args.pseudo_labels.enabled=false",
            "--model.init_args.correction.enabled=false",
            *NO_UNLABELED,
        ],
    ),
    "consistency": (
        "semihand_full.yaml",
        ["--model.init_args.pseudo_labels.enabled=false", "--model.init_args.correction.enabled=false"],
    ),
    "pseudo_labels": ("semihand_full.yaml", ["--model.init_args.correction.enabled=false"]),
    "full": ("semihand_full.yaml", []),
    "oracle": ("semihand_oracle.yaml", NO_UNLABELED),
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
    "pl_raw_known_mm",
    "pl_corrected_known_mm",
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
    parser.add_argument("--stage1-steps", type=int, default=STAGE1_STEPS, help="source pre-training steps")
    parser.add_argument("--stage2-steps", type=int, default=STAGE2_STEPS, help="steps of every row")
    parser.add_argument("--threads", type=int, default=2, help="OMP threads of each fit")
    parser.add_argument(
        "--pl-batches", type=int, default=16, help="unlabelled batches scored for pseudo-labels"
    )
    parser.add_argument("--quick", action="store_true", help="a few steps on tiny sets (a smoke test)")
    parser.add_argument("--out", default="experiments/results/semihand_ablation_v4")
    parser.add_argument("--work-dir", default="runs/semihand_ablation_v4", help="run folders of the fits")
    parser.add_argument("--budget-min", type=float, default=None, help="start no row after this many minutes")
    args = parser.parse_args(argv)
    if args.quick:
        args.stage1_steps, args.stage2_steps, args.pl_batches = 8, 6, 1
    return args


def overrides(args: argparse.Namespace, seed: int, steps: int) -> list[str]:
    """Options every fit shares: the seed, the step budget and, with ``--quick``, tiny sets."""
    extra = [f"--seed_everything={seed}", f"--data.init_args.seed={seed}", f"--trainer.max_steps={steps}"]
    if args.quick:
        extra += [
            "--trainer.val_check_interval=6",
            "--trainer.limit_val_batches=1",
            "--data.init_args.views.init_args.eval_batch_size=8",
        ]
    return extra


def stage1_args(args: argparse.Namespace, seed: int) -> list[str]:
    """Stage 1 (source pre-training) as ``handssl fit`` takes it."""
    quick = ["--data.init_args.batch_size=8"] if args.quick else []
    return ["-c", "experiments/semihand_source_only.yaml", *quick, *overrides(args, seed, args.stage1_steps)]


def recipe_args(args: argparse.Namespace, row: str, seed: int, init: Path | str) -> list[str]:
    """The row's stage 2 (recipe and options, from the stage 1 weights ``init``), as ``handssl fit`` takes it."""
    recipe, options = ROWS[row]
    quick = ["--data.init_args.batch_size=8"] if args.quick else []
    return [
        "-c",
        f"experiments/{recipe}",
        f"--model.init_args.init_checkpoint={init}",
        "--model.init_args.unsupervised.start_step=0",
        *quick,
        *options,
        *overrides(args, seed, args.stage2_steps),
    ]


def fit(args: argparse.Namespace, name: str, recipe: list[str], steps: int) -> tuple[Path, list[str], float]:
    """Run ``handssl fit`` on ``recipe``; the final weights' checkpoint, the command and its minutes."""
    final = [  # the final weights, whatever the validation interval (rows report them, no selection)
        "--trainer.callbacks+=pytorch_lightning.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.every_n_train_steps={steps}",
        "--trainer.callbacks.filename=final",
    ]
    command = [
        "handssl",
        "fit",
        *recipe,
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
    start = time.time()
    with open(log, "w") as handle:
        subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    (run_dir,) = set(runs.glob("version_*")) - before
    minutes = (time.time() - start) / 60
    (run_dir / "minutes.txt").write_text(f"{minutes:.2f}\n")
    return run_dir / "checkpoints" / "final.ckpt", command, minutes


def stage1(args: argparse.Namespace, seed: int) -> tuple[Path, list[str], float]:
    """The seed's source network: reused when a finished stage 1 run exists, else trained now."""
    name = f"stage1_seed{seed}"
    for run_dir in sorted((Path(args.work_dir) / name).glob("version_*")):
        checkpoint, minutes = run_dir / "checkpoints" / "final.ckpt", run_dir / "minutes.txt"
        if checkpoint.is_file() and minutes.is_file():
            command = ["handssl", "fit", *stage1_args(args, seed)]
            return checkpoint, command, float(minutes.read_text())
    return fit(args, name, stage1_args(args, seed), args.stage1_steps)


def evaluate(
    args: argparse.Namespace, row: str, seed: int, checkpoint: Path, init: Path
) -> dict[str, float | None]:
    """Test metrics of the final weights and, with a teacher, its pseudo-labels before and after correction.

    The model and data are the row's own config objects (``make_cli`` on the same arguments); the pseudo-labels
    are scored with the correction switched on, so that every row's teacher is judged by the same labeller.
    """
    import pytorch_lightning as pl
    import torch

    from handssl._lightning_cli import make_cli
    from handssl.callbacks.pseudo_label_pass import label_unlabeled_set
    from handssl.models import SemiHandModule

    torch.set_num_threads(args.threads)
    cli = make_cli(
        [*recipe_args(args, row, seed, init), "--model.init_args.correction.enabled=true"], run=False
    )
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
    result.update(
        pl_raw_mm=mean(table["error_raw_mm"]),
        pl_corrected_mm=mean(table["error_final_mm"]),
        pl_raw_known_mm=mean(table["error_raw_known_mm"]),
        pl_corrected_known_mm=mean(table["error_final_known_mm"]),
    )
    return result


def run_row(args: argparse.Namespace, row: str, seed: int) -> dict[str, Any]:
    init, first, first_minutes = stage1(args, seed)
    checkpoint, command, minutes = fit(
        args, f"{row}_seed{seed}", recipe_args(args, row, seed, init), args.stage2_steps
    )
    result: dict[str, Any] = {
        "row": row,
        "seed": seed,
        "steps": args.stage1_steps + args.stage2_steps,
        "minutes": round(first_minutes + minutes, 1),
        "command": " ".join(first) + " && " + " ".join(command),
    }
    result.update(evaluate(args, row, seed, checkpoint, init))
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
        "| row | seeds | MPJPE mm | PA-MPJPE mm | pseudo-labels mm: raw | corrected | raw, known root/scale "
        "| corrected, known | minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        m, s, n = stats(row, "mpjpe")
        if not n:
            continue
        pa, mins = stats(row, "pa_mpjpe"), stats(row, "minutes")
        cells = [fmt(m, s), fmt(*pa[:2])]
        for key in ("pl_raw_mm", "pl_corrected_mm", "pl_raw_known_mm", "pl_corrected_known_mm"):
            value = stats(row, key)
            cells.append(fmt(*value[:2]) if value[2] else "")
        cells.append(f"{mins[0]:.0f}")
        lines.append(f"| {TITLES[row]} | {n} | " + " | ".join(cells) + " |")
    src, orc, full = stats("source_only", "mpjpe"), stats("oracle", "mpjpe"), stats("full", "mpjpe")
    if src[2] and orc[2] and full[2]:
        lines.append(
            f"\nGap closed by full SemiHand (means): {(src[0] - full[0]) / (src[0] - orc[0]):.0%} (gate >= 40 %)"
        )
    raw, cor = stats("full", "pl_raw_known_mm"), stats("full", "pl_corrected_known_mm")
    if raw[2] and cor[2]:
        lines.append(
            f"Correction of full SemiHand's pseudo-labels (known root/scale, means): {raw[0]:.1f} -> {cor[0]:.1f} mm "
            f"({(cor[0] - raw[0]) / raw[0]:+.0%}; gate <= -10 %)"
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
    main()
