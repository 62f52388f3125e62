"""Does the decoder use L3D? Render val pairs with their own latent, another item's latent, and the identity."""
import sys, torch
from handssl.models import NVSModule
from handssl.data import SynthHandsMultiView
from handssl.data.multiview import MultiViewPairs
from handssl.models.components.nvs import rotate_points, composite
from handssl.models.components.nvs_losses import foreground_l1, silhouette_target
torch.set_num_threads(1)
import handssl.pretrained
m = (handssl.pretrained.load(sys.argv[1][8:]) if sys.argv[1].startswith("shipped:") else NVSModule.load_from_checkpoint(sys.argv[1], map_location="cpu")).eval()
from handssl.data import SynthHandsWorld
ds = MultiViewPairs(SynthHandsMultiView(split="val", world=SynthHandsWorld(image_size=64), sequences_per_subject=2, frames_per_sequence=16))
items = [ds[k] for k in range(0, 256, 4)]
b = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in ("image", "target", "R_ij", "background")}
with torch.no_grad():
    L, app = m.encoder(b["image"])
    hand = silhouette_target(b["target"], b["background"], 0.02)
    def render(points, appearance):
        fg, mask = m.decoder.layers(points, appearance)
        return composite(fg, mask, b["background"]), mask
    R = b["R_ij"].float()
    out = {}
    out["true"] = render(rotate_points(L, R), app)
    out["identity"] = render(L, app)
    out["other_latent"] = render(rotate_points(L.roll(1, 0), R), app)
    out["zero_latent"] = render(torch.zeros_like(L), app)
    for k, (img, mask) in out.items():
        print(k, f"hand L1 {float(foreground_l1(img, b['target'], hand)):.3f}", f"diff from true {float((img - out['true'][0]).abs().mean()):.4f}")
    print("latent rms", float(L.pow(2).mean().sqrt()), "spread across items", float((L - L.mean(0)).pow(2).mean().sqrt()))
    bg_in = torch.stack([torch.as_tensor(it["background_input"]) for it in items])
    hand_i = silhouette_target(b["image"], bg_in, 0.02)
    fg, mask = m.decoder.layers(L, app)
    auto = composite(fg, mask, bg_in)
    print("autoencode i->i hand L1", f"{float(foreground_l1(auto, b['image'], hand_i)):.3f}", "mask iou", float(((mask>0.5)&(hand_i>0.5)).sum()/((mask>0.5)|(hand_i>0.5)).sum()))
    fg, mask = m.decoder.layers(torch.zeros_like(L), app)
    print("autoencode zero latent hand L1", f"{float(foreground_l1(composite(fg, mask, bg_in), b['image'], hand_i)):.3f}")
