"""Bit-for-bit check of the batches every shipped recipe's DataModule makes, before and after a refactor.

``save OUT.npz`` builds the DataModule of every recipe in ``experiments/*.yaml`` (and of each model config on the
data configs it stacks on, plus ``render_on: device`` variants rendered on the CPU) through
``handssl._lightning_cli.make_cli``, with the configs and code of the tree ``handssl`` is imported from; the real
datasets are tiny fake copies (``handssl.data.fakes``) written under a temporary folder. Per case it saves every
tensor and the ``meta`` of the first three training batches (after ``on_after_batch_transfer``, the batch the
model sees), of the first batch of epoch 1, of the first validation batch, the loaders' resumable state after two
batches, the third batch drawn again by a fresh DataModule resumed from that state, and the NVS pose statistics.
``compare A.npz B.npz`` asserts the same keys and byte-identical arrays. Run ``save`` on the code before the
change (its tree first on ``PYTHONPATH``), again after it, then ``compare`` (a few minutes each on one core)::

    PYTHONPATH=/path/to/before python experiments/tools/same_batches.py save /tmp/before.npz
    PYTHONPATH=. python experiments/tools/same_batches.py save /tmp/after.npz
    python experiments/tools/same_batches.py compare /tmp/before.npz /tmp/after.npz
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

SMALL = ["--data.init_args.batch_size=4"]
"""Real datasets are tiny fake copies: small batches so that a training batch fits (and stays cheap)."""
PAIRS = ["--data.init_args.batch_size=2"]
"""The fake Panoptic copy gives few multi-view items."""

# Views' options moved under data.init_args.views (issue 24); the same case on code from before and after.
VIEWS = "views.init_args." if importlib.util.find_spec("handssl.data.views") is not None else ""

CASES: dict[str, tuple[list[str], list[str]]] = {
    # recipe files (relative to experiments/) and extra options
    "quickstart": (["quickstart.yaml"], []),
    "quickstart_device": (["quickstart.yaml"], ["--data.init_args.render_on=device"]),
    "semihand_full": (["semihand_full.yaml"], []),
    "semihand_full_device_workers": (
        ["semihand_full.yaml"],
        ["--data.init_args.render_on=device", f"--data.init_args.{VIEWS}augment_on=workers"],
    ),
    "semihand_oracle": (["semihand_oracle.yaml"], []),
    "semihand_source_only": (["semihand_source_only.yaml"], []),
    "semihand_full_rhd_stb": (["semihand_full_rhd_stb.yaml"], SMALL),
    "semihand_full_rhd_do": (["semihand_full_rhd_do.yaml"], SMALL),
    "semihand_source_only_rhd_stb": (["semihand_source_only_rhd_stb.yaml"], SMALL),
    "semihand_source_only_rhd_do": (["semihand_source_only_rhd_do.yaml"], SMALL),
    "nvs_semi": (["nvs_semi.yaml"], []),
    "nvs_semi_device": (["nvs_semi.yaml"], ["--data.init_args.render_on=device"]),
    "nvs_supervised": (["nvs_supervised.yaml"], []),
    "nvs_pretrained": (["nvs_pretrained.yaml"], []),
    "nvs_pretrained_stage2": (["nvs_pretrained_stage2.yaml"], []),
    "nvs_semi_panoptic": (["nvs_semi_panoptic.yaml"], PAIRS),
    "nvs_supervised_panoptic": (["nvs_supervised_panoptic.yaml"], PAIRS),
    "nvs_pretrained_panoptic": (["nvs_pretrained_panoptic.yaml"], PAIRS),
    "nvs_pretrained_stage2_panoptic": (["nvs_pretrained_stage2_panoptic.yaml"], PAIRS),
    # the single-view data configs under the supervised model
    **{
        f"supervised_{name}": (["model/supervised.yaml", f"data/{name}.yaml"], SMALL)
        for name in ("rhd", "stb", "dexter_object", "freihand", "panoptic", "handdb", "synthhands")
    },
    # the one SynthHands data config under SemiHand's network too (the NVS recipes stack on it as well)
    "semihand_source_only_synthhands": (["model/semihand_source_only.yaml", "data/synthhands.yaml"], []),
}


def make_fakes(root: Path) -> None:
    """The fake copies the data configs read (``data/<name>`` relative to the working directory)."""
    from handssl.data import fakes

    data = root / "data"
    fakes.make_fake_rhd(data / "RHD", num_samples=16)
    fakes.make_fake_stb(data / "STB", num_frames=2)
    fakes.make_fake_dexter_object(data / "dexter_object", num_frames=4)
    fakes.make_fake_panoptic(
        data / "panoptic", sequences=("171204_pose1", "171204_pose2", "171204_pose3"), num_frames=61
    )
    fakes.make_fake_handdb(data / "handdb", num_images=14)
    fakes.make_fake_freihand(data / "FreiHAND", num_training=14, num_evaluation=4)


def record(out: dict[str, np.ndarray], prefix: str, value: Any) -> None:
    """Every tensor (and number) in ``value``, nested dicts and lists included; ``meta`` as JSON."""
    if isinstance(value, torch.Tensor):
        out[prefix] = value.detach().cpu().numpy()
    elif isinstance(value, np.ndarray):
        out[prefix] = value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key == "meta":
                out[f"{prefix}/meta"] = np.array(json.dumps(item, sort_keys=True, default=str))
            else:
                record(out, f"{prefix}/{key}", item)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            record(out, f"{prefix}[{i}]", item)
    elif isinstance(value, (bool, int, float)):
        out[prefix] = np.array(value)


def seed(value: int = 0) -> None:
    torch.manual_seed(value)
    np.random.seed(value)  # noqa: NPY002
    random.seed(value)


def build(files: list[str], extra: list[str], root: Path) -> Any:
    from handssl._lightning_cli import make_cli

    args = [a for f in files for a in ("-c", str(root / f))]
    overrides = ["--trainer.logger=false"]
    if any("stage2" in f for f in files):  # its stage-1 checkpoint is not there; the data is what is compared
        overrides += ["--model=handssl.models.SupervisedModule"]
    cli = make_cli([*args, *overrides, *extra], run=False)
    return cli.datamodule


def loaders_of(loader: Any) -> list[Any]:
    from pytorch_lightning.utilities.combined_loader import CombinedLoader

    return list(loader.flattened) if isinstance(loader, CombinedLoader) else [loader]


def start(dm: Any, loader: Any, epoch: int = 0) -> Any:
    """A function that returns the next training batch of ``loader``'s pass of ``epoch``, as the model sees it."""
    from lightning_fabric.utilities.data import _set_sampler_epoch
    from pytorch_lightning.utilities.combined_loader import CombinedLoader

    for inner in loaders_of(loader):
        _set_sampler_epoch(inner, epoch)
    iterator = iter(loader)

    def take() -> Any:
        batch = next(iterator)
        if isinstance(loader, CombinedLoader):
            batch = batch[0]
        return dm.on_after_batch_transfer(batch, 0)

    return take


def pose_statistics(dm: Any) -> Any:
    if hasattr(dm, "pose_statistics"):
        return dm.pose_statistics()
    views = getattr(dm, "views", None)
    if views is not None and hasattr(views, "pose_statistics"):
        return views.pose_statistics(dm)
    return None


def save(path: str, only: list[str]) -> None:
    import handssl

    root = Path(handssl.__file__).resolve().parents[1] / "experiments"
    print("code and configs from", root.parent, file=sys.stderr)
    out: dict[str, np.ndarray] = {}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        make_fakes(Path(tmp))
        os.chdir(tmp)
        try:
            for case, (files, extra) in CASES.items():
                if only and case not in only:
                    continue
                print(case, file=sys.stderr)
                seed()
                dm = build(files, extra, root)
                dm.setup("fit")
                stats = pose_statistics(dm)
                if stats is not None:
                    record(out, f"{case}/pose_statistics", list(stats))
                loader = dm.train_dataloader()
                take = start(dm, loader)
                train = [take(), take()]
                state = [inner.state_dict() for inner in loaders_of(loader)]
                train.append(take())
                record(out, f"{case}/train", train)
                record(out, f"{case}/state", state)
                record(out, f"{case}/epoch1", start(dm, dm.train_dataloader(), epoch=1)())
                val = dm.val_dataloader()
                if not isinstance(val, list):
                    record(out, f"{case}/val", next(iter(val)))
                # A fresh DataModule resumed from the state after two batches draws the third one again.
                seed(2)
                resumed = build(files, extra, root)
                resumed.setup("fit")
                pose_statistics(resumed)
                loader = resumed.train_dataloader()
                for inner, inner_state in zip(loaders_of(loader), state):
                    inner.load_state_dict(inner_state)  # restores the global generators too
                record(out, f"{case}/resumed", [start(resumed, loader)()])
        finally:
            os.chdir(cwd)
    np.savez(path, **out)
    print(f"saved {len(out)} arrays to {path}", file=sys.stderr)


def compare(a: str, b: str) -> None:
    with np.load(a) as x, np.load(b) as y:
        if set(x.files) != set(y.files):
            sys.exit(
                f"different keys: only in {a}: {sorted(set(x.files) - set(y.files))[:10]}, "
                f"only in {b}: {sorted(set(y.files) - set(x.files))[:10]}"
            )
        bad = [
            k
            for k in sorted(x.files)
            if x[k].dtype != y[k].dtype or x[k].shape != y[k].shape or x[k].tobytes() != y[k].tobytes()
        ]
        cases = {k.split("/", 1)[0] for k in x.files}
        resumed = [k for k in x.files if "/resumed" in k and not k.endswith("meta")]
        same_resume = all(
            np.array_equal(x[k], x[k.replace("/resumed[0]", "/train[2]")], equal_nan=True)
            for k in resumed
            if k.replace("/resumed[0]", "/train[2]") in x.files
        )
        print(
            f"{len(x.files)} arrays of {len(cases)} cases compared byte for byte: {len(bad)} differ; "
            f"resumed third batch equals the uninterrupted one in {a}: {same_resume}"
        )
        for k in bad[:30]:
            print("  differs:", k)
        sys.exit(1 if bad else 0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save")
    s.add_argument("out")
    s.add_argument("--only", nargs="*", default=[], help="case names (default: all)")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = parser.parse_args()
    save(args.out, args.only) if args.command == "save" else compare(args.a, args.b)
