"""Bit-for-bit behaviour check of a refactor: short runs of the method recipes, before and after.

``record DIR`` trains a few steps of each case below through ``handssl fit`` (each in its own process, one
thread, fixed seeds), loads the checkpoints that earlier code wrote, and saves every tensor that describes the
result (the final state dict, SemiHand's stored pseudo-labels, EMA count and template, the logged metrics)
to ``DIR/<case>.pt``. ``compare BEFORE AFTER`` asserts that every tensor is equal (``torch.equal``) and
every other value too. Run ``record`` on the code before the change, then again after it, then ``compare``::

    python experiments/tools/same_weights.py record /tmp/before     # on the unchanged code
    python experiments/tools/same_weights.py record /tmp/after      # after the refactor
    python experiments/tools/same_weights.py compare /tmp/before /tmp/after

Cases (about 6 minutes in all on one busy CPU core):

* ``semihand_mean_teacher``: ``experiments/semihand_full.yaml``, 6 steps, the unsupervised losses from step 2,
  a validation every 3 steps;
* ``semihand_rounds``: the same in ``mode: rounds`` with epochs of 2 batches, the unsupervised losses from
  step 1 (so that the first round starts inside an epoch, then one per epoch);
* ``semihand_stage2``: the ablation's second stage (its flags): 3 steps from the old source-only checkpoint
  (``init_checkpoint``, the unsupervised losses from step 0, the correction off);
* ``nvs_semi``: ``experiments/nvs_semi.yaml``, 4 steps;
* ``nvs_supervised``: ``experiments/model/nvs_supervised.yaml``, 2 steps;
* ``nvs_pretrained``: ``experiments/model/nvs_pretrained.yaml`` (stage 1), 3 steps, then stage 2
  (``experiments/model/nvs_pretrained_stage2.yaml``) for 2 steps on the checkpoint stage 1 ended with;
* ``nvs_geometry``: stage 1 with the options the geometry probes turned on (the splat, the mask from the
  points, the three latent terms) and an SSIM term, 3 steps;
* ``nvs_semi_options``: ``experiments/nvs_semi.yaml`` with the pairs, pose and synthesis options changed
  (every row a view swap, the pose loss on the input view, its weight measured, the pose
  head on all rows, synthesis on the unlabelled items, other widths and dropouts), 3 steps;
* ``load_<row>``: ``SemiHandModule.load_from_checkpoint`` of the ablation's final checkpoints under
  ``--old-runs`` (read only), and the loaded network's outputs and predictions on a fixed input;
* ``load_nvs_<run>``: ``NVSModule.load_from_checkpoint`` of the NVS geometry probes' stage-1 checkpoints under
  ``--old-nvs-runs`` (read only; written with the flat options of the day), and the views they synthesise (a
  probe of an architecture since changed loads on neither side and has no result; a probe whose run is still
  writing its checkpoint differs between two records: copy it aside and give ``--old-nvs-runs`` the copy);
* ``shipped_<name>``: the same for every network shipped in ``handssl/pretrained/weights``.

The datasets are tiny SynthHands copies (one subject), so the runs measure the method, not the renderer.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
OLD_RUNS = Path("/work/main/runs/semihand_ablation_v3")
OLD_NVS_RUNS = Path("/work/main/runs/nvs_geometry_probe")

_SYNTH = (
    "{{class_path: handssl.data.SynthHands, init_args: {{split: {split}, num_subjects: 1, "
    "world: {{class_path: handssl.data.SynthHandsWorld, init_args: {{style: {style}}}}}, "
    "sequences_per_subject: 1, frames_per_sequence: 16, chunk_size: 16}}}}"
)
# Since issue 24 the recipes' data is a HandDataModule (labelled data as `train`, SemiHand's options under
# `views`); the same runs on the code from before name the earlier SemiSupervisedDataModule's keys.
_NEW = importlib.util.find_spec("handssl.data.views") is not None
SEMI_DATA = "\n".join(
    [
        "data:",
        "  init_args:",
        "    views: {init_args: {eval_batch_size: 8}}" if _NEW else "    eval_batch_size: 8",
        *(
            f"    {key}:\n      - {_SYNTH.format(split=split, style=style)}"
            for key, split, style in (
                ("train" if _NEW else "labeled", "train", "synthetic"),
                ("unlabeled", "train", "real"),
                ("val", "val", "real"),
                ("test", "test", "real"),
            )
        ),
    ]
)
_MULTI = (
    "{{class_path: handssl.data.SynthHandsMultiView, init_args: {{split: {split}, "
    "world: {{class_path: handssl.data.SynthHandsWorld, init_args: {{style: synthetic}}}}, "
    "num_subjects: {subjects}, sequences_per_subject: 2, frames_per_sequence: 8, chunk_size: 8, "
    "extra_keys: null}}}}"
)
# extra_keys: null (the default) because jsonargparse keeps the init_args of the class a config replaces where the
# new class takes them: over data/synthhands.yaml the train set would keep its extra_keys: [] (no background).
MULTI_DATA = "\n".join(
    [
        "data:",
        "  init_args:",
        "    num_workers: 0",
        f"    train: {_MULTI.format(split='train', subjects=2)}",
        f"    val: {_MULTI.format(split='val', subjects=1)}",
        f"    test: {_MULTI.format(split='test', subjects=1)}",
    ]
)
# Since issue 24 one SynthHands data config serves every method (NVSPairs reads its multi-view form) and the
# label budget of one subject moved into the NVS recipes; the same runs on the code from before name the
# multi-view data config, which held it.
_ONE_DATA = not Path("experiments/data/synthhands_multiview.yaml").is_file()
SYNTH_DATA = [
    "-c",
    "experiments/data/synthhands.yaml" if _ONE_DATA else "experiments/data/synthhands_multiview.yaml",
    *(["--data.init_args.views.init_args.labeled_subjects=1"] if _ONE_DATA else []),
]
# Since issue 24 SemiHand's and NVSModule's options are groups (``unsupervised.start_step``,
# ``decoder.splat``); the same runs on the code from before name the flat arguments they replaced.
_GROUPED = importlib.util.find_spec("handssl.models.semihand_options") is not None
_NVS_GROUPED = importlib.util.find_spec("handssl.models.nvs_options") is not None


def _option(grouped: str, flat: str, value: str, new: bool = _GROUPED) -> str:
    """``--model.init_args.<key>=<value>``, with the key as the checked-out code names it."""
    return f"--model.init_args.{grouped if new else flat}={value}"


def _nvs(grouped: str, flat: str, value: str) -> str:
    """:func:`_option` for an NVSModule option."""
    return _option(grouped, flat, value, _NVS_GROUPED)


COMMON = [
    "--seed_everything=0",
    "--wandb=disabled",
    "--trainer.accelerator=cpu",
    "--trainer.logger=false",
    "--trainer.log_every_n_steps=2",
]
SEMIHAND = [
    "-c",
    "experiments/semihand_full.yaml",
    "--trainer.max_steps=6",
    _option("unsupervised.start_step", "unsupervised_start_step", "2"),
    "--data.init_args.batch_size=8",
    "--trainer.limit_val_batches=1",
    "--trainer.val_check_interval=3",
]
NVS_SHORT = [
    "--trainer.max_steps=3",
    "--data.init_args.batch_size=8",
    "--trainer.limit_val_batches=1",
    "--trainer.val_check_interval=3",
]
CASES: dict[str, tuple[list[str], str]] = {
    "semihand_mean_teacher": (SEMIHAND, SEMI_DATA),
    "semihand_rounds": (
        [
            *SEMIHAND,
            "--model.init_args.mode=rounds",
            "--model.init_args.epochs_per_round=1",
            _option("unsupervised.start_step", "unsupervised_start_step", "1"),
            "--trainer.limit_train_batches=2",
        ],
        SEMI_DATA,
    ),
    "semihand_stage2": (
        [
            *SEMIHAND,
            f"--model.init_args.init_checkpoint={OLD_RUNS}/source_only_seed0/version_0/checkpoints/final.ckpt",
            _option("unsupervised.start_step", "unsupervised_start_step", "0"),
            _option("correction.enabled", "use_correction", "false"),
            "--trainer.max_steps=3",
        ],
        SEMI_DATA,
    ),
    "nvs_semi": (
        [
            "-c",
            "experiments/nvs_semi.yaml",
            "--trainer.max_steps=4",
            "--data.init_args.batch_size=8",
            "--trainer.limit_val_batches=1",
            "--trainer.val_check_interval=2",
        ],
        MULTI_DATA,
    ),
    "nvs_supervised": (
        [
            "-c",
            "experiments/model/nvs_supervised.yaml",
            *SYNTH_DATA,
            "--trainer.max_steps=2",
            "--data.init_args.batch_size=4",
            "--trainer.limit_val_batches=1",
            "--trainer.val_check_interval=2",
        ],
        MULTI_DATA,
    ),
    "nvs_pretrained": (
        [
            "-c",
            "experiments/model/nvs_pretrained.yaml",
            *SYNTH_DATA,
            *NVS_SHORT,
        ],
        MULTI_DATA,
    ),
    "nvs_geometry": (
        [
            "-c",
            "experiments/model/nvs_pretrained.yaml",
            *SYNTH_DATA,
            *NVS_SHORT,
            _nvs("decoder.splat", "decoder_splat", "true"),
            _nvs("decoder.mask_from_points", "decoder_mask_from_points", "true"),
            _nvs("geometry.point_silhouette_weight", "point_silhouette_weight", "1.0"),
            _nvs("geometry.equivariance_weight", "latent_equivariance_weight", "0.5"),
            _nvs("geometry.own_view_weight", "own_view_silhouette_weight", "0.5"),
            _nvs("synthesis.structural", "structural_loss", "ssim"),
            _nvs("synthesis.silhouette_threshold", "silhouette_threshold", "0.05"),
        ],
        MULTI_DATA,
    ),
    "nvs_semi_options": (
        [
            "-c",
            "experiments/nvs_semi.yaml",
            *NVS_SHORT,
            _nvs("pairs.swap_probability", "swap_probability", "1.0"),
            _nvs("pose.weight", "pose_weight", "0.5"),
            _nvs("pose.gradient_ratio", "pose_gradient_ratio", "0.05"),
            _nvs("pose.start_step", "synthesis_warmup_steps", "0"),
            _nvs("pose.views", "pose_views", "input"),
            _nvs("pose_head.rows", "pose_head_rows", "all"),
            _nvs("pose_head.hidden", "pose_hidden", "[64, 32]"),
            _nvs("pose_head.dropout", "pose_dropout", "0.2"),
            _nvs("synthesis.items", "synthesis_items", "unlabeled"),
            _nvs("decoder.dropout", "latent_dropout", "0.1"),
            _nvs("encoder.widths", "encoder_widths", "[8, 16, 32, 64]"),
        ],
        MULTI_DATA,
    ),
}
STAGE2 = {
    "nvs_pretrained": [
        "-c",
        "experiments/model/nvs_pretrained_stage2.yaml",
        *SYNTH_DATA,
        "--trainer.max_steps=2",
        "--data.init_args.batch_size=4",
        "--trainer.limit_val_batches=1",
        "--trainer.val_check_interval=2",
    ]
}
"""Cases that go on with stage 2 of the pretrained regime, on the checkpoint the first run ended with."""


def _plain(value: Any) -> Any:
    """``value`` with tensors moved to the CPU (also inside dicts, lists and tuples)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _semihand_extras(module: Any) -> dict[str, Any]:
    state: dict[str, Any] = {}
    module.on_save_checkpoint(state)
    return _plain(state.get("semihand", {}))


def run_case(name: str, out: Path) -> None:
    """Train case ``name`` in this process and save what it produced to ``out``."""
    import torch

    import handssl
    from handssl._lightning_cli import make_cli

    if Path(handssl.__file__).resolve() != REPO / "handssl" / "__init__.py":
        raise SystemExit(f"imported {handssl.__file__}, not this checkout's handssl (set PYTHONPATH={REPO})")
    torch.set_num_threads(1)
    args, data = CASES[name]
    with tempfile.TemporaryDirectory() as tmp:
        override = Path(tmp) / "data.yaml"
        override.write_text(data + "\n")

        def fit(args: list[str], run: str) -> Any:
            configs = [arg for i, arg in enumerate(args) if arg == "-c" or args[i - 1] == "-c"]
            flags = [arg for arg in args if arg not in configs]
            # The data override right after the recipe: a config given after the flags would reset them.
            runs = [f"--runs_dir={tmp}/runs", f"--run_name={run}"]
            return make_cli(["fit", *configs, "-c", str(override), *flags, *COMMON, *runs])

        def outcome(cli: Any) -> dict[str, Any]:
            module = cli.model
            return {
                "state_dict": _plain(module.state_dict()),
                "metrics": _plain(dict(cli.trainer.callback_metrics)),
                "global_step": cli.trainer.global_step,
                "hparams": dict(module.hparams),
            }

        cli = fit(args, name)
        result = outcome(cli)
        if name.startswith("semihand"):
            result["semihand"] = _semihand_extras(cli.model)
        if name in STAGE2:
            stage1 = Path(tmp) / "stage1.ckpt"
            cli.trainer.save_checkpoint(stage1)
            stage2 = fit([*STAGE2[name], f"--model.init_args.pretrained_checkpoint={stage1}"], "stage2")
            result = {**outcome(stage2), "stage1": result}
            result["hparams"]["pretrained_checkpoint"] = "stage1.ckpt"  # not the temporary folder's name
    torch.save(result, out)


def load_case(what: str, out: Path) -> None:
    """Load an old checkpoint (a path, ``nvs:<path>`` for an NVS stage-1 checkpoint, or ``pretrained:<name>``
    for a shipped network) and save its state dict, extras and predictions on a fixed input to ``out``."""
    import torch

    from handssl import pretrained
    from handssl.models import NVSModule, SemiHandModule

    torch.set_num_threads(1)
    if what.startswith("pretrained:"):
        module = pretrained.load(what.split(":", 1)[1]).eval()
    elif what.startswith("nvs:"):
        module = NVSModule.load_from_checkpoint(what.split(":", 1)[1], map_location="cpu").eval()
    else:
        module = SemiHandModule.load_from_checkpoint(what, map_location="cpu").eval()
    size = int(module.hparams.get("image_size", 64))
    image = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    K = torch.tensor([[[150.0, 0, 31.5], [0, 150.0, 31.5], [0, 0, 1]]]).repeat(2, 1, 1)
    result: dict[str, Any] = {"state_dict": _plain(module.state_dict()), "hparams": dict(module.hparams)}
    with torch.no_grad():
        if isinstance(module, SemiHandModule):
            result["outputs"] = _plain(module.eval_model(image))
            result["semihand"] = _semihand_extras(module)
        if what.startswith(
            "nvs:"
        ):  # stage 1 trains no pose head: its views, turned about the camera's y axis
            result["outputs"] = _plain(module.turntable(image, num_views=4))
            torch.save(result, out)
            return
        predicted = module.predict_step({"image": image, "K": K}, 0)
    result["predicted"] = _plain({k: v for k, v in predicted.items() if k != "meta"})
    torch.save(result, out)


def record(
    directory: Path, cases: list[str], old_runs: Path, shipped: bool = True, old_nvs_runs: Path = OLD_NVS_RUNS
) -> None:
    """Run every case (each in a fresh process) and every old-checkpoint load into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    initial = OLD_RUNS / "source_only_seed0" / "version_0" / "checkpoints" / "final.ckpt"
    cases = [name for name in cases if name != "semihand_stage2" or initial.is_file()]  # needs the old run
    jobs = [["run", name, str(directory / f"{name}.pt")] for name in cases]
    for ckpt in sorted(old_runs.glob("*/version_0/checkpoints/final.ckpt")):
        jobs.append(["load", str(ckpt), str(directory / f"load_{ckpt.parents[2].name}.pt")])
    for ckpt in sorted(old_nvs_runs.glob("*/version_0/checkpoints/stage1.ckpt")):
        jobs.append(["load", f"nvs:{ckpt}", str(directory / f"load_nvs_{ckpt.parents[2].name}.pt")])
    if shipped:
        for path in sorted((REPO / "handssl" / "pretrained" / "weights").glob("*.pt")):
            jobs.append(["load", f"pretrained:{path.stem}", str(directory / f"shipped_{path.stem}.pt")])
    for job in jobs:
        print("--", " ".join(job[:2]), flush=True)
        command = [sys.executable, __file__, "_" + job[0], *job[1:]]
        if job[1].startswith("nvs:"):  # a probe of an architecture since changed loads on neither side
            if subprocess.run(command, cwd=REPO, env=env, capture_output=True).returncode:
                print("   does not load with this code: no result", flush=True)
            continue
        subprocess.run(command, cwd=REPO, env=env, check=True)


def _differences(before: Any, after: Any, where: str) -> list[str]:
    import torch

    if isinstance(before, torch.Tensor) or isinstance(after, torch.Tensor):
        same = (
            isinstance(before, torch.Tensor)
            and isinstance(after, torch.Tensor)
            and before.dtype == after.dtype
            and torch.equal(before, after)
        )
        return [] if same else [where]
    if isinstance(before, dict) and isinstance(after, dict):
        keys = set(before) | set(after)
        if set(before) != set(after):
            return [f"{where}: keys differ {sorted(map(str, set(before) ^ set(after)))}"]
        return [d for k in sorted(keys, key=str) for d in _differences(before[k], after[k], f"{where}.{k}")]
    if isinstance(before, (list, tuple)) and isinstance(after, (list, tuple)) and len(before) == len(after):
        return [d for i, (a, b) in enumerate(zip(before, after)) for d in _differences(a, b, f"{where}[{i}]")]
    return [] if before == after else [f"{where}: {before!r} != {after!r}"]


def compare(before: Path, after: Path) -> int:
    """Print, per case, how many tensors were compared and every difference; 1 when any differs."""
    import torch

    try:
        from handssl.models.options import upgrade_hparams
    except ImportError:  # code from before the option groups: hparams compared as they are
        upgrade_hparams = None  # type: ignore[assignment]

    failed = False
    names = sorted(p.name for p in before.glob("*.pt"))
    missing = sorted(set(names) ^ {p.name for p in after.glob("*.pt")})
    if missing:
        print(f"cases in only one of the folders: {missing}")
        failed = True
    for name in names:
        if not (after / name).exists():
            continue
        a = torch.load(before / name, weights_only=False)
        b = torch.load(after / name, weights_only=False)
        for record in (a, b, a.get("stage1", {}), b.get("stage1", {})):
            # flat hparams (before the option groups) as the groups they became
            if isinstance(record.get("hparams"), dict) and upgrade_hparams is not None:
                record["hparams"] = upgrade_hparams(record["hparams"])
        diffs = _differences(a, b, name[:-3])
        tensors = len(a["state_dict"])
        print(f"{name[:-3]}: {tensors} state-dict tensors, {'equal' if not diffs else 'DIFFERENT'}")
        for diff in diffs:
            print("   ", diff)
        failed |= bool(diffs)
    return int(failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run the cases into a folder")
    rec.add_argument("directory", type=Path)
    rec.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    rec.add_argument("--old-runs", type=Path, default=OLD_RUNS, help="runs whose final.ckpt to load")
    rec.add_argument("--old-nvs-runs", type=Path, default=OLD_NVS_RUNS, help="runs whose stage1.ckpt to load")
    rec.add_argument("--no-shipped", action="store_true", help="skip loading the shipped networks")
    cmp = sub.add_parser("compare", help="assert two folders hold equal results")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    for private in ("_run", "_load"):
        one = sub.add_parser(private)
        one.add_argument("what")
        one.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.directory, args.cases, args.old_runs, not args.no_shipped, args.old_nvs_runs)
    elif args.command == "compare":
        return compare(args.before, args.after)
    elif args.command == "_run":
        run_case(args.what, args.out)
    else:
        load_case(args.what, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
