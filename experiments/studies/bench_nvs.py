"""Novel-view synthesis on held-out test subjects: L1 of synthesized views against simple baselines.

For every test pair (view i -> view j of one frame) it compares the target view ``I_t^j`` with
* ``synthesized``: the model's rendering of view j from view i (``R_ij``, the target camera's background),
* ``copy_input``: the input view ``I_t^i`` itself,
* ``mean_image``: the pixel-wise mean of ``--mean-items`` training target views,
* ``background_only``: the target camera's background (what the decoder gives with an empty mask),
as mean absolute error over all pixels and over the target's foreground (hand + sleeve mask) pixels; then the
**rotation controls** (:func:`~handssl.models.components.nvs_losses.rotation_controls`): the same rendering with
the identity rotation and with another item's rotation, the true mask filled with the mean hand colour (a blob),
and the synthesized mask's IoU with the hand. Geometry gate (issue 21): true <= 0.8 x identity and <= 0.8 x
another item's rotation. It saves a grid of test pairs (input | target | synthesized | turntable) as PNG.

    python experiments/studies/bench_nvs.py --checkpoint runs/label_sweep/semi_1.ckpt --out experiments/results/bench_nvs
    python experiments/studies/bench_nvs.py --pretrained nvs-semi-synthhands     # the shipped semi network
"""

from __future__ import annotations

import argparse
import csv
import json
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from handssl.callbacks.nvs_viz import nvs_panels
from handssl.data.datamodules import collate_samples
from handssl.data.multiview import MultiViewPairs
from handssl.data.synthhands.multi_view import SynthHandsMultiView
from handssl.data.synthhands.world import SynthHandsWorld
from handssl.models.components.nvs import load_state_dict_file
from handssl.models.components.nvs_losses import rotation_controls
from handssl.models.nvs import NVSModule
from handssl.pretrained import constructor_arguments

METHODS = ("synthesized", "copy_input", "mean_image", "background_only")


def load_module(path: Path) -> NVSModule:
    """An :class:`NVSModule` from a Lightning checkpoint or a ``{"state_dict", "hyper_parameters"}`` file."""
    raw = torch.load(path, map_location="cpu", weights_only=False)
    # the flat arguments of older files (lr=, decoder_splat=, ...) into their groups; without the CLI's
    # _class_path and other private keys
    hparams = constructor_arguments(raw.get("hyper_parameters", {}))
    module = NVSModule(**hparams)
    module.load_state_dict(load_state_dict_file(path))
    return module.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a Lightning or {state_dict, hyper_parameters} file")
    source.add_argument("--pretrained", help="a name of handssl.pretrained (e.g. nvs-semi-synthhands)")
    parser.add_argument("--items", type=int, default=512, help="pairs to evaluate")
    parser.add_argument(
        "--split",
        choices=("val", "test"),
        default="test",
        help="the subjects: val to choose a recipe, test to report",
    )
    parser.add_argument("--mean-items", type=int, default=512, help="training views in the mean image")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--style", default="synthetic")
    parser.add_argument(
        "--crop",
        choices=("joints", "fixed"),
        default=None,
        help="the world's crop the network trained on (default: a shipped network's own, from its metadata's "
        "world; else fixed, the NVS recipes'; networks before issue 21: joints)",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--grid-pairs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench_nvs"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.pretrained:
        import handssl.pretrained

        try:
            module = handssl.pretrained.load(args.pretrained)
        except handssl.pretrained.PretrainedError as error:
            raise SystemExit(str(error)) from None
        shipped_world = handssl.pretrained.info(args.pretrained).get("world") or {}
        args.crop = args.crop or shipped_world.get("crop")
    else:
        module = load_module(args.checkpoint)
    args.crop = args.crop or "fixed"
    if module.decoder is None:
        raise SystemExit(
            f"{args.checkpoint or args.pretrained} has no decoder (supervised regime): nothing to synthesise"
        )
    size = module.hparams.image_size
    world = SynthHandsWorld(style=args.style, image_size=size, crop=args.crop)
    train = MultiViewPairs(SynthHandsMultiView(split="train", world=world))
    # The recipes' evaluation sets (experiments/nvs_semi.yaml's multi_view_arguments)
    frames = 32 if args.split == "test" else 16
    test = MultiViewPairs(
        SynthHandsMultiView(
            split=args.split, world=world, sequences_per_subject=2, frames_per_sequence=frames
        )
    )

    step = max(1, len(train) // args.mean_items)
    mean_loader = DataLoader(
        torch.utils.data.Subset(train, list(range(0, len(train), step))[: args.mean_items]),
        batch_size=args.batch_size,
        collate_fn=collate_samples,
    )
    mean_image = torch.stack([b["target"].mean(0) for b in mean_loader]).mean(0)

    sums = {m: {"all": 0.0, "foreground": 0.0} for m in METHODS}
    pixels = {"all": 0.0, "foreground": 0.0}
    loader = DataLoader(
        torch.utils.data.Subset(test, range(min(args.items, len(test)))),
        batch_size=args.batch_size,
        collate_fn=collate_samples,
    )
    grid_batch = None
    controls: dict[str, float] = {}
    batches = 0
    with torch.no_grad():
        for batch in loader:
            render = module.renderer(batch["image"], batch["background"])
            mean_latent = partial(render, latent="mean")
            hand = (batch["target_mask"] > 0.5).float()
            if batch["image"].shape[0] > 1:
                values = rotation_controls(
                    render, batch["R_ij"], batch["target"], hand, batch["background"], mean_latent
                )
                for key, value in values.items():
                    controls[key] = controls.get(key, 0.0) + float(value)
                batches += 1
            grid_batch = grid_batch or batch
            target = batch["target"]
            candidates = {
                "synthesized": module.synthesize(batch["image"], batch["R_ij"], batch["background"]),
                "copy_input": batch["image"],
                "mean_image": mean_image.expand_as(target),
                "background_only": batch["background"],
            }
            foreground = (batch["target_mask"] > 0.5).float().expand_as(target)
            pixels["all"] += target.numel()
            pixels["foreground"] += float(foreground.sum())
            for name, image in candidates.items():
                error = (image - target).abs()
                sums[name]["all"] += float(error.sum())
                sums[name]["foreground"] += float((error * foreground).sum())
    rows = [
        {
            "method": m,
            "l1_all": round(sums[m]["all"] / pixels["all"], 4),
            "l1_foreground": round(sums[m]["foreground"] / max(pixels["foreground"], 1.0), 4),
        }
        for m in METHODS
    ]
    with open(args.out / "bench_nvs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = ["| method | L1 all pixels | L1 foreground pixels |", "|---|---|---|"]
    table += [f"| {r['method']} | {r['l1_all']} | {r['l1_foreground']} |" for r in rows]
    header = (
        f"network: {args.checkpoint or args.pretrained}, {min(args.items, len(test))} {args.split} pairs, "
        "images in [0, 1]\n\n"
    )
    controls = {k: round(v / max(batches, 1), 4) for k, v in controls.items()}
    true = controls["synthesis_l1_hand"]
    table += [
        "",
        "| rotation control (hand pixels) | L1 | true / this |",
        "|---|---|---|",
        *(
            f"| {name} | {controls[key]} | {true / controls[key]:.3f} |"
            for name, key in (
                ("true rotation R_ij", "synthesis_l1_hand"),
                ("identity rotation", "identity_l1_hand"),
                ("another item's rotation", "other_rotation_l1_hand"),
                ("the batch's mean latent, true rotation", "mean_latent_l1_hand"),
                ("mean-colour blob in the true mask", "blob_l1_hand"),
            )
        ),
        "",
        f"Synthesized mask IoU with the hand: {controls['mask_iou']:.3f}. Geometry gate: true <= 0.8 x identity "
        f"({true / controls['identity_l1_hand']:.3f}) and <= 0.8 x another item's rotation "
        f"({true / controls['other_rotation_l1_hand']:.3f}).",
    ]
    (args.out / "controls.json").write_text(json.dumps(controls, indent=1))
    (args.out / "bench_nvs.md").write_text(header + "\n".join(table) + "\n")
    print(header + "\n".join(table))

    panels = nvs_panels(module, grid_batch, num_samples=args.grid_pairs, turntable_views=8)
    grid = Image.fromarray(panels["grid"])
    grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(args.out / "nvs_views.png")
    print(f"wrote {args.out}/bench_nvs.csv, bench_nvs.md, nvs_views.png")


if __name__ == "__main__":
    main()
