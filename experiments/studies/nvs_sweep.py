"""A fair sweep of the NVS regimes on the shipped recipes, by labelled subjects and seeds (issue 21, item 3).

Rhodin et al., "Unsupervised Geometry-Aware Representation for 3D Human Pose Estimation", ECCV'18, label whole
subjects; SynthHands multi-view has 32 training subjects (``experiments/data/synthhands.yaml``, read as pairs). For
every number ``k`` of labelled subjects (``--subjects``) and every seed of ``k`` (``--seeds-per-k``), each row
runs the recipe users run, ``handssl fit -c experiments/<recipe>.yaml``, with only the options below changed:

* ``supervised``: ``experiments/nvs_supervised.yaml``;
* ``pretrained``: stage 1, ``experiments/nvs_pretrained.yaml`` (synthesis only, no label: trained once per seed
  and shared by every ``k``), then stage 2, ``experiments/nvs_pretrained_stage2.yaml`` with
  ``--model.init_args.pretrained_checkpoint`` set to that stage 1's final ``stage1.ckpt``. The row counts both
  stages: its minutes, steps and validation curve (stage 2's points shifted by stage 1's minutes);
* ``semi``: ``experiments/nvs_semi.yaml``.

The options changed, the same for every row:

* ``--data.init_args.views.init_args.labeled_subjects=k``; a **seed** ``s`` sets ``--seed_everything=s`` (initialisation,
  dropout, the pairs' view swaps) and ``--data.init_args.seed=s``, which seeds the DataModule's draw of the
  labelled subjects (the first ``k`` of a seeded permutation of the training subjects, so ``k = 2`` holds
  ``k = 1``'s subject), the order of the training stream and the labelled draws; ``labeled`` in ``rows.csv``
  names the subjects drawn (rank among the training subjects). The worlds, the validation and test subjects
  and the camera pairs of an item in an epoch (a function of the dataset's world seed) stay fixed.
* **Budget, equal minutes per row**: ``--trainer.max_time`` (``--minutes`` per row; the pretrained row splits
  them, ``--stage2-share`` to stage 2) and ``--trainer.max_steps=-1``. Chosen over steps calibrated from
  measured step times because the gates are stated in minutes and the regimes' steps cost 5-10x apart
  (supervised: 16 items through the encoder; semi: 32 items through encoder and decoder, both directions;
  stage 2: a pose MLP on a frozen encoder), so any calibration is itself a measurement that drifts with the
  machine's load over a sweep of hours, while ``max_time`` spends the same minutes whatever the load, and stays
  an ordinary option of the recipe's command. Its cost: the steps a row reaches depend on the machine's load,
  so every row records them (``steps``), and the sweep wants an otherwise idle machine. The clock is
  Lightning's ``Timer``: from the start of training, validation included.
* **Validation on a common clock**: ``--trainer.val_check_interval=<--val-minutes>`` (time-based, so every
  regime's curve has points at the same minutes) over every validation item
  (``--trainer.limit_val_batches=1.0``: the recipes' 8 batches are 128 items at batch 16 but 256 at semi's
  32). Lightning validates once more when ``max_time`` stops training, so the last point is the final weights.
* ``--trainer.callbacks+=nvs_sweep.TrainClock`` (``PYTHONPATH=experiments/studies``): logs ``time/train_min``, the
  ``max_time`` clock, beside ``val/n_mpjpe`` in the run's ``metrics.csv``, and writes ``train_clock.json``
  (training and validation minutes, steps). It only measures.
* stage 1: ``--trainer.callbacks.dirpath=null``, so that ``stage1.ckpt`` goes into the run's own
  ``checkpoints/`` rather than the recipe's shared ``runs/nvs_pretrained``.
* ``--extra "..."``: options appended to every run with a decoder (stage 1, stage 2, semi; fit and test), e.g.
  ``--extra "--model.init_args.geometry.equivariance_weight=1.0"`` to sweep a recipe variant without editing its
  YAML (stage 2 takes them too, so that an architecture option matches stage 1's); ``--extra-all`` to every run.
  (``scheduler: cosine`` does not go with the time budget: it needs a step count, and ``max_steps`` is -1.)

Every choice is made on the validation subjects: rows report each run's final weights (``last.ckpt``; stage 1
its ``stage1.ckpt``), and its final validation N-MPJPE. The test subjects are scored once per run at the end,
``handssl test -c <recipe> <the same options> --ckpt_path <run>/checkpoints/last.ckpt`` (not
``--test_after_fit``, which tests the best ``val/mpjpe`` checkpoint instead of the final weights): N-MPJPE,
MPJPE, PA-MPJPE, and where the regime has a decoder (semi; pretrained, through stage 1's frozen decoder) the
hand-pixel L1 of the synthesised view with the true rotation against the identity, another item's rotation,
the input copied and the background alone, and the mask IoU.

Outputs in ``--out``: ``rows.csv`` (one line per finished row, with its commands and its validation curve),
``table.md`` (mean ± SD over seeds per regime and ``k``), ``gates.md`` (issue 21's gates) and ``logs/``.
Resumable: a rerun skips the rows in ``rows.csv`` and reuses every finished fit whose command is unchanged
(stage 1 included); the settings that change a row's meaning (budget, extras, ``--quick``) must match the
rows already there.

    python experiments/studies/nvs_sweep.py --quick --threads 1 --out /tmp/nvs_sweep_quick \\
        --work-dir /tmp/nvs_sweep_quick_runs                  # smoke test: 1 seed, k=1, ~2.5 min of 2 cores
    python experiments/studies/nvs_sweep.py --print-commands          # what each row runs, without running it
    python experiments/studies/nvs_sweep.py --subjects 1 2 --seeds-per-k 1:0,1,2 2:0,1 --minutes 20 --threads 2
    python experiments/studies/nvs_sweep.py --extra "--model.init_args.geometry.equivariance_weight=1.0" \\
        --out experiments/results/nvs_sweep_equivariance --work-dir runs/nvs_sweep_equivariance

The default (3 seeds at 1 labelled subject, 2 at 2, 20 minutes a row) trains 15 rows and 3 stage 1s: about
4.5 hours of training plus a few minutes of start-up and test per run.

Gates (``gates.md``, means over seeds, test N-MPJPE): pretrained <= 0.85 x supervised and semi <= 0.85 x
supervised at each ``k``; semi <= pretrained; semi reaches pretrained's final validation N-MPJPE within
0.7 x pretrained's minutes (stage 1 + stage 2; per seed, then the mean); geometry: true-rotation hand L1 <=
0.8 x identity and <= 0.8 x another item's rotation; views: <= 0.8 x copy-input and <= 0.6 x background-only.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

STUDIES = Path(__file__).resolve().parent  # experiments/studies: on PYTHONPATH for TrainClock
ROOT = STUDIES.parents[1]
REGIMES = ("supervised", "pretrained", "semi")
RECIPES = {
    "supervised": "nvs_supervised.yaml",
    "stage1": "nvs_pretrained.yaml",
    "stage2": "nvs_pretrained_stage2.yaml",
    "semi": "nvs_semi.yaml",
}
"""The recipe of every run: ``stage1`` and ``stage2`` make the ``pretrained`` row."""
SYNTHESIS_RUNS = ("stage1", "stage2", "semi")
"""The runs with a decoder: ``--extra`` goes to these."""
DEFAULT_SEEDS = "0,1,2"
DEFAULT_SEEDS_PER_K = "1:0,1,2 2:0,1"
"""Issue 21: three seeds at 1 labelled subject, two at 2."""
TRAIN_SUBJECTS, QUICK_TRAIN_SUBJECTS = 32, 4
CONTROLS = (
    "synthesis_l1_hand",
    "identity_l1_hand",
    "other_rotation_l1_hand",
    "copy_input_l1_hand",
    "background_l1_hand",
    "mask_iou",
)
"""The synthesis and geometry controls the module logs at test (``test/<name>``) where it has a decoder."""
SETTINGS = ("minutes", "stage2_share", "val_minutes", "extra", "extra_all", "quick")
"""Arguments that change what a row means; a resumed sweep must keep them."""
FIELDS = (
    "regime",
    "k",
    "seed",
    "labeled",
    "test_n_mpjpe",
    "test_mpjpe",
    "test_pa_mpjpe",
    "val_n_mpjpe",
    "train_min",
    "val_min",
    "steps",
    "stage1_min",
    "stage1_steps",
    "wall_min",
    *CONTROLS,
    "curve",
    "settings",
    "command",
)


class TrainClock(pl.Callback):
    """The ``--trainer.max_time`` clock in a run: minutes since training started, validation included.

    Logged as ``time/train_min`` by every validation (so ``metrics.csv`` holds it in the rows of
    ``val/n_mpjpe``), and written with the steps and the minutes spent validating to ``train_clock.json`` in the
    run folder when training ends. Training never reads it.
    """

    def __init__(self) -> None:
        self.start: float | None = None
        self.val_s = 0.0
        self._val_start: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.monotonic()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.monotonic()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.start is not None and not trainer.sanity_checking:
            pl_module.log("time/train_min", (time.monotonic() - self.start) / 60.0)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.start is not None and self._val_start is not None and not trainer.sanity_checking:
            self.val_s += time.monotonic() - self._val_start

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        if self.start is None or not trainer.is_global_zero:
            return
        clock = {
            "train_min": (time.monotonic() - self.start) / 60.0,
            "val_min": self.val_s / 60.0,
            "steps": int(trainer.global_step),
        }
        (run_dir / "train_clock.json").write_text(json.dumps(clock) + "\n")


# --- plan -------------------------------------------------------------------------------------------------


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (no duplicates, at least one)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers, at least one, got {text!r}")
    return seeds


def parse_seeds_per_k(tokens: Sequence[str] | str) -> dict[int, list[int]]:
    """``["1:0,1,2", "2:0,1"]`` (or one string ``"1:0,1,2 2:0,1"``) -> ``{1: [0, 1, 2], 2: [0, 1]}``."""
    items = tokens.split() if isinstance(tokens, str) else [t for token in tokens for t in token.split()]
    plan: dict[int, list[int]] = {}
    for item in items:
        k, sep, seeds = item.partition(":")
        if not sep or not k.strip().isdigit() or int(k) < 1:
            raise ValueError(f"--seeds-per-k takes K:SEEDS with K >= 1, e.g. 1:0,1,2; got {item!r}")
        if int(k) in plan:
            raise ValueError(f"--seeds-per-k names k={int(k)} twice")
        plan[int(k)] = parse_seeds(seeds)
    return plan


def seed_plan(
    subjects: Sequence[int], seeds: str | None = None, seeds_per_k: Sequence[str] | str | None = None
) -> dict[int, list[int]]:
    """The seeds of every ``k`` in ``subjects``.

    A ``k`` takes its ``seeds_per_k`` entry, else ``seeds`` when given, else the issue's plan
    (:data:`DEFAULT_SEEDS_PER_K`), else :data:`DEFAULT_SEEDS`.
    """
    explicit = parse_seeds_per_k(seeds_per_k or "")
    issue = parse_seeds_per_k(DEFAULT_SEEDS_PER_K)
    base = parse_seeds(seeds) if seeds is not None else None
    return {
        k: explicit.get(k) or base or issue.get(k) or parse_seeds(DEFAULT_SEEDS)
        for k in dict.fromkeys(subjects)
    }


def labeled_subjects(k: int, seed: int, num_subjects: int = TRAIN_SUBJECTS) -> list[int]:
    """The training subjects (rank among the sorted subject ids) that ``labeled_subjects=k`` and ``seed`` label.

    The DataModule's own draw (:func:`handssl.data.multiview.labeled_subjects_subset`), on one item per subject.
    """
    from handssl.data.multiview import labeled_subjects_subset

    return labeled_subjects_subset(list(range(num_subjects)), k, seed).tolist()


def duration(seconds: float) -> str:
    """Seconds -> Lightning's ``"DD:HH:MM:SS"`` (whole seconds, at least one)."""
    total = max(1, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


def budget_seconds(args: argparse.Namespace, run: str) -> int:
    """Training seconds of a run: ``--minutes``, split between stage 1 and stage 2 by ``--stage2-share``."""
    total = max(2, round(60 * args.minutes))
    stage2 = min(total - 1, max(1, round(total * args.stage2_share)))
    return {"stage1": total - stage2, "stage2": stage2}.get(run, total)


def show(path: Path | str) -> str:
    """A path as the commands give it: relative to the repository root (their working folder) when inside."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path.resolve())


# --- commands ---------------------------------------------------------------------------------------------


def quick_options(run: str) -> list[str]:
    """``--quick``: 4 training subjects, 2 validation and 2 test subjects, short sequences, small batches."""
    options = []
    for split, subjects in (("train", QUICK_TRAIN_SUBJECTS), ("val", 2), ("test", 2)):
        prefix = f"--data.init_args.{split}.init_args"
        options += [
            f"{prefix}.num_subjects={subjects}",
            f"{prefix}.sequences_per_subject=2",
            f"{prefix}.frames_per_sequence=8",
        ]
    batch = 8 if run == "semi" else 4
    return [
        *options,
        f"--data.init_args.batch_size={batch}",
        "--data.init_args.views.init_args.statistics_items=8",
    ]


def model_data_options(
    args: argparse.Namespace, run: str, k: int | None, seed: int, stage1: Path | str | None = None
) -> list[str]:
    """The options of a run that fit and test share: labelled subjects, seeds, stage 1 weights, extras."""
    options = [f"--seed_everything={seed}", f"--data.init_args.seed={seed}"]
    if run != "stage1":
        assert k is not None, f"{run} needs the number of labelled subjects"
        options.append(f"--data.init_args.views.init_args.labeled_subjects={k}")
    if run == "stage2":
        assert stage1 is not None, "stage 2 needs stage 1's checkpoint"
        options.append(f"--model.init_args.pretrained_checkpoint={show(stage1)}")
    if args.quick:
        options += quick_options(run)
    options += shlex.split(args.extra_all)
    if run in SYNTHESIS_RUNS:
        options += shlex.split(args.extra)
    return options


def run_name(run: str, k: int | None, seed: int) -> str:
    return f"stage1_seed{seed}" if run == "stage1" else f"{run}_k{k}_seed{seed}"


def fit_command(
    args: argparse.Namespace, run: str, k: int | None, seed: int, stage1: Path | str | None = None
) -> list[str]:
    """``handssl fit`` of one run: the recipe, the shared options, the time budget and the clock."""
    recipe = ["-c", f"experiments/{RECIPES[run]}"]
    if run == "stage1":  # the recipe's last callback is its ModelCheckpoint; its own run folder, not runs/
        recipe.append("--trainer.callbacks.dirpath=null")
    return [
        "handssl",
        "fit",
        *recipe,
        *model_data_options(args, run, k, seed, stage1),
        "--trainer.max_steps=-1",
        f"--trainer.max_time={duration(budget_seconds(args, run))}",
        f"--trainer.val_check_interval={duration(60 * args.val_minutes)}",
        "--trainer.limit_val_batches=1.0",
        "--trainer.callbacks+=nvs_sweep.TrainClock",
        f"--runs_dir={show(args.work_dir)}",
        f"--run_name={run_name(run, k, seed)}",
        "--trainer.enable_progress_bar=false",
        "--wandb=disabled",
    ]


def test_command(
    args: argparse.Namespace,
    run: str,
    k: int | None,
    seed: int,
    checkpoint: Path | str,
    stage1: Path | str | None = None,
) -> list[str]:
    """``handssl test`` of a run's final weights, with the options it was trained with."""
    return [
        "handssl",
        "test",
        "-c",
        f"experiments/{RECIPES[run]}",
        *model_data_options(args, run, k, seed, stage1),
        f"--ckpt_path={show(checkpoint)}",
        f"--runs_dir={show(args.work_dir)}",
        f"--run_name={run_name(run, k, seed)}_test",
        "--trainer.enable_progress_bar=false",
        "--wandb=disabled",
    ]


def shell(args: argparse.Namespace, command: Sequence[str]) -> str:
    """A command as one shell line, run from the repository root."""
    return f"PYTHONPATH=experiments/studies OMP_NUM_THREADS={args.threads} {shlex.join(command)}"


# --- running ----------------------------------------------------------------------------------------------


@dataclass
class Fit:
    """A finished ``handssl fit``: its run folder, clock, validation curve and final validation metrics."""

    run_dir: Path
    train_min: float
    val_min: float
    steps: int
    wall_min: float
    curve: list[tuple[float, float]] = field(default_factory=list)
    """``(minutes on the max_time clock, val/n_mpjpe)`` at every validation."""
    final: dict[str, float] = field(default_factory=dict)
    """The last validation's ``val/*`` metrics."""


def read_metrics(path: Path) -> tuple[list[tuple[float, float]], dict[str, float]]:
    """The validation curve (``time/train_min``, ``val/n_mpjpe``) and the last validation row of ``metrics.csv``."""
    curve: list[tuple[float, float]] = []
    final: dict[str, float] = {}
    if not path.is_file():
        return curve, final
    with open(path, newline="") as handle:
        for line in csv.DictReader(handle):
            values = {k: float(v) for k, v in line.items() if k and v not in (None, "")}
            if "time/train_min" not in values:
                continue
            final = {k: v for k, v in values.items() if k.startswith("val/") or k == "step"}
            if "val/n_mpjpe" in values:
                curve.append((round(values["time/train_min"], 3), round(values["val/n_mpjpe"], 3)))
    return curve, final


def versions(folder: Path) -> set[Path]:
    return set(folder.glob("version_*")) if folder.is_dir() else set()


def run_handssl(args: argparse.Namespace, command: list[str], log_name: str) -> tuple[Path, float]:
    """Run ``command`` (``handssl ...``) from the repository root; its new run folder and its minutes."""
    name = next(c.split("=", 1)[1] for c in command if c.startswith("--run_name="))
    folder = args.work_dir / name
    before = versions(folder)
    log = args.out / "logs" / f"{log_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(STUDIES), env.get("PYTHONPATH")) if p)
    print(f"[{time.strftime('%H:%M:%S')}] {shell(args, command)}", flush=True)
    start = time.time()
    with open(log, "w") as handle:
        handle.write(shell(args, command) + "\n\n")
        handle.flush()
        done = subprocess.run(
            [sys.executable, "-m", "handssl", *command[1:]],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise SystemExit(f"{log_name} failed (exit {done.returncode}); log {log}:\n{tail}")
    new = versions(folder) - before
    if len(new) != 1:
        raise SystemExit(f"{log_name}: expected one new run folder in {folder}, found {sorted(new)}")
    return new.pop(), (time.time() - start) / 60.0


def checkpoint_of(run: str, run_dir: Path) -> Path:
    """The final weights of a run: stage 1's ``stage1.ckpt`` (saved at every validation), else ``last.ckpt``."""
    return run_dir / "checkpoints" / ("stage1.ckpt" if run == "stage1" else "last.ckpt")


def load_fit(run: str, run_dir: Path, wall_min: float) -> Fit | None:
    """The :class:`Fit` of a run folder, or ``None`` when its training did not finish."""
    clock_path = run_dir / "train_clock.json"
    if not (clock_path.is_file() and checkpoint_of(run, run_dir).is_file()):
        return None
    clock = json.loads(clock_path.read_text())
    curve, final = read_metrics(run_dir / "metrics.csv")
    return Fit(run_dir, clock["train_min"], clock["val_min"], int(clock["steps"]), wall_min, curve, final)


def fit(
    args: argparse.Namespace, run: str, k: int | None, seed: int, stage1: Path | None = None
) -> tuple[Fit, list[str]]:
    """Train one run, or reuse a finished run folder with the same command; the fit and its command."""
    command = fit_command(args, run, k, seed, stage1)
    for run_dir in sorted(versions(args.work_dir / run_name(run, k, seed))):
        record = run_dir / "sweep.json"
        if record.is_file():
            saved = json.loads(record.read_text())
            found = load_fit(run, run_dir, saved["wall_min"]) if saved["command"] == command else None
            if found is not None:
                print(f"reusing {show(run_dir)}", flush=True)
                return found, command
    run_dir, wall_min = run_handssl(args, command, run_name(run, k, seed))
    result = load_fit(run, run_dir, wall_min)
    if result is None:
        raise SystemExit(f"{show(run_dir)}: training ended without train_clock.json or its final checkpoint")
    (run_dir / "sweep.json").write_text(json.dumps({"command": command, "wall_min": wall_min}) + "\n")
    return result, command


def test(
    args: argparse.Namespace, run: str, k: int, seed: int, trained: Fit, stage1: Path | None = None
) -> tuple[dict[str, float], float, list[str]]:
    """``handssl test`` of a run's final weights: the ``test/*`` metrics (prefix dropped), minutes, command."""
    command = test_command(args, run, k, seed, checkpoint_of(run, trained.run_dir), stage1)
    run_dir, minutes = run_handssl(args, command, f"{run_name(run, k, seed)}_test")
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    return {key.removeprefix("test/"): value for key, value in metrics.items()}, minutes, command


def run_row(args: argparse.Namespace, regime: str, k: int, seed: int) -> dict[str, Any]:
    """Train and test one row; its ``rows.csv`` line."""
    commands: list[list[str]] = []
    stage1_ckpt: Path | None = None
    first: Fit | None = None
    if regime == "pretrained":
        first, command = fit(args, "stage1", None, seed)
        commands.append(command)
        stage1_ckpt = checkpoint_of("stage1", first.run_dir)
    run = "stage2" if regime == "pretrained" else regime
    trained, command = fit(args, run, k, seed, stage1_ckpt)
    commands.append(command)
    metrics, test_min, command = test(args, run, k, seed, trained, stage1_ckpt)
    commands.append(command)
    offset = first.train_min if first else 0.0
    row: dict[str, Any] = {
        "regime": regime,
        "k": k,
        "seed": seed,
        "labeled": "+".join(
            str(s) for s in labeled_subjects(k, seed, QUICK_TRAIN_SUBJECTS if args.quick else TRAIN_SUBJECTS)
        ),
        "test_n_mpjpe": rounded(metrics.get("n_mpjpe")),
        "test_mpjpe": rounded(metrics.get("mpjpe")),
        "test_pa_mpjpe": rounded(metrics.get("pa_mpjpe")),
        "val_n_mpjpe": rounded(trained.final.get("val/n_mpjpe")),
        "train_min": round(offset + trained.train_min, 3),
        "val_min": round((first.val_min if first else 0.0) + trained.val_min, 3),
        "steps": (first.steps if first else 0) + trained.steps,
        "stage1_min": round(first.train_min, 3) if first else None,
        "stage1_steps": first.steps if first else None,
        "wall_min": round((first.wall_min if first else 0.0) + trained.wall_min + test_min, 3),
        "curve": json.dumps([[round(offset + t, 3), v] for t, v in trained.curve]),
        "settings": settings(args),
        "command": " && ".join(shell(args, c) for c in commands),
    }
    if run in SYNTHESIS_RUNS:
        row.update({key: rounded(metrics.get(key), 5) for key in CONTROLS})
    return row


def rounded(number: float | None, digits: int = 3) -> float | None:
    return None if number is None else round(number, digits)


def settings(args: argparse.Namespace) -> str:
    return json.dumps({key: getattr(args, key) for key in SETTINGS}, sort_keys=True)


# --- summary and gates ------------------------------------------------------------------------------------


def value(row: Mapping[str, Any], key: str) -> float | None:
    """A number of a row (``rows.csv`` strings or numbers); ``None`` when missing."""
    raw = row.get(key)
    if raw in (None, ""):
        return None
    number = float(raw)
    return number if math.isfinite(number) else None


def ratio(row: Mapping[str, Any], top: str, bottom: str) -> float | None:
    a, b = value(row, top), value(row, bottom)
    return a / b if a is not None and b else None


def select(rows: Iterable[Mapping[str, Any]], regime: str, k: int) -> list[Mapping[str, Any]]:
    return [r for r in rows if r["regime"] == regime and int(r["k"]) == k]


def mean_sd(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean, sample SD (NaN for one value) and count of the values that are not ``None``."""
    kept = [v for v in values if v is not None]
    if not kept:
        return math.nan, math.nan, 0
    return statistics.mean(kept), statistics.stdev(kept) if len(kept) > 1 else math.nan, len(kept)


def fmt(stats: tuple[float, float, int], digits: int = 1) -> str:
    m, s, n = stats
    if not n:
        return ""
    return f"{m:.{digits}f} ± {s:.{digits}f}" if s == s else f"{m:.{digits}f}"


def curve_of(row: Mapping[str, Any]) -> list[tuple[float, float]]:
    """A row's validation curve ``[(minutes, N-MPJPE), ...]`` (the ``curve`` column, JSON; empty when missing)."""
    return [(float(t), float(v)) for t, v in json.loads(row.get("curve") or "[]")]


def reach_minutes(curve: Sequence[Sequence[float]], goal: float) -> float:
    """First minute at which a validation curve ``[(minutes, N-MPJPE), ...]`` is at or below ``goal``; inf if never."""
    return next((t for t, v in curve if v <= goal), math.inf)


def time_ratios(rows: Sequence[Mapping[str, Any]], k: int) -> dict[int, float]:
    """Per seed: semi's minutes to pretrained's final validation N-MPJPE / pretrained's minutes (stage 1 + 2)."""
    pretrained = {int(r["seed"]): r for r in select(rows, "pretrained", k)}
    out: dict[int, float] = {}
    for semi in select(rows, "semi", k):
        pre = pretrained.get(int(semi["seed"]))
        goal, total = (value(pre, "val_n_mpjpe"), value(pre, "train_min")) if pre else (None, None)
        if goal is None or not total:
            continue
        out[int(semi["seed"])] = reach_minutes(curve_of(semi), goal) / total
    return out


def levels(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    return sorted({int(r["k"]) for r in rows})


def summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """``table.md``: mean ± SD over seeds per regime and ``k``."""
    lines = [
        "| regime | k | seeds | test N-MPJPE mm | test MPJPE mm | test PA-MPJPE mm | final val N-MPJPE mm "
        "| train min | steps | true / identity | true / other | true / copy | true / background | mask IoU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in levels(rows):
        for regime in REGIMES:
            group = select(rows, regime, k)
            if not group:
                continue
            cells = [fmt(mean_sd([value(r, key) for r in group])) for key in ("test_n_mpjpe", "test_mpjpe")]
            cells += [
                fmt(mean_sd([value(r, key) for r in group])) for key in ("test_pa_mpjpe", "val_n_mpjpe")
            ]
            cells += [
                fmt(mean_sd([value(r, "train_min") for r in group])),
                fmt(mean_sd([value(r, "steps") for r in group]), 0),
            ]
            for bottom in (
                "identity_l1_hand",
                "other_rotation_l1_hand",
                "copy_input_l1_hand",
                "background_l1_hand",
            ):
                cells.append(fmt(mean_sd([ratio(r, "synthesis_l1_hand", bottom) for r in group]), 3))
            cells.append(fmt(mean_sd([value(r, "mask_iou") for r in group]), 3))
            lines.append(f"| {regime} | {k} | {len(group)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Means ± SD over seeds. Test: the final weights on the test subjects. train min: the `--trainer.max_time` "
        "clock (validation included; pretrained: stage 1 + stage 2). true / X: hand-pixel L1 of the view "
        "synthesised with the true rotation over that with X (identity, another item's rotation, the input "
        "copied, the background alone); pretrained's decoder is stage 1's.",
    ]
    return "\n".join(lines) + "\n"


def per_seed_cell(values: Mapping[int, float]) -> str:
    """``s0 0.742, s1 0.800 (SD 0.041)``: a gate's value per seed, and their SD when there are several."""
    if not values:
        return ""
    shown = ", ".join(
        f"s{seed} {'never' if math.isinf(v) else f'{v:.3f}'}" for seed, v in sorted(values.items())
    )
    finite = [v for v in values.values() if math.isfinite(v)]
    return shown + (f" (SD {statistics.stdev(finite):.3f})" if len(finite) > 1 else "")


def gates(rows: Sequence[Mapping[str, Any]]) -> str:
    """``gates.md``: issue 21's gates on the rows so far (means over seeds; missing rows: not measured).

    The value is the gate's own (a ratio of the means over seeds, or a mean of per-seed ratios); ``per seed``
    shows each seed's ratio (a seed's rows share its labelled subject) and their SD, so an effect smaller than the
    seeds' spread shows as one.
    """
    lines = ["| gate | value | per seed | bar | pass |", "|---|---|---|---|---|"]

    def add(name: str, measured: float | None, seeds: Mapping[int, float], bar: float) -> None:
        if measured is None or math.isnan(measured):
            lines.append(f"| {name} | not measured | | <= {bar} | |")
        else:
            shown = "never" if math.isinf(measured) else f"{measured:.3f}"
            passed = "yes" if measured <= bar else "no"
            lines.append(f"| {name} | {shown} | {per_seed_cell(seeds)} | <= {bar} | {passed} |")

    def mean_of(regime: str, k: int, key: str) -> float | None:
        m, _, n = mean_sd([value(r, key) for r in select(rows, regime, k)])
        return m if n else None

    def over(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def paired(top: str, bottom: str, k: int) -> dict[int, float]:
        """Per seed: the top regime's test N-MPJPE over the bottom regime's."""
        below = {int(r["seed"]): value(r, "test_n_mpjpe") for r in select(rows, bottom, k)}
        out = {}
        for r in select(rows, top, k):
            ratio_ = over(value(r, "test_n_mpjpe"), below.get(int(r["seed"])))
            if ratio_ is not None:
                out[int(r["seed"])] = ratio_
        return out

    for k in levels(rows):
        sup, pre, semi = (mean_of(regime, k, "test_n_mpjpe") for regime in REGIMES)
        add(
            f"pretrained / supervised test N-MPJPE, k={k}",
            over(pre, sup),
            paired("pretrained", "supervised", k),
            0.85,
        )
        add(f"semi / supervised test N-MPJPE, k={k}", over(semi, sup), paired("semi", "supervised", k), 0.85)
        add(f"semi / pretrained test N-MPJPE, k={k}", over(semi, pre), paired("semi", "pretrained", k), 1.0)
        per_seed = time_ratios(rows, k)
        add(
            f"semi minutes to pretrained's final val N-MPJPE / pretrained's minutes, k={k} (mean of seeds)",
            statistics.mean(per_seed.values()) if per_seed else None,
            per_seed,
            0.7,
        )
        for regime in ("pretrained", "semi"):
            group = select(rows, regime, k)
            for bottom, label, bar in (
                ("identity_l1_hand", "identity", 0.8),
                ("other_rotation_l1_hand", "other rotation", 0.8),
                ("copy_input_l1_hand", "copy-input", 0.8),
                ("background_l1_hand", "background-only", 0.6),
            ):
                seeds = {int(r["seed"]): ratio(r, "synthesis_l1_hand", bottom) for r in group}
                kept = {seed: v for seed, v in seeds.items() if v is not None}
                m, _, n = mean_sd(list(kept.values()))
                add(f"{regime} true-rotation hand L1 / {label}, k={k}", m if n else None, kept, bar)
    return "\n".join(lines) + "\n"


# --- main -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subjects", type=int, nargs="+", default=[1, 2], help="labelled subjects k (of 32)")
    parser.add_argument(
        "--seeds",
        default=None,
        help=f"seeds of every k not in --seeds-per-k (default: the issue's {DEFAULT_SEEDS_PER_K}, else {DEFAULT_SEEDS})",
    )
    parser.add_argument(
        "--seeds-per-k",
        nargs="+",
        default=None,
        metavar="K:SEEDS",
        help=f"seeds of a k, e.g. 1:0,1,2 2:0,1; a k not named takes --seeds, else {DEFAULT_SEEDS_PER_K}",
    )
    parser.add_argument(
        "--regimes", default=",".join(REGIMES), help=f"comma-separated, from {', '.join(REGIMES)}"
    )
    parser.add_argument("--minutes", type=float, default=20.0, help="training minutes of every row")
    parser.add_argument(
        "--stage2-share", type=float, default=0.2, help="share of the pretrained row's minutes for stage 2"
    )
    parser.add_argument("--val-minutes", type=float, default=1.0, help="validation every this many minutes")
    parser.add_argument("--extra", default="", help="options appended to every run with a decoder (quoted)")
    parser.add_argument("--extra-all", default="", help="options appended to every run (quoted)")
    parser.add_argument("--threads", type=int, default=2, help="OMP threads of each run")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: tiny sets, seconds a row, k=1, seed 0"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="default experiments/results/nvs_sweep[_quick]"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="run folders (default runs/<name of --out>)"
    )
    parser.add_argument("--budget-min", type=float, default=None, help="start no row after this many minutes")
    parser.add_argument("--print-commands", action="store_true", help="print every row's commands and stop")
    argv = list(sys.argv[1:] if argv is None else argv)
    for i in range(len(argv) - 1, 0, -1):  # `--extra "--model..."`: argparse takes a leading -- for an option
        if argv[i - 1] in ("--extra", "--extra-all"):
            argv[i - 1 : i + 1] = [f"{argv[i - 1]}={argv[i]}"]
    args = parser.parse_args(argv)
    try:
        if args.quick:
            args.subjects = [1]
            args.plan = {1: [0]}
            args.minutes, args.val_minutes = 0.25, 4 / 60
        else:
            args.plan = seed_plan(args.subjects, args.seeds, args.seeds_per_k)
    except ValueError as err:
        parser.error(str(err))
    args.regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    unknown = sorted(set(args.regimes) - set(REGIMES))
    if unknown:
        parser.error(f"unknown regimes {unknown}; choose from {', '.join(REGIMES)}")
    if any(k < 1 or k > TRAIN_SUBJECTS for k in args.subjects):
        parser.error(f"--subjects must be between 1 and {TRAIN_SUBJECTS}, got {args.subjects}")
    if not (args.minutes > 0 and args.val_minutes > 0 and 0 < args.stage2_share < 1):
        parser.error("--minutes and --val-minutes must be positive and --stage2-share in (0, 1)")
    default = "experiments/results/nvs_sweep" + ("_quick" if args.quick else "")
    args.out = (args.out or Path(default)).resolve()
    args.work_dir = (args.work_dir or Path("runs") / args.out.name).resolve()
    return args


def load_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def append_row(path: Path, row: Mapping[str, Any]) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


def write_reports(out: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    (out / "table.md").write_text(summary(rows))
    (out / "gates.md").write_text(gates(rows))
    if rows:
        (out / "curves.png").write_bytes(curves_png(rows))


def curves_png(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """``curves.png``: validation N-MPJPE against training minutes, a panel per ``k``, a line per seed.

    The pretrained row's points are stage 2's (stage 1 trains no pose head); the dashed line is its mean final
    validation error and the dotted one 0.7 x its mean minutes: the time gate asks semi's curve to cross the
    dashed line left of the dotted one.
    """
    from handssl import viz

    ks = levels(rows)
    figure = viz.new_figure(6.0 * len(ks), 4.0)
    for index, k in enumerate(ks):
        ax = figure.add_subplot(1, len(ks), index + 1)
        groups = {regime: select(rows, regime, k) for regime in REGIMES}
        runs = {regime: [curve_of(r) for r in group] for regime, group in groups.items() if group}
        viz.plot_learning_curves(
            runs,
            ax=ax,
            ylabel="validation N-MPJPE (mm)",
            title=f"{k} labelled subject(s) of {TRAIN_SUBJECTS}",
        )
        pretrained = groups["pretrained"]
        goal, _, n = mean_sd([value(r, "val_n_mpjpe") for r in pretrained])
        minutes, _, _ = mean_sd([value(r, "train_min") for r in pretrained])
        if n:
            colour = f"C{list(runs).index('pretrained')}"
            ax.axhline(goal, color=colour, linestyle="--", linewidth=0.8)
            ax.axvline(0.7 * minutes, color="grey", linestyle=":", linewidth=0.8)
    return viz.figure_png(figure)


def print_commands(args: argparse.Namespace) -> None:
    stage1 = Path(args.work_dir) / "stage1_seed<seed>" / "version_<n>" / "checkpoints" / "stage1.ckpt"
    for k, seeds in args.plan.items():
        for seed in seeds:
            for regime in args.regimes:
                runs = ["stage1", "stage2"] if regime == "pretrained" else [regime]
                print(f"# {regime}, k={k}, seed {seed}")
                for run in runs:
                    ckpt = Path(str(stage1).replace("<seed>", str(seed))) if run == "stage2" else None
                    print(shell(args, fit_command(args, run, k, seed, ckpt)))
                final = Path(args.work_dir) / run_name(runs[-1], k, seed) / "version_<n>" / "checkpoints"
                print(shell(args, test_command(args, runs[-1], k, seed, final / "last.ckpt", ckpt)))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.print_commands:
        print_commands(args)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "rows.csv"
    rows = load_rows(path)
    mine = settings(args)
    if any(r.get("settings") != mine for r in rows):
        raise SystemExit(
            f"{path} holds rows of other settings than {mine}: use another --out (and --work-dir)"
        )
    done = {(r["regime"], int(r["k"]), int(r["seed"])) for r in rows}
    start = time.time()
    for k, seeds in args.plan.items():
        for seed in seeds:
            for regime in args.regimes:
                if (regime, k, seed) in done:
                    continue
                if args.budget_min is not None and time.time() - start > 60 * args.budget_min:
                    print(f"budget of {args.budget_min} min spent; run again to continue", flush=True)
                    write_reports(args.out, rows)
                    return
                row = run_row(args, regime, k, seed)
                append_row(path, row)
                rows = load_rows(path)
                write_reports(args.out, rows)
                shown = ("test_n_mpjpe", "val_n_mpjpe", "train_min", "steps", "wall_min")
                print(
                    f"{regime} k={k} seed {seed}: " + ", ".join(f"{key}={row[key]}" for key in shown),
                    flush=True,
                )
    write_reports(args.out, rows)
    print((args.out / "table.md").read_text())
    print((args.out / "gates.md").read_text())
    print(f"{time.time() - start:.0f} s; wrote {show(args.out)}/rows.csv, table.md, gates.md")


if __name__ == "__main__":
    main()
