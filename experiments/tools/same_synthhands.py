"""Bit-for-bit check of the SynthHands datasets that the experiments' data configs build, before and after a refactor.

``save OUT.npz`` builds the DataModules of ``experiments/data/synthhands.yaml`` (under the supervised model and, as
multi-view pairs, under ``experiments/nvs_semi.yaml``; before issue 24 the pairs had their own
``synthhands_multiview.yaml``) and ``synthhands_synthetic_to_real.yaml`` (each under its model config, through ``handssl.cli.make_cli``; the configs
and the code are those of the tree ``handssl`` is imported from), finds every SynthHands dataset inside, and saves
every tensor and the ``meta`` of a few items of each: single fetches, a batched fetch, and a batch rendered as
``render_on="device"`` renders it (on the CPU); then two worlds no config uses (the held object, fixed crops, a
small rig, other sizes and seeds) built from flat arguments, which go to a ``SynthHandsWorld`` where the datasets
take one. ``compare A.npz B.npz`` asserts the same keys and byte-identical arrays, and names the worlds whose
disk-cache key (``SynthHandsWorld.config()``) changed. Run ``save`` on the code before the change (its tree
first on ``PYTHONPATH``), again after it, then ``compare`` (about 20 s each on one core)::

    PYTHONPATH=/path/to/before python experiments/tools/same_synthhands.py save /tmp/before.npz
    PYTHONPATH=. python experiments/tools/same_synthhands.py save /tmp/after.npz
    python experiments/tools/same_synthhands.py compare /tmp/before.npz /tmp/after.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

CASES = {
    "synthhands": ("model/supervised.yaml", "data/synthhands.yaml"),
    "synthhands_multiview": ("model/nvs_semi.yaml", "data/synthhands_multiview.yaml"),  # before issue 24
    "synthhands_synthetic_to_real": ("model/semihand.yaml", "data/synthhands_synthetic_to_real.yaml"),
}


def synthhands_in(obj, path, found, seen):
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if type(obj).__name__ in ("SynthHands", "SynthHandsMultiView"):
        found[path] = obj
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            synthhands_in(v, f"{path}.{k}", found, seen)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            synthhands_in(v, f"{path}[{i}]", found, seen)
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith(("handssl", "torch.utils.data")):
        for k, v in vars(obj).items():
            if not k.startswith("_") or k in ("_datasets",):
                synthhands_in(v, f"{path}.{k}", found, seen)


def record(out, prefix, sample):
    for key, value in sample.items():
        if isinstance(value, torch.Tensor):
            out[f"{prefix}/{key}"] = value.cpu().numpy()
        elif key == "meta":
            out[f"{prefix}/meta"] = np.array(json.dumps(value, sort_keys=True, default=str))


def render_on_cpu(ds, keys):
    """What render_on="device" does to the dataset (on the CPU): an uncached batched render."""
    device = torch.device("cpu")
    if hasattr(ds, "rendering_on"):
        with ds.rendering_on(device):
            return ds.__getitems__(keys)
    ds.render_device = device
    try:
        return ds.__getitems__(keys)
    finally:
        ds.render_device = None


def build(cls, kwargs):
    """``cls`` from flat arguments: the world's go to a ``SynthHandsWorld`` where the dataset takes one."""
    import inspect

    if "world" not in inspect.signature(cls).parameters:
        return cls(**kwargs)
    from handssl.data import SynthHandsWorld

    names = inspect.signature(SynthHandsWorld).parameters
    world = SynthHandsWorld(**{k: v for k, v in kwargs.items() if k in names})
    return cls(world=world, **{k: v for k, v in kwargs.items() if k not in names})


def save(path):
    import handssl
    from handssl._lightning_cli import make_cli

    root = Path(handssl.__file__).resolve().parents[1] / "experiments"
    print("code and configs from", root.parent, file=sys.stderr)
    out = {}
    for case, (model, data) in CASES.items():
        if not (root / data).is_file() and case == "synthhands_multiview":  # one data config since issue 24
            model, data = "nvs_semi.yaml", "data/synthhands.yaml"  # the recipe: model, data, eval subsets
        cli = make_cli(["-c", str(root / model), "-c", str(root / data), "--trainer.logger=false"], run=False)
        found = {}
        synthhands_in(cli.datamodule, "dm", found, set())
        assert found, case
        for name, ds in sorted(found.items()):
            n = len(ds)
            prefix = f"{case}/{name}"
            out[f"{prefix}/len"] = np.array(n)
            out[f"{prefix}/world_config"] = np.array(json.dumps(ds.world.config(), sort_keys=True))
            print(case, name, type(ds).__name__, n, ds.world.style, ds.world.image_size, file=sys.stderr)
            for index in sorted({0, 1, n // 2, n - 1}):
                record(out, f"{prefix}/item{index}", ds[index])
            keys = [3, 2, n // 3, n - 2]
            if type(ds).__name__ == "SynthHandsMultiView":
                record(out, f"{prefix}/item5_epoch3", ds[(5, 3)])
                keys = [(3, 1), (2, 0), (n // 3, 7), (n - 2, 2)]
            for i, sample in enumerate(ds.__getitems__(keys)):
                record(out, f"{prefix}/batch{i}", sample)
            for i, sample in enumerate(render_on_cpu(ds, keys[:2])):
                record(out, f"{prefix}/device{i}", sample)
    # Worlds no config uses: the held object, fixed crops, a small rig, another seed and size, frames up to 24.
    from handssl.data import SynthHands, SynthHandsMultiView

    extra = {
        "real_object_fixed": (
            SynthHands,
            dict(
                split="test",
                style="real_object",
                image_size=32,
                crop="fixed",
                num_cameras=4,
                seed=3,
                camera="all",
                num_subjects=2,
                sequences_per_subject=2,
                frames_per_sequence=24,
                cache_mb=0,
            ),
        ),
        "mv_same_sequence": (
            SynthHandsMultiView,
            dict(
                split="val",
                style="real",
                image_size=48,
                num_views=3,
                appearance_source="same_sequence",
                frame_gap=5,
                seed=2,
                crop_margin=1.5,
                rig_radius_mm=700.0,
                num_subjects=2,
                sequences_per_subject=1,
                frames_per_sequence=12,
            ),
        ),
    }
    for case, (cls, kwargs) in extra.items():
        ds = build(cls, kwargs)
        n = len(ds)
        for index in sorted({0, 1, n // 2, n - 1}):
            record(out, f"{case}/item{index}", ds[index])
        for i, sample in enumerate(ds.__getitems__([n - 1, 4, 2])):
            record(out, f"{case}/batch{i}", sample)
    np.savez(path, **out)
    print(f"saved {len(out)} arrays to {path}", file=sys.stderr)


def compare(a, b):
    with np.load(a) as x, np.load(b) as y:
        x_keys = set(x.files) - {k for k in x.files if k.endswith("world_config")}
        y_keys = set(y.files) - {k for k in y.files if k.endswith("world_config")}
        if x_keys != y_keys:
            sys.exit(
                f"different keys: only in {a}: {sorted(x_keys - y_keys)[:10]}, only in {b}: {sorted(y_keys - x_keys)[:10]}"
            )
        bad = [
            k
            for k in sorted(x_keys)
            if x[k].dtype != y[k].dtype or x[k].shape != y[k].shape or x[k].tobytes() != y[k].tobytes()
        ]
        configs = [k for k in x.files if k.endswith("world_config") and k in y.files and x[k] != y[k]]
        tensors = sum(1 for k in x_keys if not k.endswith(("meta", "len")))
        print(f"{len(x_keys)} arrays ({tensors} tensors) compared byte for byte: {len(bad)} differ")
        for k in bad[:20]:
            print("  differs:", k)
        for k in configs:
            a_cfg, b_cfg = json.loads(str(x[k])), json.loads(str(y[k]))
            keys = sorted(n for n in a_cfg.keys() | b_cfg.keys() if a_cfg.get(n) != b_cfg.get(n))
            print(f"  world config (the disk-cache key) of {k.rsplit('/', 1)[0]} differs in: {keys}")
        sys.exit(1 if bad else 0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("save").add_argument("out")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = parser.parse_args()
    save(args.out) if args.command == "save" else compare(args.a, args.b)
