"""Label sweep of the NVS regimes by labelled subjects on SynthHands v2 (issue 11's table and gates). HISTORICAL.

**Historical: new NVS sweeps use** ``experiments/studies/nvs_sweep.py``, which runs the recipes users run
(``handssl fit -c experiments/nvs_<regime>.yaml``) over seeds. This script builds its models and data from
its own flags (:class:`~handssl.models.NVSModule` with the module's Python defaults unless a flag sets one, not
the ``experiments/model/nvs_*.yaml`` recipes), and is kept, unchanged in what it runs, only so that the
commands the README records for its numbers (the issue 11 label-sweep table, the ``semi`` recipe-choice and
seed-1 tables, the shipped ``nvs-supervised-synthhands`` and ``nvs-semi-synthhands``) still run as written.

Why it was not converted to the recipes: no recipe run reproduces its rows. Its budget is training time with
validation excluded (``BudgetClock``), the recipes' ``--trainer.max_time`` counts validation; its models take
``NVSModule``'s defaults, the recipes their own settings; a wrapper over the recipes would write new rows under
old names. What a rerun gives: the rows of the current ``NVSModule`` defaults, which have moved since the
published rows (e.g. ``pose_head.rows``, see the README), so the published numbers are reproduced only at the
commit that made them: ``git log -- experiments/results/<dir>`` for a results folder, ``commit`` in
``handssl/pretrained/weights/<name>.json`` for a shipped network.

For every number of labelled subjects ``k`` (whole subjects of the 32 training subjects, as Rhodin et al.,
"Unsupervised Geometry-Aware Representation for 3D Human Pose Estimation", ECCV'18, label them) it trains

* ``supervised``: encoder + pose head on the labelled subjects (``L`` labelled items per step);
* ``pretrained``: stage 1 (synthesis only, ``2 L`` unlabelled items per step, all subjects), run **once** and
  shared by every ``k``; stage 2 the pose head on the frozen encoder (``L`` labelled items per step);
* ``semi``: everything jointly, ``L`` labelled + ``L`` unlabelled items per step;

and, with ``--upper-bound`` (default), ``supervised`` on all training subjects. Every run uses the
:class:`~handssl.models.NVSModule` defaults unless a flag overrides one, and is evaluated on the test
subjects: N-MPJPE, MPJPE, PA-MPJPE, and for the models with a decoder the hand-pixel L1 of the synthesized
target view against copying the input view and against the background alone, and the IoU of the predicted
mask with the hand. A ``mean_pose`` row per ``k`` predicts the labelled subjects' mean pose. Every run's
training wall and CPU time (validation excluded) and its validation N-MPJPE against training time
(``curves.jsonl``) are recorded; ``label_sweep.png`` plots both.

Resumable: each finished row is appended to ``<out>/rows.jsonl`` at once (and ``results.md`` / ``gates.md`` /
``label_sweep.png`` rewritten); a rerun with the same ``--out`` skips rows already there and reuses stage 1's
checkpoint (``runs/<name of --out>/stage1.ckpt``), so one command may span sessions.

    python experiments/studies/label_sweep.py --quick                 # smoke test, about two minutes
    python experiments/studies/label_sweep.py --subjects 1 2 4 --minutes 20 --stage2-minutes 4 --threads 2 \\
        --out experiments/results/label_sweep                 # ~3 h of 2 CPU cores, resumable

Gates (``gates.md``): semi N-MPJPE <= 0.85 x supervised at each k; pretrained <= 0.9 x supervised at k = 1;
semi reaches pretrained's final validation N-MPJPE within pretrained's stage 1 + stage 2 wall time; synthesized
hand pixels L1 <= 0.8 x background-only and <= 0.9 x copy-input (semi at the smallest k).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from handssl.data import MultiViewDataModule, SynthHandsMultiView, SynthHandsWorld
from handssl.metrics.functional import mpjpe, n_mpjpe, pa_mpjpe
from handssl.models import NVSModule
from handssl.models.options import Optimization
from handssl.viz import new_figure

REGIMES = ("supervised", "pretrained", "semi")
TEST_KEYS = (
    "mpjpe",
    "n_mpjpe",
    "pa_mpjpe",
    "synthesis_l1_hand",
    "copy_input_l1_hand",
    "background_l1_hand",
    "mask_iou",
    "synthesis_l1",
    "copy_input_l1",
)


class BudgetClock(pl.Callback):
    """Training wall and CPU time (validation excluded), the validation N-MPJPE curve, and a time budget.

    Batch loading counts (the gap since the previous batch ended). Training stops once ``budget_s`` seconds
    of training time are spent.
    """

    def __init__(self, budget_s: float | None = None, offset_s: float = 0.0) -> None:
        self.budget_s = budget_s
        self.offset_s = offset_s
        self.train_s = 0.0
        self.cpu_s = 0.0
        self.steps = 0
        self.curve: list[tuple[int, float, float]] = []
        self._mark: tuple[float, float] | None = None

    @staticmethod
    def _now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def on_train_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._mark = self._now()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        now = self._now()
        if self._mark is not None:
            self.train_s += now[0] - self._mark[0]
            self.cpu_s += now[1] - self._mark[1]
        self._mark = now
        self.steps = trainer.global_step
        if self.budget_s is not None and self.train_s >= self.budget_s:
            trainer.should_stop = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark = self._now()
        value = trainer.callback_metrics.get("val/n_mpjpe")
        if value is not None and not trainer.sanity_checking:
            self.curve.append((trainer.global_step, round(self.offset_s + self.train_s, 1), float(value)))


def make_datasets(args: argparse.Namespace) -> dict[str, SynthHandsMultiView]:
    world = SynthHandsWorld(style=args.style, image_size=args.image_size, seed=args.seed)
    common = {"world": world, "cache_mb": args.cache_mb}
    if args.quick:
        small = {"sequences_per_subject": 2, "frames_per_sequence": 8}
        return {
            "train": SynthHandsMultiView(split="train", num_subjects=4, **small, **common),
            "val": SynthHandsMultiView(split="val", num_subjects=2, **small, **common),
            "test": SynthHandsMultiView(split="test", num_subjects=2, **small, **common),
        }
    return {
        "train": SynthHandsMultiView(split="train", **common),
        "val": SynthHandsMultiView(split="val", sequences_per_subject=2, frames_per_sequence=16, **common),
        "test": SynthHandsMultiView(split="test", sequences_per_subject=2, frames_per_sequence=32, **common),
    }


def make_datamodule(
    args: argparse.Namespace, data: dict, subjects: int, labeled: int, unlabeled: int
) -> MultiViewDataModule:
    batch = labeled + unlabeled
    return MultiViewDataModule(
        train=data["train"],
        val=data["val"],
        test=data["test"],
        labeled_subjects=max(subjects, 1),  # stage 1 hides every label (labeled_share 0) anyway
        labeled_share=labeled / batch,
        batch_size=batch,
        statistics_items=args.statistics_items,
        num_workers=args.num_workers,
        seed=args.seed,
    )


def model_args(args: argparse.Namespace) -> dict[str, Any]:
    """NVSModule arguments: the image size and the recipe flags given on the command line (else its defaults)."""
    out: dict[str, Any] = {"image_size": args.image_size}
    if args.lr is not None:  # NVSModule's default group (constant, no weight decay) with this learning rate
        out["optimizer"] = Optimization(lr=args.lr, weight_decay=0.0, scheduler="none")
    groups = {
        "pose": {"weight": args.pose_weight, "start_step": args.warmup_steps},
        "synthesis": {
            "silhouette_threshold": args.silhouette_threshold,
            "structural": args.structural_loss,
            "items": args.synthesis_items,
        },
        "pose_head": {"hidden": tuple(args.pose_hidden) if args.pose_hidden else None},
        "decoder": {"latent_channels": args.decoder_latent_channels},
    }
    if args.quick:
        groups["pose_head"]["hidden"] = (256, 256)
        out["num_points"] = 64
    for group, values in groups.items():  # a mapping: the keys left out keep NVSModule's defaults
        given = {key: value for key, value in values.items() if value is not None}
        if given:
            out[group] = given
    return out


def train(
    args: argparse.Namespace,
    module: NVSModule,
    dm: MultiViewDataModule,
    minutes: float | None,
    steps: int,
    offset_s: float = 0.0,
) -> tuple[BudgetClock, dict[str, float]]:
    pl.seed_everything(args.seed, verbose=False)
    clock = BudgetClock(None if minutes is None else 60.0 * minutes, offset_s)
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
        limit_val_batches=args.val_batches,
        callbacks=[clock],
    )
    trainer.fit(module, datamodule=dm)
    metrics = trainer.test(module, datamodule=dm, verbose=False)[0]
    return clock, {k: float(metrics[f"test/{k}"]) for k in TEST_KEYS if f"test/{k}" in metrics}


def mean_pose_metrics(dm: MultiViewDataModule) -> dict[str, float]:
    """Test errors of predicting the labeled subjects' mean root-relative pose for every image."""
    mean, _ = dm.pose_statistics()
    preds, targets, valids = [], [], []
    for batch in dm.test_dataloader():
        joints = batch["joints3d"]
        targets.append(joints - joints[:, :1])
        valids.append(batch["valid"])
        preds.append(mean.expand_as(joints))
    pred, target, valid = torch.cat(preds), torch.cat(targets), torch.cat(valids)
    return {
        "mpjpe": float(mpjpe(pred, target, valid)),
        "n_mpjpe": float(n_mpjpe(pred, target, valid)),
        "pa_mpjpe": float(pa_mpjpe(pred, target, valid)),
    }


class Store:
    """``rows.jsonl`` / ``curves.jsonl`` under ``out``, appended row by row; finished rows are skipped on resume."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.rows = self._read("rows.jsonl")

    def _read(self, name: str) -> list[dict[str, Any]]:
        path = self.out / name
        return (
            [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if path.exists()
            else []
        )

    def find(self, regime: str, subjects: int) -> dict[str, Any] | None:
        return next((r for r in self.rows if r["regime"] == regime and r["subjects"] == subjects), None)

    def add(self, row: dict[str, Any], curve: list[tuple[int, float, float]] = ()) -> None:
        row = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
        with open(self.out / "rows.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.out / "curves.jsonl", "a") as f:
            for step, seconds, value in curve:
                f.write(
                    json.dumps(
                        {
                            "regime": row["regime"],
                            "subjects": row["subjects"],
                            "step": step,
                            "train_s": seconds,
                            "val_n_mpjpe": round(value, 2),
                        }
                    )
                    + "\n"
                )
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        self.write_tables()

    def curves(self) -> list[dict[str, Any]]:
        return self._read("curves.jsonl")

    def write_tables(self) -> None:
        keys = ["regime", "subjects", "steps", "wall_s", "cpu_s", "total_wall_s", *TEST_KEYS]
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for r in self.rows:
            lines.append("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
        (self.out / "results.md").write_text("\n".join(lines) + "\n")
        (self.out / "gates.md").write_text(gates(self.rows, self.curves()))
        plot(self.out / "label_sweep.png", self.rows, self.curves())


def gates(rows: list[dict[str, Any]], curves: list[dict[str, Any]]) -> str:
    """The issue's gates from the rows measured so far (missing rows: 'not measured')."""

    def row(regime: str, k: int) -> dict | None:
        return next((r for r in rows if r["regime"] == regime and r["subjects"] == k), None)

    lines = ["| gate | value | bar | pass |", "|---|---|---|---|"]

    def add(name: str, value: float | None, bar: float) -> None:
        if value is None or not math.isfinite(value):
            lines.append(f"| {name} | not measured | <= {bar} | |")
        else:
            lines.append(f"| {name} | {value:.3f} | <= {bar} | {'yes' if value <= bar else 'no'} |")

    levels = sorted({r["subjects"] for r in rows if r["regime"] in REGIMES})
    for k in levels:
        sup, semi, pre = row("supervised", k), row("semi", k), row("pretrained", k)
        ratio = semi["n_mpjpe"] / sup["n_mpjpe"] if sup and semi else None
        add(f"semi / supervised N-MPJPE, {k} subject(s)", ratio, 0.85)
        ratio = pre["n_mpjpe"] / sup["n_mpjpe"] if sup and pre else None
        add(f"pretrained / supervised N-MPJPE, {k} subject(s)", ratio, 0.9)
        if pre and semi:
            final = [c for c in curves if c["regime"] == "pretrained" and c["subjects"] == k]
            semi_curve = [c for c in curves if c["regime"] == "semi" and c["subjects"] == k]
            reach = None
            if final:
                goal = final[-1]["val_n_mpjpe"]
                hit = [c["train_s"] for c in semi_curve if c["val_n_mpjpe"] <= goal]
                reach = hit[0] / pre["total_wall_s"] if hit else math.inf
            lines.append(
                f"| semi time to pretrained's final val N-MPJPE / pretrained stage 1+2 wall, {k} subject(s) | "
                f"{'never' if reach == math.inf else ('not measured' if reach is None else f'{reach:.3f}')} "
                f"| <= 1.0 (seed: ~0.5) | {'' if reach is None else ('yes' if reach <= 1.0 else 'no')} |"
            )
    for regime in ("semi", "stage1"):
        candidates = [r for r in rows if r["regime"] == regime and "synthesis_l1_hand" in r]
        if candidates:
            r = min(candidates, key=lambda x: x["subjects"])
            add(f"{regime} hand L1 / background-only", r["synthesis_l1_hand"] / r["background_l1_hand"], 0.8)
            add(f"{regime} hand L1 / copy-input", r["synthesis_l1_hand"] / r["copy_input_l1_hand"], 0.9)
    return "\n".join(lines) + "\n"


def plot(path: Path, rows: list[dict[str, Any]], curves: list[dict[str, Any]]) -> None:
    """Test N-MPJPE against labelled subjects, and validation N-MPJPE against training time at the smallest k."""
    figure = new_figure(11.0, 4.0)
    left, right = figure.subplots(1, 2)
    for regime in (*REGIMES, "mean_pose"):
        points = sorted((r["subjects"], r["n_mpjpe"]) for r in rows if r["regime"] == regime)
        if points:
            style = {"linestyle": "--", "color": "grey"} if regime == "mean_pose" else {"marker": "o"}
            left.plot(*zip(*points), label=regime.replace("_", " "), **style)
    left.set_xscale("log", base=2)
    ticks = sorted({r["subjects"] for r in rows if r["subjects"] > 0})
    left.set_xticks(ticks, [str(t) for t in ticks])
    left.minorticks_off()
    left.set(xlabel="labelled subjects (of 32)", ylabel="test N-MPJPE (mm)", title="NVS regimes by labels")
    levels = [r["subjects"] for r in rows if r["regime"] in REGIMES and r["subjects"] > 0]
    if levels:
        k = min(levels)
        for regime in REGIMES:
            curve = [
                (c["train_s"] / 60, c["val_n_mpjpe"])
                for c in curves
                if (c["regime"], c["subjects"]) == (regime, k)
            ]
            if curve:
                right.plot(*zip(*curve), label=regime)
        right.set(
            xlabel="training minutes (pretrained: from stage 1's start)", ylabel="validation N-MPJPE (mm)"
        )
        right.set_title(f"{k} labelled subject(s): accuracy against time")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
    figure.savefig(path)


def stage1_checkpoint(
    args: argparse.Namespace, data: dict, store: Store, common: dict[str, Any]
) -> tuple[Path, dict[str, float]]:
    """Stage 1 of the pretrained regime (trained once, on first need, and shared by every k): path and times."""
    path, info = args.work_dir / "stage1.ckpt", args.out / "stage1.json"
    if not (path.exists() and info.exists()):
        L = args.labeled_per_step
        module = NVSModule(regime="pretrained", stage=1, **common)
        clock, metrics = train(
            args, module, make_datamodule(args, data, 0, 0, 2 * L), args.minutes, args.steps
        )
        save_weights(module, path)
        stage1 = {"steps": clock.steps, "wall_s": clock.train_s, "cpu_s": clock.cpu_s}
        info.write_text(json.dumps(stage1))
        store.add({"regime": "stage1", "subjects": 0, **stage1, "total_wall_s": clock.train_s, **metrics})
    return path, json.loads(info.read_text())


def save_weights(module: NVSModule, path: Path) -> None:
    """The trained module's weights and hyper-parameters (what ``experiments/tools/ship_weights.py`` packs)."""
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--subjects", type=int, nargs="+", default=[1, 2, 4], help="labelled subjects of the 32"
    )
    parser.add_argument(
        "--upper-bound",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train supervised on all training subjects",
    )
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    parser.add_argument(
        "--minutes", type=float, default=20.0, help="training minutes of supervised, semi, stage 1"
    )
    parser.add_argument("--stage2-minutes", type=float, default=4.0, help="training minutes of stage 2")
    parser.add_argument("--steps", type=int, default=100_000, help="step cap of every run (with --minutes)")
    parser.add_argument(
        "--labeled-per-step", type=int, default=8, help="L: labeled items per step (16 on a GPU)"
    )
    parser.add_argument(
        "--pose-weight", type=float, default=None, help="semi: pose loss weight (default: NVSModule's)"
    )
    parser.add_argument(
        "--pose-hidden", type=int, nargs="+", default=None, help="pose MLP widths (default: NVSModule's)"
    )
    parser.add_argument(
        "--decoder-latent-channels",
        type=int,
        default=None,
        help="decoder input channels (default: NVSModule's)",
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="semi: synthesis-only steps first (default: NVSModule's)",
    )
    parser.add_argument("--silhouette-threshold", type=float, default=None)
    parser.add_argument(
        "--synthesis-items",
        choices=("all", "unlabeled"),
        default=None,
        help="semi: items the synthesis loss covers",
    )
    parser.add_argument(
        "--structural-loss",
        choices=("ssim", "gradient", "none"),
        default=None,
        help="structural term of the synthesis loss (default: NVSModule's)",
    )
    parser.add_argument(
        "--eval-every", type=int, default=250, help="validation N-MPJPE every this many steps"
    )
    parser.add_argument(
        "--val-batches", type=int, default=16, help="validation batches per evaluation (16: all 256 items)"
    )
    parser.add_argument("--statistics-items", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--style", default="synthetic", help="synthetic: clean renders (threshold 0.02)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: NVSModule's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--cache-mb", type=float, default=1024.0)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny data, a few steps")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="checkpoints (default: runs/<name of --out>)"
    )
    args = parser.parse_args(argv)
    for name in ("minutes", "stage2_minutes", "steps", "labeled_per_step", "eval_every", "val_batches"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.quick:
        args.minutes, args.stage2_minutes = None, None
        args.steps, args.eval_every, args.val_batches = 3, 2, 1
        args.labeled_per_step, args.statistics_items = 2, 4
        args.out = args.out or Path("experiments/results/label_sweep_quick")
    args.out = args.out or Path("experiments/results/label_sweep")
    args.work_dir = args.work_dir or Path("runs") / args.out.name
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        "label_sweep.py is historical (kept for the README's recorded commands); new NVS sweeps: "
        "experiments/studies/nvs_sweep.py, on the recipes",
        flush=True,
    )
    store = Store(args.out)
    (args.out / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))
    data = make_datasets(args)
    available = len(set(data["train"].item_subjects()))
    if any(not 1 <= k <= available for k in args.subjects):
        parser.error(
            f"--subjects must be between 1 and {available} (the training subjects), got {args.subjects}"
        )
    L = args.labeled_per_step
    common = model_args(args)

    # Gradient balance of the semi loss at initialisation: at pose.weight 1 and at the one used.
    if "semi" in args.regimes and not (args.out / "gradient_ratio.json").exists():
        dm = make_datamodule(args, data, args.subjects[0], L, L)
        batch = next(iter(dm.train_dataloader()))
        ratios = {}
        for weight in (1.0, NVSModule(regime="semi", **common).options.pose.weight):
            pl.seed_everything(args.seed, verbose=False)
            module = NVSModule(
                regime="semi", **{**common, "pose": {**common.get("pose", {}), "weight": weight}}
            )
            module.pose_head.set_statistics(*dm.pose_statistics())
            norms = module.encoder_gradient_norms(batch)
            ratios[f"pose_weight={weight:g}"] = {
                **norms,
                "pose/synthesis": norms["pose"] / norms["synthesis"],
            }
        (args.out / "gradient_ratio.json").write_text(json.dumps(ratios, indent=1))
        print(json.dumps({"gradient_ratio": ratios}), flush=True)

    # Per k: supervised and semi first, pretrained last (its stage 1 is trained on first need).
    order = [r for r in ("supervised", "semi", "pretrained") if r in args.regimes]
    runs = [(k, regime) for k in args.subjects for regime in order]
    if args.upper_bound:
        runs.append((available, "supervised"))
    for k, regime in runs:
        if store.find("mean_pose", k) is None:
            dm = make_datamodule(args, data, k, L, 0)
            store.add({"regime": "mean_pose", "subjects": k, "steps": 0, **mean_pose_metrics(dm)})
        if store.find(regime, k) is not None:
            continue
        if regime == "pretrained":
            stage1_path, stage1 = stage1_checkpoint(args, data, store, common)
            module = NVSModule(regime="pretrained", stage=2, pretrained_checkpoint=str(stage1_path), **common)
            dm, minutes, offset = make_datamodule(args, data, k, L, 0), args.stage2_minutes, stage1["wall_s"]
        else:
            module = NVSModule(regime=regime, **common)
            dm = make_datamodule(args, data, k, L, L if regime == "semi" else 0)
            minutes, offset = args.minutes, 0.0
        clock, metrics = train(args, module, dm, minutes, args.steps, offset_s=offset)
        stage1_cpu = stage1["cpu_s"] if regime == "pretrained" else 0.0
        total = (offset + clock.train_s, stage1_cpu + clock.cpu_s)
        save_weights(module, args.work_dir / f"{regime}_{k}.ckpt")
        row = {"regime": regime, "subjects": k, "steps": clock.steps, "wall_s": clock.train_s}
        row.update(cpu_s=clock.cpu_s, total_wall_s=total[0], total_cpu_s=total[1], **metrics)
        store.add(row, clock.curve)
    print((args.out / "gates.md").read_text())
    print(f"wrote {args.out}/rows.jsonl, curves.jsonl, results.md, gates.md, label_sweep.png")


if __name__ == "__main__":
    main()
