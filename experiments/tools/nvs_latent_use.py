"""Does an NVS decoder read its latent? Renderings with the item's latent against an all-zero one.

For validation pairs of SynthHands multi-view (view i -> view j of one frame), the hand-pixel L1 of the target view
rendered from the pair's own latent with the true rotation ``R_ij``, with the identity, from another item's latent,
and from an all-zero latent; then view i auto-encoded (i -> i) with its latent and with a zero latent. A decoder
that draws the hand from the appearance vector scores the same with a zero latent, and then no rotation of the
latent can matter (issue 21; ``experiments/results/nvs_geometry_probes/probes.md``). Without the decoder: the
2D Chamfer distance of the latent's points, projected, to the target's silhouette (``latent_chamfer_*``, with the
true rotation, the identity and another item's rotation; meaningful for a network trained with
``geometry.point_silhouette_weight``, whose points live in the crop's ``[-1, 1]`` square): a latent that carries
geometry lands on the other view's silhouette only when rotated by ``R_ij``. Without any network (``oracle_*``): each
target's own mean hand colour filled into its true silhouette, into the input view's silhouette (what a perfect
renderer would draw with the identity rotation) and into another item's silhouette: the best ratios a renderer
with exact silhouettes could reach.

    python experiments/tools/nvs_latent_use.py nvs-semi-synthhands          # a shipped name
    python experiments/tools/nvs_latent_use.py runs/x/checkpoints/stage1.ckpt --pairs 64 --crop fixed \
        --figure look.png   # six pairs: input, target, true-R and identity renderings, mask, splat, silhouette
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from handssl.data import SynthHandsMultiView, SynthHandsWorld
from handssl.data.multiview import MultiViewPairs
from handssl.data.synthhands.world import Crop
from handssl.models import NVSModule
from handssl.models.components.nvs import composite, rotate_points
from handssl.models.components.nvs_geometry import point_silhouette_chamfer
from handssl.models.components.nvs_losses import foreground_l1, mask_iou, silhouette_target


def load(model: str) -> NVSModule:
    """A checkpoint file or a shipped name, in eval mode."""
    if Path(model).is_file():
        return NVSModule.load_from_checkpoint(model, map_location="cpu").eval()
    import handssl.pretrained

    try:
        return handssl.pretrained.load(model).eval()
    except handssl.pretrained.PretrainedError as error:
        raise SystemExit(str(error)) from None


def validation_pairs(image_size: int, pairs: int, crop: Crop = "joints") -> dict[str, Tensor]:
    """``pairs`` validation pairs spread evenly over SynthHands multi-view's validation subjects, stacked."""
    world = SynthHandsWorld(image_size=image_size, crop=crop)
    dataset = MultiViewPairs(
        SynthHandsMultiView(split="val", world=world, sequences_per_subject=2, frames_per_sequence=16)
    )
    step = max(1, len(dataset) // pairs)
    items = [dataset[k] for k in range(0, len(dataset), step)][:pairs]
    return {
        k: torch.stack([torch.as_tensor(item[k]) for item in items])
        for k in ("image", "target", "R_ij", "background", "background_input")
    }


def latent_use(
    module: NVSModule, pairs: int, threshold: float = 0.02, crop: Crop = "joints"
) -> dict[str, float]:
    """Hand-pixel L1 of the renderings described in the module docstring, on ``pairs`` validation pairs.

    ``crop`` is the world's crop (``"joints"`` or ``"fixed"``): the one the network was trained with.
    """
    if module.decoder is None:
        raise SystemExit("the supervised regime builds no decoder: nothing to render")
    batch = validation_pairs(int(module.hparams.image_size), pairs, crop)
    decoder = module.decoder
    with torch.no_grad():
        points, appearance = module.encoder(batch["image"])

        def render(latent: Tensor, background: Tensor) -> tuple[Tensor, Tensor]:
            foreground, mask = decoder.layers(latent, appearance)
            return composite(foreground, mask, background), mask

        hand_j = silhouette_target(batch["target"], batch["background"], threshold)
        hand_i = silhouette_target(batch["image"], batch["background_input"], threshold)
        R = batch["R_ij"].float()
        to_j = {
            "true_rotation": rotate_points(points, R),
            "identity": points,
            "other_items_latent": rotate_points(points.roll(1, 0), R),
            "zero_latent": torch.zeros_like(points),
        }
        result = {
            f"i_to_j_{name}": float(
                foreground_l1(render(latent, batch["background"])[0], batch["target"], hand_j)
            )
            for name, latent in to_j.items()
        }
        for name in ("true_rotation", "identity"):
            result[f"latent_chamfer_{name}"] = float(point_silhouette_chamfer(to_j[name], hand_j))
        other = rotate_points(points, R.roll(1, 0))
        result["latent_chamfer_other_rotation"] = float(point_silhouette_chamfer(other, hand_j))
        result["latent_chamfer_i_to_i"] = float(point_silhouette_chamfer(points, hand_i))
        own, own_mask = render(points, batch["background_input"])
        zero, _ = render(torch.zeros_like(points), batch["background_input"])
        result["i_to_i_own_latent"] = float(foreground_l1(own, batch["image"], hand_i))
        result["i_to_i_zero_latent"] = float(foreground_l1(zero, batch["image"], hand_i))
        result["i_to_i_mask_iou"] = float(mask_iou(own_mask, hand_i).mean())
        colour = (batch["target"] * hand_j).sum((2, 3), keepdim=True) / hand_j.sum(
            (2, 3), keepdim=True
        ).clamp_min(1)
        for name, silhouette in (("true", hand_j), ("input_view", hand_i), ("other_item", hand_j.roll(1, 0))):
            drawn = composite(colour.expand_as(batch["target"]), silhouette, batch["background"])
            result[f"oracle_{name}_silhouette"] = float(foreground_l1(drawn, batch["target"], hand_j))
    return result


def draw_pairs(
    module: NVSModule, path: Path, rows: int = 6, threshold: float = 0.02, crop: Crop = "joints"
) -> None:
    """Save a PNG of ``rows`` validation pairs, one per row.

    Columns: input view i, target view j, the rendering of j with the true rotation and with the identity, the
    true rendering's mask, the occupancy splat of the rotated points (:func:`splat_points`, 1 - exp(-count)) and
    the target's label-free silhouette.
    """
    import matplotlib.pyplot as plt

    from handssl.models.components.nvs import splat_points
    from handssl.viz import image_grid

    if module.decoder is None:
        raise SystemExit("the supervised regime builds no decoder: nothing to render")
    size = int(module.hparams.image_size)
    batch = validation_pairs(size, rows * 8, crop)
    batch = {k: v[::8][:rows] for k, v in batch.items()}  # rows from different subjects
    with torch.no_grad():
        points, appearance = module.encoder(batch["image"])
        turned = rotate_points(points, batch["R_ij"].float())
        foreground, mask = module.decoder.layers(turned, appearance)
        true = composite(foreground, mask, batch["background"])
        foreground_id, mask_id = module.decoder.layers(points, appearance)
        identity = composite(foreground_id, mask_id, batch["background"])
        coverage = -torch.expm1(-splat_points(turned, size, sigma=2.0 / size)[:, :1])  # ~ one pixel
        silhouette = silhouette_target(batch["target"], batch["background"], threshold)

    def grey(x: Tensor) -> Tensor:
        return x.expand(-1, 3, -1, -1)

    columns = [batch["image"], batch["target"], true, identity, grey(mask), grey(coverage), grey(silhouette)]
    tiles = torch.stack([c.float().clamp(0, 1) for c in columns], 1).flatten(0, 1)
    grid = image_grid(tiles, nrow=len(columns))
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, grid)
    print(f"wrote {path} (input | target | true R | identity | mask | points' splat | silhouette)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="checkpoint file or shipped name")
    parser.add_argument("--pairs", type=int, default=64, help="validation pairs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--crop",
        choices=("joints", "fixed"),
        default="joints",
        help="the world's crop the network trained on",
    )
    parser.add_argument("--figure", type=Path, help="also save a PNG of six pairs here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    module = load(args.model)
    for name, value in latent_use(module, args.pairs, crop=args.crop).items():
        print(f"{name}: {value:.3f}")
    if args.figure is not None:
        draw_pairs(module, args.figure, crop=args.crop)


if __name__ == "__main__":
    main()
