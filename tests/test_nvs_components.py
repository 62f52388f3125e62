import math

import pytest
import torch

from handssl.geometry import axis_angle_to_matrix, rotation_about_axis
from handssl.models.components.losses import (
    PerceptualLoss,
    ReconstructionLoss,
    ResNet18Features,
    gradient_loss,
    load_resnet18_features,
    per_image_l1,
    ssim,
)
from handssl.models.components.nvs import (
    MASK_FLOOR,
    NVSDecoder,
    NVSEncoder,
    PoseHead,
    composite,
    latent_points,
    pose_statistics,
    rotate_points,
    turntable_rotations,
)

SIZE = 32
POINTS = 20
APP = 8


def small_decoder() -> NVSDecoder:
    return NVSDecoder(SIZE, POINTS, APP, latent_channels=8, widths=(16, 8), dropout=0.3).eval()


def test_rotate_points_hand_computed():
    R = rotation_about_axis("z", math.pi / 2)  # x -> y
    points = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 3.0]]])
    out = rotate_points(points, R)
    assert torch.allclose(out, torch.tensor([[[0.0, 1.0, 0.0], [-2.0, 0.0, 3.0]]]), atol=1e-6)
    # batched rotations apply per item
    Rs = torch.stack([torch.eye(3), R])
    out2 = rotate_points(points.expand(2, -1, -1), Rs)
    assert torch.allclose(out2[0], points[0]) and torch.allclose(out2[1], out[0], atol=1e-6)


def test_rotate_points_errors():
    with pytest.raises(ValueError, match="points"):
        rotate_points(torch.zeros(2, 5, 2), torch.eye(3))
    with pytest.raises(ValueError, match="3 rotations for a batch of 2"):
        rotate_points(torch.zeros(2, 5, 3), torch.eye(3).expand(3, 3, 3))


def test_decoding_rotated_then_rotated_back_equals_unrotated():
    decoder = small_decoder()
    points = torch.randn(3, POINTS, 3)
    appearance = torch.randn(3, APP)
    background = torch.rand(3, 3, SIZE, SIZE)
    R = axis_angle_to_matrix(torch.randn(3, 3))
    with torch.no_grad():
        plain = decoder(points, appearance, background)
        back = decoder(rotate_points(rotate_points(points, R), R.transpose(-1, -2)), appearance, background)
        rotated = decoder(rotate_points(points, R), appearance, background)
    assert torch.allclose(back, plain, atol=1e-5)
    # the rotation does reach the image: decoding the rotated latent differs
    assert (rotated - plain).abs().max() > 1e-4


def test_composite_and_mask_range():
    fg = torch.full((1, 3, 2, 2), 0.8)
    bg = torch.full((1, 3, 2, 2), 0.2)
    mask = torch.tensor([[[[1.0, 0.0], [0.5, 0.25]]]])
    out = composite(fg, mask, bg)
    expected = torch.tensor([[0.8, 0.2], [0.5, 0.35]])
    assert torch.allclose(out[0, 0], expected) and torch.allclose(out[0, 2], expected)

    decoder = small_decoder()
    fg, mask = decoder.layers(torch.randn(2, POINTS, 3), torch.randn(2, APP))
    assert fg.shape == (2, 3, SIZE, SIZE) and mask.shape == (2, 1, SIZE, SIZE)
    assert fg.min() >= 0 and fg.max() <= 1
    assert mask.min() >= MASK_FLOOR and mask.max() <= 1


def test_decoder_background_shows_where_mask_is_low():
    decoder = small_decoder()
    with torch.no_grad():
        decoder.to_output.weight.zero_()
        decoder.to_output.bias.copy_(torch.tensor([0.0, 0.0, 0.0, -30.0]))  # mask -> floor
    background = torch.rand(1, 3, SIZE, SIZE)
    out = decoder(torch.randn(1, POINTS, 3), torch.randn(1, APP), background)
    assert torch.allclose(out, background, atol=1e-3)


def test_encoder_layout_consecutive_triplets_are_points():
    encoder = NVSEncoder(SIZE, POINTS, APP, widths=(8, 16), blocks=(1, 1), reduce_channels=4).eval()
    with torch.no_grad():
        encoder.fc.weight.zero_()
        encoder.fc.bias.copy_(torch.arange(APP + 3 * POINTS, dtype=torch.float32))
    points, appearance = encoder(torch.rand(2, 3, SIZE, SIZE))
    assert points.shape == (2, POINTS, 3) and appearance.shape == (2, APP)
    assert torch.equal(appearance[0], torch.arange(APP, dtype=torch.float32))
    assert torch.equal(points[1, 0], torch.tensor([APP, APP + 1, APP + 2], dtype=torch.float32))
    assert torch.equal(points[0, 2], torch.tensor([APP + 6, APP + 7, APP + 8], dtype=torch.float32))


def test_pixel_aligned_points_start_at_their_cells_and_follow_the_image():
    cells = SIZE // 4
    encoder = NVSEncoder(
        SIZE, cells * cells, APP, widths=(8, 16, 16), blocks=(1, 1, 1), point_head="pixel_aligned"
    ).eval()
    image = torch.rand(2, 3, SIZE, SIZE, requires_grad=True)
    points, appearance = encoder(image)
    assert points.shape == (2, cells * cells, 3) and appearance.shape == (2, APP)
    # untrained, every point sits at its cell's centre (row-major, x right, y down) at depth 0
    assert torch.allclose(points[0, 0], torch.tensor([-1 + 1 / cells, -1 + 1 / cells, 0.0]))
    assert torch.allclose(points[1, cells + 2], torch.tensor([-1 + 5 / cells, -1 + 3 / cells, 0.0]))
    # the head learns: its offsets depend on the image (the last layer starts at zero, so train it a step)
    torch.nn.init.normal_(encoder.to_points[-1].weight)
    moved, _ = encoder(image)
    assert float((moved[0] - moved[1]).abs().max()) > 1e-3
    moved[0, 0, 2].backward()
    assert (
        image.grad is not None
        and float(image.grad[0].abs().sum()) > 0
        and float(image.grad[1].abs().sum()) == 0
    )
    with pytest.raises(ValueError, match=r"num_points must be 1 x \(image_size / 4\)\^2 = 64"):
        NVSEncoder(SIZE, 20, APP, widths=(8, 16, 16), blocks=(1, 1, 1), point_head="pixel_aligned")
    with pytest.raises(ValueError, match="point_head must be one of"):
        NVSEncoder(SIZE, 64, APP, widths=(8, 16, 16), blocks=(1, 1, 1), point_head="conv")  # type: ignore[arg-type]


def test_latent_points_follow_the_image_size_with_the_pixel_aligned_head():
    assert latent_points(64) == latent_points(128) == 200  # the linear head: Rhodin et al.'s count
    assert latent_points(64, "pixel_aligned", depth_samples=3) == 3 * 16 * 16
    assert latent_points(128, "pixel_aligned", depth_samples=3) == 3 * 32 * 32
    assert (
        latent_points(128, "pixel_aligned", depth_samples=3, num_points=20) == 20
    )  # given: kept (and checked)
    from handssl.models import NVSModule

    for size in (32, 48):
        module = NVSModule(
            regime="supervised",
            image_size=size,
            encoder={
                "widths": (8, 16, 16),
                "blocks": (1, 1, 1),
                "point_head": "pixel_aligned",
                "depth_samples": 2,
            },
            pose_head={"hidden": (8,)},
        )
        cells = size // 4
        assert module.encoder(torch.rand(1, 3, size, size))[0].shape == (1, 2 * cells * cells, 3)


def test_opacity_adds_a_column_in_0_1_that_the_decoder_and_pose_head_read():
    cells = SIZE // 4
    widths = {"widths": (8, 16, 16), "blocks": (1, 1, 1)}
    encoder = NVSEncoder(SIZE, cells * cells, APP, **widths, point_head="pixel_aligned", opacity=True).eval()
    assert encoder.point_dim == 4
    points, _ = encoder(torch.rand(2, 3, SIZE, SIZE))
    assert points.shape == (2, cells * cells, 4)
    assert torch.allclose(points[..., 3], torch.full((2, cells * cells), 0.5))  # untrained: half opaque
    torch.nn.init.normal_(encoder.to_points[-1].weight, std=10.0)
    opacity = encoder(torch.rand(2, 3, SIZE, SIZE))[0][..., 3]
    assert 0.0 <= float(opacity.min()) < float(opacity.max()) <= 1.0
    decoder = NVSDecoder(SIZE, cells * cells, APP, latent_channels=8, widths=(16, 8), splat=True, point_dim=4)
    foreground, mask = decoder.layers(points, torch.rand(2, APP))
    assert foreground.shape == (2, 3, SIZE, SIZE) and mask.shape == (2, 1, SIZE, SIZE)
    with pytest.raises(ValueError, match=r"points must be \(B, 64, 4\)"):
        decoder.layers(points[..., :3], torch.rand(2, APP))
    head = PoseHead(cells * cells, (16,), point_dim=4).eval()
    assert head(points).shape == (2, 21, 3)
    with pytest.raises(ValueError, match="needs point_head 'pixel_aligned'"):
        NVSEncoder(SIZE, POINTS, APP, widths=(8, 16), blocks=(1, 1), opacity=True)
    with pytest.raises(ValueError, match="point_dim must be 3"):
        NVSDecoder(SIZE, POINTS, APP, widths=(16, 8), point_dim=5)


def test_depth_samples_put_each_cells_points_one_behind_another_on_its_ray():
    cells = SIZE // 4
    widths = {"widths": (8, 16, 16), "blocks": (1, 1, 1)}
    encoder = NVSEncoder(
        SIZE, 3 * cells * cells, APP, **widths, point_head="pixel_aligned", opacity=True, depth_samples=3
    ).eval()
    torch.nn.init.normal_(encoder.to_points[-1].weight, std=0.5)
    points, _ = encoder(torch.rand(2, 3, SIZE, SIZE))
    assert points.shape == (2, 3 * cells * cells, 4)
    front, middle, back = points.view(2, 3, cells * cells, 4).unbind(1)  # layer by layer
    assert torch.equal(front[..., [0, 1, 3]], middle[..., [0, 1, 3]])  # same cell place and opacity
    assert torch.equal(front[..., [0, 1, 3]], back[..., [0, 1, 3]])
    assert bool((middle[..., 2] > front[..., 2]).all() and (back[..., 2] > middle[..., 2]).all())
    untrained = NVSEncoder(
        SIZE, 3 * cells * cells, APP, **widths, point_head="pixel_aligned", depth_samples=3
    )
    steps = untrained.eval()(torch.rand(1, 3, SIZE, SIZE))[0].view(1, 3, -1, 3)[..., 2].diff(dim=1)
    assert torch.allclose(
        steps, torch.full_like(steps, 0.08), atol=1e-5
    )  # FIRST_STEP: 10 mm in a 240 mm crop
    with pytest.raises(ValueError, match=r"num_points must be 3 x \(image_size / 4\)\^2 = 192"):
        NVSEncoder(SIZE, cells * cells, APP, **widths, point_head="pixel_aligned", depth_samples=3)
    with pytest.raises(ValueError, match="depth_samples places points along each cell's ray"):
        NVSEncoder(SIZE, POINTS, APP, widths=(8, 16), blocks=(1, 1), depth_samples=2)
    with pytest.raises(ValueError, match="depth_samples must be >= 1"):
        NVSEncoder(SIZE, POINTS, APP, widths=(8, 16), blocks=(1, 1), depth_samples=0)


def test_a_transparent_point_leaves_the_points_mask_empty():
    """With decoder.mask_from_points, a point drawn at opacity 0 gates the mask to (almost) nothing."""
    torch.manual_seed(0)
    decoder = NVSDecoder(
        SIZE, 4, APP, latent_channels=8, widths=(16, 8), splat=True, mask_from_points=True, point_dim=4
    ).eval()
    points = torch.zeros(1, 4, 4)
    appearance = torch.rand(1, APP)
    with torch.no_grad():
        opaque = decoder.layers(points + torch.tensor([0.0, 0.0, 0.0, 1.0]), appearance)[1]
        transparent = decoder.layers(points, appearance)[1]
    assert float(transparent.max()) < 1e-3 < float(opaque.max())


def test_encoder_and_decoder_argument_errors():
    with pytest.raises(ValueError, match="multiple of the backbone stride"):
        NVSEncoder(30, POINTS, APP, widths=(8, 16), blocks=(1, 1))
    encoder = NVSEncoder(SIZE, POINTS, APP, widths=(8, 16), blocks=(1, 1))
    with pytest.raises(ValueError, match="32x32"):
        encoder(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiple of 2"):
        NVSDecoder(36, POINTS, APP, widths=(8, 8, 8))
    with pytest.raises(ValueError, match=r"points must be \(B, 20, 3\)"):
        small_decoder().layers(torch.randn(1, 10, 3), torch.randn(1, APP))


def test_turntable_rotations_are_even_steps_about_y():
    Rs = turntable_rotations(4)
    assert Rs.shape == (4, 3, 3)
    assert torch.allclose(Rs[0], torch.eye(3))
    assert torch.allclose(Rs @ Rs.transpose(-1, -2), torch.eye(3).expand(4, 3, 3), atol=1e-6)
    # a quarter turn about y: camera x goes to -z (y-rotation by +90 deg: x -> (cos, 0, -sin))
    assert torch.allclose(Rs[1] @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)
    assert torch.allclose(Rs[1] @ Rs[1], Rs[2], atol=1e-6)
    with pytest.raises(ValueError):
        turntable_rotations(0)


def test_pose_head_normalisation_round_trip_and_root():
    head = PoseHead(POINTS, hidden=(16,), dropout=0.0)
    assert not bool(head.has_statistics)
    mean = torch.randn(21, 3)
    std = torch.rand(21, 3) + 0.5
    std[0] = 0.0  # root: no spread, floored to min_std_mm
    head.set_statistics(mean, std)
    assert bool(head.has_statistics) and torch.allclose(head.std[0], torch.ones(3))
    joints = torch.randn(4, 21, 3) * 30
    assert torch.allclose(head.denormalize(head.normalize(joints)), joints, atol=1e-4)
    out = head.to_joints(head(torch.randn(4, POINTS, 3)))
    assert out.shape == (4, 21, 3) and torch.equal(out[:, 0], torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"\(21, 3\)"):
        head.set_statistics(torch.zeros(20, 3), torch.ones(20, 3))
    with pytest.raises(ValueError, match="NaN"):
        head.set_statistics(torch.full((21, 3), math.nan), torch.ones(21, 3))


def test_pose_statistics_hand_computed():
    joints = torch.zeros(3, 21, 3)
    joints[:, 0] = torch.tensor([100.0, 0.0, 500.0])  # roots differ from zero: must be removed
    joints[0, 5] = joints[0, 0] + torch.tensor([10.0, 0.0, 0.0])
    joints[1, 5] = joints[1, 0] + torch.tensor([30.0, 0.0, 0.0])
    joints[2, 5] = torch.tensor([math.nan, math.nan, math.nan])
    valid = torch.ones(3, 21, dtype=torch.bool)
    valid[2, 5] = False
    mean, std = pose_statistics(joints, valid)
    assert torch.allclose(mean[5], torch.tensor([20.0, 0.0, 0.0]))
    assert torch.allclose(std[5], torch.tensor([10.0, 0.0, 0.0]))
    assert torch.equal(mean[0], torch.zeros(3))
    valid[:, 7] = False
    with pytest.raises(ValueError, match=r"joints \[7\]"):
        pose_statistics(joints, valid)


def test_ssim_identity_and_constant_images():
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    a, b = 0.3, 0.7
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # variances are 0: the contrast term is 1
    got = ssim(torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b))
    assert got.item() == pytest.approx(expected, rel=1e-4)
    y = torch.rand(2, 3, 16, 16)
    assert torch.allclose(ssim(x, y), ssim(y, x), atol=1e-6)
    assert (ssim(x, y) < 0.5).all()
    with pytest.raises(ValueError, match="odd"):
        ssim(x, y, window_size=4)


def test_gradient_loss_ramp_against_constant():
    ramp = (torch.arange(8, dtype=torch.float32) * 0.1).expand(1, 1, 8, 8)
    flat = torch.full((1, 1, 8, 8), 0.4)
    # x-gradients differ by 0.1 everywhere, y-gradients agree: 0.5 * (0.1 + 0)
    assert gradient_loss(ramp, flat).item() == pytest.approx(0.05, rel=1e-5)
    assert gradient_loss(ramp, ramp + 0.3).item() == pytest.approx(0.0, abs=1e-6)


def test_reconstruction_loss_terms_add_up():
    pred, target = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    loss = ReconstructionLoss(l1_weight=2.0, structural="ssim", structural_weight=0.5)
    terms = loss(pred, target)
    l1 = (pred - target).abs().mean()
    assert terms["l1"].item() == pytest.approx(l1.item(), rel=1e-6)
    assert terms["ssim"].item() == pytest.approx(1 - ssim(pred, target).mean().item(), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(2 * l1.item() + 0.5 * terms["ssim"].item(), rel=1e-6)
    assert set(ReconstructionLoss(structural="gradient")(pred, target)) == {"l1", "gradient", "loss"}
    assert set(ReconstructionLoss(structural="none")(pred, target)) == {"l1", "loss"}
    assert torch.allclose(per_image_l1(pred, target).mean(), l1)
    with pytest.raises(ValueError, match="structural"):
        ReconstructionLoss(structural="lpips")


def test_perceptual_loss_from_user_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        ReconstructionLoss(perceptual_checkpoint=str(tmp_path / "missing.pth"))
    reference = ResNet18Features()
    # torchvision names the projection shortcut "downsample"; the shared BasicBlock calls it "shortcut".
    state = {k.replace(".shortcut.", ".downsample."): v for k, v in reference.state_dict().items()}
    assert "layer2.0.downsample.0.weight" in state
    state["layer3.0.conv1.weight"] = torch.zeros(1)  # later layers are ignored
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    loaded = load_resnet18_features(path)
    assert torch.equal(loaded.conv1.weight, reference.conv1.weight)
    assert torch.equal(loaded.layer2[0].shortcut[1].running_var, reference.layer2[0].shortcut[1].running_var)
    again = ResNet18Features()  # a module state dict with the old names (checkpoints of NVS runs) loads too
    again.load_state_dict({k: v for k, v in state.items() if not k.startswith("layer3")})
    assert torch.equal(again.layer2[0].shortcut[0].weight, reference.layer2[0].shortcut[0].weight)

    loss = ReconstructionLoss(
        structural="none", perceptual_checkpoint=str(path), perceptual_weight=2.0
    ).train()
    assert not any(p.requires_grad for p in loss.parameters())
    assert not loss.perceptual.features.training  # frozen BatchNorm statistics
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y = torch.rand(2, 3, 32, 32)
    assert loss(y, y)["perceptual"].item() == pytest.approx(0.0, abs=1e-7)
    terms = loss(x, y)
    assert terms["perceptual"] > 0
    assert terms["loss"].item() == pytest.approx(
        terms["l1"].item() + 2 * terms["perceptual"].item(), rel=1e-5
    )
    terms["loss"].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0

    del state["layer1.0.conv1.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="missing 1 keys"):
        PerceptualLoss(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="state dict"):
        PerceptualLoss(path)


def test_silhouette_target_thresholds_background_subtraction():
    from handssl.models.components.nvs_losses import silhouette_target

    background = torch.full((1, 3, 2, 2), 0.5)
    image = background.clone()
    image[0, 1, 0, 0] = 0.53  # one channel off by 0.03: foreground at 0.02, not at 0.05
    image[0, :, 1, 1] = 0.51  # 0.01 everywhere: background (sensor-noise level of a clean render)
    assert silhouette_target(image, background).tolist() == [[[[1.0, 0.0], [0.0, 0.0]]]]
    assert silhouette_target(image, background, threshold=0.05).sum() == 0
    assert silhouette_target(image, background, threshold=0.005).sum() == 2
    with pytest.raises(ValueError, match="threshold"):
        silhouette_target(image, background, threshold=-1)


def test_mask_normalisation_by_its_maximum():
    from handssl.models.components.nvs_losses import normalize_mask_max

    mask = torch.tensor([[[[0.1, 0.2], [0.05, 0.0]]], [[[0.5, 1.0], [0.25, 0.0]]]])
    out = normalize_mask_max(mask)
    assert torch.allclose(out[0], torch.tensor([[[0.5, 1.0], [0.25, 0.0]]]))
    assert torch.allclose(out[1], mask[1])
    decoder = NVSDecoder(32, 20, 8, latent_channels=8, widths=(16, 8), normalize_mask=True).eval()
    _, mask = decoder.layers(torch.randn(3, 20, 3), torch.randn(3, 8))
    assert torch.allclose(mask.flatten(1).amax(1), torch.ones(3))  # every rendering holds an opaque pixel
    assert not small_decoder().normalize_mask


def test_silhouette_bce_foreground_l1_and_iou_hand_computed():
    from handssl.models.components.nvs_losses import foreground_l1, mask_iou, silhouette_bce

    silhouette = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    target = torch.zeros(1, 3, 2, 2)
    prediction = torch.zeros(1, 3, 2, 2)
    prediction[0, :, 0, 0] = 0.3  # error on the one hand pixel
    prediction[0, :, 1, 1] = 0.9  # error on a background pixel: ignored
    assert foreground_l1(prediction, target, silhouette) == pytest.approx(0.3)
    empty = foreground_l1(prediction.requires_grad_(), target, torch.zeros_like(silhouette))
    assert empty == 0 and empty.requires_grad
    mask = torch.tensor([[[[0.8, 0.4], [0.4, 0.4]]]])
    expected = -(math.log(0.8) + 3 * math.log(0.6)) / 4
    assert silhouette_bce(mask, silhouette) == pytest.approx(expected, rel=1e-5)
    assert mask_iou(mask, silhouette).tolist() == [1.0]
    assert mask_iou(torch.full_like(mask, 0.9), silhouette).tolist() == [0.25]


def test_synthesis_loss_adds_the_silhouette_terms():
    from handssl.models.components.nvs_losses import SynthesisLoss

    torch.manual_seed(0)
    background = torch.rand(2, 3, 16, 16)
    target = background.clone()
    target[:, :, 4:10, 4:10] = torch.rand(2, 3, 6, 6) + 0.1
    composite, mask = torch.rand(2, 3, 16, 16), torch.rand(2, 1, 16, 16)
    loss = SynthesisLoss(structural="none", foreground_weight=2.0, silhouette_weight=3.0)
    terms = loss(composite, mask, target, background)
    assert terms["loss"] == pytest.approx(
        float(terms["l1"] + 2 * terms["foreground_l1"] + 3 * terms["silhouette"])
    )
    plain = SynthesisLoss(structural="none", foreground_weight=0.0, silhouette_weight=0.0)
    assert set(plain(composite, mask, target, background)) == {"l1", "loss"}
    with pytest.raises(ValueError, match="non-negative"):
        SynthesisLoss(silhouette_weight=-1.0)


def test_rotation_controls_tell_a_latent_that_rotates_from_a_blob():
    from handssl.models.components.nvs_losses import mean_colour_blob, rotation_controls

    g = torch.Generator().manual_seed(0)
    b = 4
    target = torch.rand(b, 3, 16, 16, generator=g)
    background = torch.rand(b, 3, 16, 16, generator=g)
    hand = torch.zeros(b, 1, 16, 16)
    hand[:, :, 4:12, 5:11] = 1.0
    angles = torch.linspace(0.3, 1.2, b)
    R = torch.zeros(b, 3, 3)
    R[:, 0, 0], R[:, 0, 2], R[:, 1, 1] = angles.cos(), angles.sin(), 1.0
    R[:, 2, 0], R[:, 2, 2] = -angles.sin(), angles.cos()

    def geometric(rotation):  # renders the target exactly under the true rotation, something else otherwise
        exact = torch.isclose(rotation, R, atol=1e-6).flatten(1).all(1).view(-1, 1, 1, 1)
        return {"image": torch.where(exact, target, target.flip(-1)), "mask": hand.clone()}

    good = rotation_controls(geometric, R, target, hand, background)
    assert good["synthesis_l1_hand"] < 1e-6 and good["mask_iou"] == 1.0
    assert good["identity_l1_hand"] > 0.1 and good["other_rotation_l1_hand"] > 0.1
    blob = mean_colour_blob(target, hand, background)
    assert "mean_latent_l1_hand" not in good
    appearance_only = {"image": blob, "mask": hand}  # a decoder that draws from the appearance vector alone
    blind = rotation_controls(
        lambda rotation: appearance_only, R, target, hand, background, lambda rotation: appearance_only
    )
    assert blind["synthesis_l1_hand"] == blind["identity_l1_hand"] == blind["other_rotation_l1_hand"]
    assert blind["mean_latent_l1_hand"] == blind["synthesis_l1_hand"]
    with_mean = rotation_controls(geometric, R, target, hand, background, lambda r: geometric(r.roll(1, 0)))
    assert with_mean["mean_latent_l1_hand"] > 0.1
    assert torch.allclose(blind["synthesis_l1_hand"], blind["blob_l1_hand"])
    assert torch.equal(blob * (1 - hand), background * (1 - hand))  # the blob leaves the background alone
    with pytest.raises(ValueError, match="at least 2"):
        rotation_controls(geometric, R[:1], target[:1], hand[:1], background[:1])


def test_latent_equivariance_zero_for_rotated_copies_and_blind_to_scale_and_shift():
    from handssl.models.components.nvs_losses import latent_equivariance

    torch.manual_seed(0)
    points = torch.randn(3, POINTS, 3)
    R = torch.stack([rotation_about_axis("y", a) for a in (0.3, 1.2, 2.5)])
    rotated = points @ R.transpose(-1, -2)
    assert float(latent_equivariance(points, rotated * 4.0 + 2.0, R)) < 1e-10
    # unrotated copies are not equivariant to a 0.3-2.5 rad turn; unrelated clouds score about 2
    assert float(latent_equivariance(points, points, R)) > 0.1
    assert 1.0 < float(latent_equivariance(points, torch.randn(3, POINTS, 3), R)) < 3.0
    # a collapsed latent (every point in one place) cannot reach 0
    collapsed = torch.zeros(3, POINTS, 3)
    assert float(latent_equivariance(collapsed, points, R)) > 0.5
    with pytest.raises(ValueError, match="differ"):
        latent_equivariance(points, points[:, :5], R)


def test_splat_points_peak_where_the_point_projects_with_its_depth():
    from handssl.models.components.nvs import splat_points

    corner = 8 / 9  # the centre of the last of 9 equal cells over [-1, 1], as a pixel's
    points = torch.tensor([[[0.0, 0.0, 0.7], [corner, -corner, -0.3]]], requires_grad=True)
    maps = splat_points(points, side=9, sigma=0.1)
    assert maps.shape == (1, 2, 9, 9)
    occupancy, depth = maps[0]
    assert float(occupancy[4, 4]) == pytest.approx(1.0, abs=1e-3)  # centre point: rows y, columns x
    assert float(occupancy[0, 8]) == pytest.approx(1.0, abs=1e-3)  # right (x), top (y) cell
    assert float(depth[4, 4]) == pytest.approx(0.7, abs=1e-2)
    assert float(depth[0, 8]) == pytest.approx(-0.3, abs=1e-2)
    maps[0, 0, 4, 5].backward()
    assert points.grad is not None and float(points.grad[0, 0, 0]) > 0  # moving right raises that cell
    with pytest.raises(ValueError, match="sigma"):
        splat_points(points, 9, sigma=0.0)


def test_opacity_column_weighs_the_splat_and_survives_rotation():
    from handssl.models.components.nvs import splat_points

    points = torch.tensor([[[0.0, 0.0, 0.5, 1.0], [0.5, 0.5, 0.2, 0.0]]])
    occupancy = splat_points(points, side=8, sigma=0.1)[0, 0]
    opaque_only = splat_points(points[:, :1, :3], side=8, sigma=0.1)[0, 0]
    assert torch.allclose(occupancy, opaque_only)  # the transparent point draws nothing
    turned = rotate_points(points, rotation_about_axis("y", torch.tensor(0.7)))
    assert turned.shape == (1, 2, 4)
    assert torch.equal(turned[..., 3], points[..., 3])
    assert torch.allclose(
        turned[..., :3], rotate_points(points[..., :3], rotation_about_axis("y", torch.tensor(0.7)))
    )
    with pytest.raises(ValueError, match="opacities"):
        rotate_points(torch.zeros(1, 2, 5), torch.eye(3))


def test_splat_decoder_renders_a_turned_latent_differently_even_with_a_blind_linear_layer():
    torch.manual_seed(0)
    decoder = NVSDecoder(SIZE, POINTS, APP, latent_channels=8, widths=(16, 8), dropout=0.0, splat=True).eval()
    torch.nn.init.zeros_(decoder.from_latent[0].weight)  # the linear path sees nothing
    points, appearance = torch.rand(1, POINTS, 3) - 0.5, torch.rand(1, APP)
    turned = rotate_points(points, rotation_about_axis("y", torch.tensor(1.2)))
    with torch.no_grad():
        a, b = decoder.layers(points, appearance)[0], decoder.layers(turned, appearance)[0]
    assert float((a - b).abs().max()) > 1e-3


def test_mask_from_points_draws_the_hand_only_where_the_points_project():
    torch.manual_seed(0)
    decoder = NVSDecoder(
        SIZE, POINTS, APP, latent_channels=8, widths=(16, 8), dropout=0.0, splat=True, mask_from_points=True
    ).eval()
    torch.nn.init.constant_(decoder.to_output.bias, 20.0)  # the decoder alone would make every pixel opaque
    points = torch.zeros(1, POINTS, 3)
    points[..., 0] = -0.5  # every point projects onto the left half, at x = -0.5
    points.requires_grad_(True)
    _, mask = decoder.layers(points, torch.rand(1, APP))
    column = int((-0.5 + 1) / 2 * SIZE)
    assert float(mask[0, 0, SIZE // 2, column]) > 0.9
    assert float(mask[0, 0, :, SIZE - 4 :].max()) < 0.01  # no points, no hand, whatever the decoder says
    # drawing the hand at a pixel to the right of the points pulls them right
    mask[0, 0, SIZE // 2, column + 2].backward()
    assert points.grad is not None and float(points.grad[..., 0].sum()) > 0
    with pytest.raises(ValueError, match="splat"):
        NVSDecoder(SIZE, POINTS, APP, mask_from_points=True)
