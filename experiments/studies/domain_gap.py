"""SynthHands v2 domain-gap benchmark: does the world pose the seeds' problem (RHD -> STB / Dexter+Object)?

With one fixed training budget it trains the supervised baseline on synthetic-style labels (source-only) and
on real-style labels (target oracle) and scores both, and the mean training pose, on the test subjects of
every style; it also measures the world itself. Its stages, in order (times: the committed
``experiments/results/domain_gap`` run on 2 CPU cores; ``--quick``: a few seconds each):

* ``world`` (~10 s): hand brightness per style on the same 512 test views, and how much of a crop the hand
  covers;
* ``leak`` (~20 s): whether the appearance image of a multi-view item gives its pose away (1024 test items);
* ``speed`` (~10 s): first-pass rendering of every style against the training step, in images per CPU-second
  (run it on an idle machine: ``--redo speed``);
* ``mean_pose`` (~30 s): always predicting the mean root-relative training pose;
* ``source_only`` (~7 min: 5.5 to train, 1.5 to score): the recipe users run,
  ``handssl fit -c experiments/model/supervised.yaml -c experiments/data/synthhands.yaml``, with the study's
  options on the command line (:func:`recipe_args`: the training subjects, sequences and world seed, the
  synthetic style, batch 64, learning rate 2e-3, 2000 steps, no validation, CPU), run in this process through
  the command line's own ``make_cli``; its final weights are then scored on the test subjects of every style;
* ``oracle`` (~11 min in that run, 10 to train): the same with ``--data.init_args.train.init_args.world
  .init_args.style=real``.

Each training stage's JSON records its exact ``handssl fit`` command (``command``; run it to get the same
weights, on the same number of threads) and its run folder (``run_dir``, under ``--work-dir``: ``config.yaml``
and ``last.ckpt``). Building the model and data from the recipe instead of by hand (as before) changed no
number: ``--quick`` and a 200-step run on the full sets (``--steps 200``) give the same scores to the last digit.

Each stage saves its JSON under ``--out`` as soon as it finishes, so an interrupted run continues where it
stopped; ``--force`` recomputes, ``--redo STAGE`` one stage. The gates of the SynthHands v2 issue are checked at
the end and written with the table to ``<out>/domain_gap.md``.

    python experiments/studies/domain_gap.py                 # the benchmark (about 20 min on 2 cores)
    python experiments/studies/domain_gap.py --quick         # a smoke run (about 25 s; numbers are not meaningful)
    python experiments/studies/domain_gap.py --figure docs/synthhands_styles.png   # also draw 16 crops per style
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from handssl.data.synthhands import SynthHands, SynthHandsMultiView, SynthHandsWorld
from handssl.metrics.functional import masked_mean, mpjpe, pa_mpjpe, pck_auc
from handssl.models import SupervisedModule
from handssl.models.options import Optimization
from handssl.skeleton import root_relative

ROOT = Path(__file__).resolve().parents[2]  # the repository root: the recipe's paths are relative to it
RECIPE = ("experiments/model/supervised.yaml", "experiments/data/synthhands.yaml")
"""The recipe the training stages run (``handssl fit -c`` each), with the options of :func:`recipe_args`."""
STYLES = ("synthetic", "real", "real_object")
STAGES = ("world", "leak", "speed", "mean_pose", "source_only", "oracle")
GATES = {
    "source_only_vs_mean_pose": 0.8,
    "oracle_vs_source_only": 0.75,
    "source_synthetic_vs_source_real": 0.8,
    "leak_vs_mean_pose": 0.9,
    "hand_luminance_real_vs_synthetic": 0.6,
    "dark_real_hands": 0.01,
    "render_vs_training_step": 3.0,
    "hand_mask_share": 0.2,
}


def world(style: str, args: argparse.Namespace) -> SynthHandsWorld:
    return SynthHandsWorld(style=style, image_size=args.image_size, seed=args.seed)


def dataset(split: str, style: str, args: argparse.Namespace, **kwargs: Any) -> SynthHands:
    subjects = {"train": args.train_subjects, "test": args.test_subjects}[split]
    return SynthHands(
        split=split,
        world=world(style, args),
        num_subjects=subjects,
        sequences_per_subject=args.sequences,
        cache_mb=args.cache_mb,
        **kwargs,
    )


def batches(ds: SynthHands, size: int = 256) -> Any:
    for start in range(0, len(ds), size):
        yield ds.__getitems__(list(range(start, min(start + size, len(ds)))))


def stack(samples: list[dict], key: str) -> Tensor:
    return torch.stack([s[key] for s in samples])


def pose_scores(pred: Tensor, target: Tensor) -> dict[str, float]:
    """MPJPE, PA-MPJPE (mm) and AUC 20-50 mm of root-relative poses."""
    return {
        "mpjpe": float(mpjpe(pred, target)),
        "pa_mpjpe": float(pa_mpjpe(pred, target)),
        "auc_20_50": float(pck_auc(pred, target)),
    }


# ---------------------------------------------------------------------------------------------------- stages


def stage_world(args: argparse.Namespace) -> dict:
    """Hand brightness per style on the same views, and how much of a crop the hand covers."""
    count = args.world_views
    out: dict[str, Any] = {}
    luminance = {}
    for style in STYLES[:2]:
        ds = dataset("test", style, args, extra_keys=["hand_mask", "mask"])
        index = np.linspace(0, len(ds) - 1, count).round().astype(int).tolist()
        samples = ds.__getitems__(index)
        image, hand = stack(samples, "image"), stack(samples, "hand_mask")
        luma = 0.299 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2]
        luminance[style] = masked_mean(luma, hand[:, 0], dim=(1, 2))
        out[f"hand_mask_share_{style}"] = float(hand.mean())
        out[f"mask_share_{style}"] = float(stack(samples, "mask").mean())
    ratio = luminance["real"] / luminance["synthetic"].clamp_min(1e-6)
    out["hand_luminance_median_synthetic"] = float(luminance["synthetic"].median())
    out["hand_luminance_median_real"] = float(luminance["real"].median())
    out["hand_luminance_real_vs_synthetic"] = float(ratio.median())
    out["dark_real_hands"] = float((luminance["real"] < 0.15).float().mean())
    out["dark_synthetic_hands"] = float((luminance["synthetic"] < 0.15).float().mean())
    out["views"] = count
    return out


def stage_leak(args: argparse.Namespace) -> dict:
    """Does the appearance image of a multi-view item give the pose away? Compared with the mean pose."""
    common = {
        "world": SynthHandsWorld(seed=args.seed),
        "sequences_per_subject": args.sequences,
        "extra_keys": [],
    }
    train = SynthHandsMultiView(split="train", num_subjects=args.train_subjects, **common)
    test = SynthHandsMultiView(split="test", num_subjects=args.test_subjects, **common)
    pick = np.linspace(0, len(train) - 1, min(len(train), 1024)).round().astype(int).tolist()
    mean_pose = root_relative(stack(train.__getitems__(pick), "joints3d")[:, 0]).mean(0)
    index = np.linspace(0, len(test) - 1, min(len(test), args.leak_items)).round().astype(int).tolist()
    samples = test.__getitems__(index)
    target = root_relative(stack(samples, "joints3d")[:, 0])
    same = SynthHandsMultiView(
        split="test", num_subjects=args.test_subjects, appearance_source="same_sequence", **common
    )
    same_t2 = root_relative(stack(same.__getitems__(index), "joints3d_t2")[:, 0])
    return {
        "mean_pose": pose_scores(mean_pose.expand_as(target), target),
        "appearance_frame": pose_scores(root_relative(stack(samples, "joints3d_t2")[:, 0]), target),
        "same_sequence_frame": pose_scores(same_t2, target),
        "items": len(index),
    }


def training_step_rate(args: argparse.Namespace) -> float:
    """Images per CPU-second of the quickstart network's training step (forward, backward, AdamW)."""
    model = SupervisedModule(optimizer=Optimization(lr=2e-3, scheduler="none"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = {
        "image": torch.rand(64, 3, args.image_size, args.image_size),
        "joints3d": torch.randn(64, 21, 3) * 40 + torch.tensor([0.0, 0.0, 500.0]),
        "joints2d": torch.rand(64, 21, 2) * args.image_size,
        "valid": torch.ones(64, 21, dtype=torch.bool),
    }
    model.log = lambda *a, **k: None  # type: ignore[method-assign]
    for step in range(args.rate_steps + 3):
        if step == 3:
            start = time.process_time()
        optimizer.zero_grad()
        model.training_step(batch, step).backward()
        optimizer.step()
    return 64 * args.rate_steps / (time.process_time() - start)


def stage_speed(args: argparse.Namespace) -> dict:
    """First-pass rendering (nothing cached) against the training step, both in images per CPU-second."""
    out: dict[str, Any] = {"training_step": training_step_rate(args)}
    for style in STYLES:
        ds = SynthHands(split="val", world=world(style, args), cache_mb=0)
        ds.__getitems__([0])  # textures and the first motion sequence are built once per process
        index = list(range(1, 1 + args.render_views))
        start = time.process_time()
        for first in range(0, len(index), 256):
            ds.__getitems__(index[first : first + 256])
        out[f"render_{style}"] = len(index) / (time.process_time() - start)
    out["render_slowest"] = min(out[f"render_{s}"] for s in STYLES)
    out["render_vs_training_step"] = out["render_slowest"] / out["training_step"]
    return out


def predict(model: SupervisedModule, ds: SynthHands) -> tuple[Tensor, Tensor]:
    preds, targets = [], []
    model.eval()
    with torch.no_grad():
        for samples in tqdm(
            batches(ds), total=math.ceil(len(ds) / 256), desc=f"test {ds.style}", leave=False
        ):
            preds.append(model.predict_joints3d({"image": stack(samples, "image")}))
            targets.append(root_relative(stack(samples, "joints3d")))
    return torch.cat(preds), torch.cat(targets)


def recipe_args(style: str, args: argparse.Namespace, root: Path | None = None) -> list[str]:
    """The training stage's ``handssl fit`` arguments: :data:`RECIPE` with the study's budget and sets.

    Only the training set, the batch, the learning rate and the step budget change; validation is off (the
    study scores the final weights on every style's test subjects itself) and training stays on the CPU, whose
    training step the speed stage measures.

    Args:
        style: The style of the training labels (``synthetic``: source-only; ``real``: target oracle).
        args: The study's arguments.
        root: Where the recipe's paths start (``None``: as written, relative to the repository root).

    Returns:
        The arguments after ``handssl fit``.
    """
    train = "--data.init_args.train.init_args"
    return [
        *(arg for path in RECIPE for arg in ("-c", str(root / path) if root else path)),
        f"--seed_everything={args.seed}",
        f"--data.init_args.seed={args.seed}",
        f"--data.init_args.image_size={args.image_size}",
        f"--data.init_args.batch_size={args.batch_size}",
        f"{train}.num_subjects={args.train_subjects}",
        f"{train}.sequences_per_subject={args.sequences}",
        f"{train}.cache_mb={args.cache_mb}",
        f"{train}.world.init_args.style={style}",
        f"{train}.world.init_args.seed={args.seed}",
        f"--model.init_args.optimizer.lr={args.lr}",
        f"--trainer.max_steps={args.steps}",
        "--trainer.max_epochs=-1",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def stage_train(name: str, style: str, args: argparse.Namespace) -> dict:
    """Train the supervised baseline on one style's labels for the fixed budget; score every test style.

    Training is ``handssl fit`` on :data:`RECIPE` (:func:`recipe_args`), run in this process through the
    command line's own :func:`~handssl._lightning_cli.make_cli` (a ``handssl`` subprocess would pay the
    Lightning import again); its run folder is ``<work-dir>/<name>/version_<n>/``.
    """
    from handssl._lightning_cli import make_cli

    run = [f"--runs_dir={args.work_dir}", f"--run_name={name}", "--wandb=disabled"]
    start = time.time()
    cli = make_cli(["fit", *recipe_args(style, args, ROOT), *run])
    fit_seconds = time.time() - start
    torch.set_num_threads(args.threads)
    model = cli.model
    assert isinstance(model, SupervisedModule), type(model)
    out: dict[str, Any] = {
        "train_style": style,
        "steps": int(cli.trainer.global_step),
        "fit_seconds": fit_seconds,
        "command": shlex.join(["handssl", "fit", *recipe_args(style, args), *run]),
        "run_dir": str(cli.trainer.log_dir),
    }
    for test_style in STYLES:
        pred, target = predict(model, dataset("test", test_style, args, extra_keys=[]))
        out[test_style] = pose_scores(pred, target)
    return out


def stage_mean_pose(args: argparse.Namespace) -> dict:
    """Always predicting the mean root-relative training pose (the same poses in every style)."""
    train = dataset("train", "synthetic", args, extra_keys=[])
    test = dataset("test", "synthetic", args, extra_keys=[])
    mean_pose = torch.cat([root_relative(stack(s, "joints3d")) for s in batches(train)]).mean(0)
    target = torch.cat([root_relative(stack(s, "joints3d")) for s in batches(test)])
    return pose_scores(mean_pose.expand_as(target), target)


# ---------------------------------------------------------------------------------------------------- report


def gates(r: dict) -> list[tuple[str, float, str, float, bool]]:
    """``(name, value, comparison, bound, holds)`` of every gate of the SynthHands v2 issue."""
    mean = r["mean_pose"]["mpjpe"]
    source, oracle = r["source_only"], r["oracle"]
    rows = [
        (
            "source-only / mean pose (real)",
            source["real"]["mpjpe"] / mean,
            "<=",
            GATES["source_only_vs_mean_pose"],
        ),
        (
            "oracle / source-only (real)",
            oracle["real"]["mpjpe"] / source["real"]["mpjpe"],
            "<=",
            GATES["oracle_vs_source_only"],
        ),
        (
            "source-only synthetic / real",
            source["synthetic"]["mpjpe"] / source["real"]["mpjpe"],
            "<=",
            GATES["source_synthetic_vs_source_real"],
        ),
        (
            "appearance-frame pose / mean pose",
            r["leak"]["appearance_frame"]["mpjpe"] / r["leak"]["mean_pose"]["mpjpe"],
            ">=",
            GATES["leak_vs_mean_pose"],
        ),
        (
            "hand luminance real / synthetic (median)",
            r["world"]["hand_luminance_real_vs_synthetic"],
            ">=",
            GATES["hand_luminance_real_vs_synthetic"],
        ),
        ("real hands darker than 0.15", r["world"]["dark_real_hands"], "<", GATES["dark_real_hands"]),
        (
            "hand mask share of a crop (real)",
            r["world"]["hand_mask_share_real"],
            ">=",
            GATES["hand_mask_share"],
        ),
        (
            "first-pass render / training step (img per CPU-s)",
            r["speed"]["render_vs_training_step"],
            ">=",
            GATES["render_vs_training_step"],
        ),
    ]
    compare: dict[str, Callable[[float, float], bool]] = {
        "<=": lambda a, b: a <= b,
        ">=": lambda a, b: a >= b,
        "<": lambda a, b: a < b,
    }
    return [(name, value, op, bound, compare[op](value, bound)) for name, value, op, bound in rows]


def report(r: dict, args: argparse.Namespace) -> str:
    lines = [
        "# SynthHands v2 domain gap",
        "",
        f"Command: `python experiments/studies/domain_gap.py{' --quick' if args.quick else ''}"
        f"{f' --seed {args.seed} --out {args.out}' if args.seed else ''}` "
        f"({args.steps} steps of batch {args.batch_size} at {args.image_size} px, {args.train_subjects} training "
        f"subjects x {args.sequences} sequences x 64 frames, one random camera per frame; "
        f"{args.test_subjects} test subjects).",
        "",
        "| test style | mean pose | source-only (synthetic labels) | target oracle (real labels) |",
        "|---|---|---|---|",
    ]
    for style in STYLES:
        cells = []
        for row in (r["mean_pose"], r["source_only"][style], r["oracle"][style]):
            cells.append(f"{row['mpjpe']:.1f} / {row['pa_mpjpe']:.1f} / {row['auc_20_50']:.3f}")
        lines.append(f"| {style} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cells: MPJPE / PA-MPJPE (mm, root-relative) / AUC of PCK 20-50 mm.",
        "",
        "| gate | value | bound | holds |",
        "|---|---|---|---|",
    ]
    for name, value, op, bound, holds in gates(r):
        lines.append(f"| {name} | {value:.3f} | {op} {bound} | {'yes' if holds else '**no**'} |")
    w, s, leak = r["world"], r["speed"], r["leak"]
    lines += [
        "",
        f"World: median hand luminance synthetic {w['hand_luminance_median_synthetic']:.3f}, real "
        f"{w['hand_luminance_median_real']:.3f}; hands darker than 0.15: synthetic {w['dark_synthetic_hands']:.1%}, "
        f"real {w['dark_real_hands']:.1%} ({w['views']} views); hand mask share synthetic "
        f"{w['hand_mask_share_synthetic']:.1%}, real {w['hand_mask_share_real']:.1%} (hand + sleeve "
        f"{w['mask_share_real']:.1%}).",
        f"Leak ({leak['items']} test items): the appearance frame's pose scores {leak['appearance_frame']['mpjpe']:.1f} mm "
        f"against {leak['mean_pose']['mpjpe']:.1f} mm for the mean pose (a frame of the same sequence would score "
        f"{leak['same_sequence_frame']['mpjpe']:.1f} mm).",
        f"Speed (images per CPU-second, {args.image_size} px): training step {s['training_step']:.0f}; first-pass "
        + ", ".join(f"{st} {s[f'render_{st}']:.0f}" for st in STYLES)
        + ".",
        f"Fit wall time: source-only {r['source_only']['fit_seconds']:.0f} s, oracle {r['oracle']['fit_seconds']:.0f} s.",
    ]
    if "command" in r["source_only"]:  # stages saved before the study ran the recipe have none
        lines.append(
            f"Training: `handssl fit {' '.join(f'-c {path}' for path in RECIPE)}` with the study's options "
            "(each stage's full command: `command` in source_only.json and oracle.json)."
        )
    return "\n".join(lines) + "\n"


def draw_figure(path: Path, args: argparse.Namespace) -> None:
    """16 test crops of each style, one row per style, the same views in every row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from handssl.viz import image_grid

    fig, axes = plt.subplots(3, 1, figsize=(16, 3.6))
    for ax, style in zip(axes, STYLES):
        ds = SynthHands(split="test", world=world(style, args), extra_keys=[])
        index = np.linspace(0, len(ds) - 1, 16).round().astype(int).tolist()
        ax.imshow(image_grid(stack(ds.__getitems__(index), "image"), nrow=16))
        ax.set_axis_off()
        ax.set_title(style, fontsize=9, loc="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("experiments/results/domain_gap"))
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny budget and sets")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="run folders of the training stages (default runs/<name of --out>)",
    )
    parser.add_argument("--force", action="store_true", help="recompute stages already saved")
    parser.add_argument(
        "--redo",
        nargs="+",
        default=[],
        choices=STAGES,
        help="recompute these stages (e.g. speed on an idle machine)",
    )
    parser.add_argument("--steps", type=int, default=2000, help="training steps of each network")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--train-subjects", type=int, default=32)
    parser.add_argument("--test-subjects", type=int, default=8)
    parser.add_argument("--sequences", type=int, default=8, help="sequences per subject")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--figure", type=Path, default=None, help="also draw 16 crops of each style here")
    args = parser.parse_args(argv)
    args.cache_mb, args.world_views, args.leak_items, args.render_views, args.rate_steps = (
        4096,
        512,
        1024,
        1024,
        8,
    )
    if args.quick:
        args.out = args.out.with_name(args.out.name + "_quick")
        args.steps, args.batch_size, args.train_subjects, args.test_subjects, args.sequences = 10, 32, 2, 1, 2
        args.world_views, args.leak_items, args.render_views, args.rate_steps = 32, 32, 64, 2
    if args.work_dir is None:
        args.work_dir = Path("runs") / args.out.name
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, Callable[[], dict]] = {
        "world": lambda: stage_world(args),
        "leak": lambda: stage_leak(args),
        "speed": lambda: stage_speed(args),
        "mean_pose": lambda: stage_mean_pose(args),
        "source_only": lambda: stage_train("source_only", "synthetic", args),
        "oracle": lambda: stage_train("oracle", "real", args),
    }
    results = {}
    for name, run in stages.items():
        path = args.out / f"{name}.json"
        if path.is_file() and not args.force and name not in args.redo:
            results[name] = json.loads(path.read_text())
            continue
        print(f"[domain_gap] {name} ...", flush=True)
        start = time.time()
        results[name] = run()
        results[name]["seconds"] = time.time() - start
        path.write_text(json.dumps(results[name], indent=2))
    text = report(results, args)
    (args.out / "domain_gap.md").write_text(text)
    print(text)
    if args.figure is not None:
        draw_figure(args.figure, args)


if __name__ == "__main__":
    main()
