"""Throughput of the three training tasks: the bare training step against ``handssl fit`` end to end.

For every task (``supervised``: the quickstart baseline; ``nvs``: NVS semi regime; ``semihand``: SemiHand full,
unsupervised losses from the first step) and image size, on one device:

* **step**: samples/s of the bare training step (forward, backward, AdamW step, SemiHand's EMA update) on one
  batch already on the device, no data loading, after warm-up (and compilation);
* **fit, first epoch** and **fit, later epochs**: samples/s of ``handssl fit`` (the experiment config, with a
  shorter training set, no validation, no checkpoints, no logger) in its first epoch (every view rendered)
  and in the epochs after it (views from the in-memory cache; NVS draws new camera pairs every epoch, so its
  later epochs still render the views not drawn before, and SemiHand augments every item every epoch);
* **ratio**: fit / step, for the first and the later epochs (1 = the data pipeline keeps the step fed);
* **TFLOP/s**: matmul and convolution FLOPs of one step, forward and backward (``torch.utils.flop_counter``),
  times steps per second; on CUDA also against the device's dense peak at that precision (a built-in table
  of a few data-centre GPUs, or ``--peak-tflops``).

A sample is one batch row: an image for ``supervised``, a multi-view item (two views and two appearance
images at t') for ``nvs``, a labelled or an unlabelled crop (with its perturbed and "diversity" copies) for
``semihand``.

    python experiments/tools/bench_throughput.py --device cpu
    python experiments/tools/bench_throughput.py --device cuda --precision bf16-mixed --channels-last
    python experiments/tools/bench_throughput.py --quick           # CI-sized smoke run (32 px, a few steps)

Speed targets live here, never in the timed tests: ``--min-ratio R`` exits with status 1 when a task's
later-epoch fit rate falls below ``R`` times its bare step rate.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import importlib
import inspect
import io
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from lightning_fabric.utilities.apply_func import move_data_to_device
from pytorch_lightning.callbacks import Callback

ROOT = Path(__file__).resolve().parents[2]  # the repository root (this file is experiments/tools/)
TASKS: dict[str, str] = {
    "supervised": "experiments/quickstart.yaml",
    "nvs": "experiments/nvs_semi.yaml",
    "semihand": "experiments/semihand_full.yaml",
}
"""Task name -> the experiment config its ``handssl fit`` run starts from."""
PRECISIONS = ("32-true", "bf16-mixed")
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    # Dense tensor-core peaks from the vendors' data sheets (TFLOP/s); 32-true is taken against TF32, which
    # cuDNN uses for convolutions by default.
    "H200": {"bf16-mixed": 989.4, "32-true": 494.7},
    "H100 SXM": {"bf16-mixed": 989.4, "32-true": 494.7},
    "H100 80GB HBM3": {"bf16-mixed": 989.4, "32-true": 494.7},
    "H100 PCIe": {"bf16-mixed": 756.0, "32-true": 378.0},
    "A100": {"bf16-mixed": 312.0, "32-true": 156.0},
    "L40S": {"bf16-mixed": 362.1, "32-true": 183.0},
    "L4": {"bf16-mixed": 121.0, "32-true": 60.0},
}
COLUMNS = (
    "task",
    "size",
    "batch",
    "device",
    "precision",
    "render_on",
    "step_samples_s",
    "fit_first_samples_s",
    "fit_later_samples_s",
    "fit_epoch_samples",
    "ratio_first",
    "ratio_later",
    "gflop_per_step",
    "tflops",
    "peak_tflops",
    "peak_fraction",
)


# ------------------------------------------------------------------------------------------------ configs
def _set_key(node: Any, key: str, value: Any) -> None:
    """Set every ``key`` in a nested dict/list config to ``value`` (replaces ``${...}`` interpolations too)."""
    if isinstance(node, dict):
        for name in node:
            if name == key:
                node[name] = value
            else:
                _set_key(node[name], key, value)
    elif isinstance(node, list):
        for item in node:
            _set_key(item, key, value)


def _train_datasets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The training dataset configs of a DataModule config (``train``, or ``labeled`` + ``unlabeled``)."""
    args = data["init_args"]
    found = []
    for name in ("train", "labeled", "unlabeled"):
        value = args.get(name)
        found += value if isinstance(value, list) else [value] if isinstance(value, dict) else []
    return found


def task_config(
    task: str,
    size: int,
    frames: int,
    epochs: int,
    device: str,
    precision: str,
    batch: int | None,
    workers: int | None,
    model_options: dict[str, Any],
    timer_path: Path,
    render_on: str = "workers",
) -> dict[str, Any]:
    """A ``handssl fit`` config: the task's experiment config at ``size`` px on ``frames`` training frames."""
    resolved = resolved_config(ROOT / TASKS[task])
    config = {"seed_everything": 0, "model": resolved["model"], "data": resolved["data"]}
    model, data = config["model"], config["data"]
    _set_key(model, "image_size", size)
    model_class = _import(model["class_path"])
    if "image_size" in inspect.signature(model_class).parameters:  # the CLI may leave it to follow the data
        model["init_args"]["image_size"] = size
    _set_key(data, "image_size", size)
    data["init_args"]["image_size"] = size  # every handssl DataModule has it; the model's follows it
    # Two sequences per subject (NVS's appearance images come from another sequence), up to 64 frames each.
    subjects = max(2, math.ceil(frames / 128))
    for dataset in _train_datasets(data):
        dataset.setdefault("init_args", {}).update(
            num_subjects=subjects,
            sequences_per_subject=2,
            frames_per_sequence=max(1, frames // (2 * subjects)),
        )
    if task == "semihand":  # the full step (pseudo-labels, correction, consistency) from the first step
        model["init_args"]["unsupervised"] = {"start_step": 0, "ramp_steps": 0}
    model["init_args"].update(model_options)
    if batch is not None:
        data["init_args"]["batch_size"] = batch
    if workers is not None:
        data["init_args"]["num_workers"] = workers
    if render_on != "workers":
        data["init_args"]["render_on"] = render_on
    accelerator = "gpu" if torch.device(device).type == "cuda" else "cpu"
    timer = {"class_path": f"{EpochTimer.__module__}.EpochTimer", "init_args": {"path": str(timer_path)}}
    config["trainer"] = {
        "accelerator": accelerator,
        "devices": [torch.device(device).index or 0] if accelerator == "gpu" else 1,
        "precision": precision,
        "max_epochs": epochs,
        "max_steps": -1,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
        "callbacks": [timer],
    }
    return config


def resolved_config(path: Path) -> dict[str, Any]:
    """``handssl fit -c path --print_config``: the config as the CLI resolves it (composition, interpolation)."""
    from handssl.cli import main as handssl_main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            handssl_main(["fit", "-c", str(path), "--print_config"])
        except SystemExit as stop:
            if stop.code not in (0, None):
                raise
    return yaml.safe_load(printed.getvalue())


def _import(class_path: str) -> Any:
    module_name, _, class_name = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def instantiate(node: Any) -> Any:
    """Build ``{class_path, init_args}`` configs (recursively) the way ``handssl fit`` does."""
    if isinstance(node, list):
        return [instantiate(item) for item in node]
    if isinstance(node, dict) and "class_path" in node:
        cls = _import(node["class_path"])
        return cls(**{k: instantiate(v) for k, v in node.get("init_args", {}).items()})
    if isinstance(node, dict):
        return {k: instantiate(v) for k, v in node.items()}
    return node


# --------------------------------------------------------------------------------------------- measuring
def batch_samples(batch: Any) -> int:
    """Batch rows of a training batch (SemiHand: labelled + unlabelled)."""
    parts = [batch.get(name) for name in ("labeled", "unlabeled")]
    if any(isinstance(part, dict) for part in parts):  # (NVS batches hold a 'labeled' flag tensor)
        return sum(batch_samples(part) for part in parts if isinstance(part, dict))
    return int(batch["image"].shape[0])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochTimer(Callback):
    """Wall time and samples of every training epoch of a fit, written to ``path`` as JSON after each epoch.

    Args:
        path: JSON file to write (a list of ``{"epoch", "seconds", "samples", "steps"}``).
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.epochs: list[dict[str, float]] = []
        self._start = 0.0
        self._samples = 0
        self._steps = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(pl_module.device)
        self._start, self._samples, self._steps = time.perf_counter(), 0, 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._samples += batch_samples(batch)
        self._steps += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(pl_module.device)
        seconds = time.perf_counter() - self._start
        self.epochs.append(
            {
                "epoch": trainer.current_epoch,
                "seconds": seconds,
                "samples": self._samples,
                "steps": self._steps,
            }
        )
        self.path.write_text(json.dumps(self.epochs))


def _autocast(device: torch.device, precision: str) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


def _force_eager() -> Any:
    """Run compiled modules eagerly (the FLOP counter sees every operator)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def bench_step(
    config: dict[str, Any], device: torch.device, precision: str, steps: int, warmup: int
) -> dict[str, float]:
    """Samples/s and FLOPs of the bare training step on the first training batch of ``config``."""
    pl.seed_everything(0, verbose=False)
    module = instantiate(config["model"])
    data = instantiate(config["data"])
    data.setup("fit")
    if hasattr(data, "pose_statistics") and hasattr(module, "pose_head"):
        module.pose_head.set_statistics(*data.pose_statistics())
    batch = next(iter(data.train_dataloader()))
    if isinstance(batch, tuple):  # CombinedLoader: (batch, batch_idx, dataloader_idx)
        batch = batch[0]
    module.to(device)
    batch = move_data_to_device(batch, device)
    batch = data.on_after_batch_transfer(batch, 0)  # render_on="device": render the requests once, here
    module.log = lambda *args, **kwargs: None  # no trainer attached
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step(index: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            loss = module.training_step(batch, index)
        loss.backward()
        optimizer.step()
        module.on_train_batch_end(None, batch, index)

    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with _force_eager(), counter:
        step(0)
    for index in range(warmup):
        step(index)
    synchronize(device)
    start = time.perf_counter()
    for index in range(steps):
        step(index)
    synchronize(device)
    seconds = time.perf_counter() - start
    samples = batch_samples(batch)
    flops = float(counter.get_total_flops())
    return {
        "batch": samples,
        "step_samples_s": steps * samples / seconds,
        "gflop_per_step": flops / 1e9,
        "tflops": flops * steps / seconds / 1e12,
    }


def bench_fit(config: dict[str, Any], workdir: Path, timer_path: Path) -> dict[str, float]:
    """Samples/s of ``handssl fit`` with ``config``: first epoch and the mean of the later epochs."""
    from handssl.cli import main as handssl_main

    path = workdir / "bench.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    timer_path.unlink(missing_ok=True)
    handssl_main(["fit", "-c", str(path), "--runs_dir", str(workdir / "runs"), "--wandb", "disabled"])
    epochs = json.loads(timer_path.read_text())
    first, later = epochs[0], epochs[1:]
    rate = lambda rows: sum(r["samples"] for r in rows) / sum(r["seconds"] for r in rows)  # noqa: E731
    return {
        "fit_first_samples_s": rate([first]),
        "fit_later_samples_s": rate(later) if later else float("nan"),
        "fit_epoch_samples": first["samples"],
    }


def peak_tflops(device: torch.device, precision: str, override: float | None) -> float | None:
    """The device's dense peak at ``precision`` (``override`` wins); ``None`` when unknown or not CUDA."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks[precision]
    return None


# ---------------------------------------------------------------------------------------------- reporting
def _fmt(value: Any, digits: int = 0) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The README table of ``rows`` (one per task and size)."""
    head = (
        "| task | size | batch | precision | rendering | step samples/s | fit samples/s, first epoch | "
        "fit samples/s, later epochs | fit / step (first, later) | GFLOP/step | TFLOP/s | of peak |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        ratio = f"{_fmt(r['ratio_first'], 2)}, {_fmt(r['ratio_later'], 2)}"
        share = "n/a" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.1f}%"
        lines.append(
            f"| {r['task']} | {r['size']} | {r['batch']} | {r['precision']} | {r['render_on']} | "
            f"{_fmt(r['step_samples_s'])} | "
            f"{_fmt(r['fit_first_samples_s'])} | {_fmt(r['fit_later_samples_s'])} | {ratio} | "
            f"{_fmt(r['gflop_per_step'], 2)} | {_fmt(r['tflops'], 3)} | {share} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index> (default: cpu)")
    parser.add_argument("--tasks", nargs="+", choices=tuple(TASKS), default=list(TASKS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128], help="image sides in px")
    parser.add_argument("--precision", choices=PRECISIONS, default="32-true")
    parser.add_argument("--channels-last", action="store_true", help="model channels_last: true")
    parser.add_argument("--compile", action="store_true", help="model compile: true")
    parser.add_argument("--compile-backend", choices=("inductor", "aot_eager"), default="inductor")
    parser.add_argument(
        "--render-on",
        choices=("workers", "device"),
        default="workers",
        help="SynthHands rendered in the DataLoader (cached) or in the step on --device (SemiHand's "
        "augmentations then run on the CPU in the main process)",
    )
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the config's)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: config's)")
    parser.add_argument("--frames", type=int, default=512, help="training frames per epoch of the fit runs")
    parser.add_argument("--epochs", type=int, default=3, help="fit epochs: the first and the later ones")
    parser.add_argument("--steps", type=int, default=20, help="timed bare training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed bare steps first (compilation)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-fit", action="store_true", help="only the bare step")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, if not known")
    parser.add_argument("--min-ratio", type=float, default=None, help="exit 1 below this later/step ratio")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as CSV here")
    parser.add_argument("--quick", action="store_true", help="CI-sized smoke run: 32 px, tiny sets, 2 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.frames, args.epochs, args.steps, args.warmup = [32], 16, 2, 2, 1
        args.batch = args.batch or 4
    for name in ("frames", "epochs", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if any(size < 32 or size % 16 for size in args.sizes):
        parser.error(f"--sizes must be multiples of 16 and >= 32 (NVS's encoder stride), got {args.sizes}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda[:index], got {args.device!r}")
    return args


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Measure every task and size of ``args``; returns one row per pair (see :data:`COLUMNS`)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    options: dict[str, Any] = {}
    if args.channels_last:
        options["channels_last"] = True
    if args.compile:
        options.update(compile=True, compile_backend=args.compile_backend)
    peak = peak_tflops(device, args.precision, args.peak_tflops)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp:
        workdir = Path(tmp)
        timer_path = workdir / "epochs.json"
        for task in args.tasks:
            for size in args.sizes:
                config = task_config(
                    task,
                    size,
                    args.frames,
                    args.epochs,
                    args.device,
                    args.precision,
                    args.batch,
                    args.workers,
                    options,
                    timer_path,
                    render_on=args.render_on,
                )
                row: dict[str, Any] = {"task": task, "size": size, "device": args.device}
                row["render_on"] = args.render_on
                row["precision"] = args.precision
                row.update(bench_step(copy.deepcopy(config), device, args.precision, args.steps, args.warmup))
                if args.no_fit:
                    nan = float("nan")
                    row.update(fit_first_samples_s=nan, fit_later_samples_s=nan, fit_epoch_samples=0)
                else:
                    row.update(bench_fit(config, workdir, timer_path))
                row["ratio_first"] = row["fit_first_samples_s"] / row["step_samples_s"]
                row["ratio_later"] = row["fit_later_samples_s"] / row["step_samples_s"]
                row["peak_tflops"] = peak
                row["peak_fraction"] = None if peak is None else row["tflops"] / peak
                rows.append({key: row[key] for key in COLUMNS})
                log(
                    f"{task} {size}px: step {row['step_samples_s']:.1f}/s, fit first "
                    f"{row['fit_first_samples_s']:.1f}/s, later {row['fit_later_samples_s']:.1f}/s"
                )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows = run(args)
    flags = " ".join(f for f, on in (("channels_last", args.channels_last), ("compile", args.compile)) if on)
    print(f"\n{torch.__version__}, {torch.get_num_threads()} threads, {args.device} {flags}".rstrip())
    print(markdown_table(rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    if args.min_ratio is not None:
        slow = [r for r in rows if not r["ratio_later"] >= args.min_ratio]
        for r in slow:
            print(
                f"below target: {r['task']} {r['size']} px fit/step {r['ratio_later']:.2f} < {args.min_ratio}",
                file=sys.stderr,
            )
        return 1 if slow else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
