"""Tests of handssl.viz: each plot returns a Figure with the expected axes and artists."""

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from handssl import viz
from handssl.geometry import look_at_rotation
from handssl.skeleton import FINGER_COLORS, joint_color


def hand_2d() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.uniform(10, 50, size=(21, 2))


def hand_3d() -> np.ndarray:
    rng = np.random.default_rng(2)
    return rng.normal(0, 40, size=(21, 3)) + np.array([0.0, 0.0, 400.0])


def test_draw_skeleton_2d_draws_20_finger_coloured_bones():
    ax = viz.new_figure().add_subplot()
    lines = viz.draw_skeleton_2d(ax, hand_2d())
    assert len(lines) == 20 and len(ax.lines) == 20
    assert len(ax.collections) == 1  # one scatter of joints
    # Bone (0, 1) is the first thumb bone, drawn in the thumb colour; bone (19, 20) in the pinky colour.
    assert lines[0].get_color() == FINGER_COLORS[0] == joint_color(1)
    assert lines[-1].get_color() == FINGER_COLORS[4]


def test_draw_skeleton_2d_skips_bones_of_invalid_joints():
    ax = viz.new_figure().add_subplot()
    valid = np.ones(21, dtype=bool)
    valid[20] = False  # pinky tip: one bone
    joints = hand_2d()
    joints[8] = np.nan  # index tip: one bone
    assert len(viz.draw_skeleton_2d(ax, joints, valid=valid, color="k", label="gt")) == 18
    assert ax.lines[0].get_label() == "gt"


def test_plot_skeleton_2d_with_tensor_image_and_others():
    image = torch.rand(3, 64, 48)
    fig = viz.plot_skeleton_2d(image, torch.tensor(hand_2d()), others={"gt": hand_2d() + 1.0}, title="t")
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert len(ax.images) == 1 and ax.images[0].get_array().shape == (64, 48, 3)
    assert len(ax.lines) == 40
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["prediction", "gt"]
    assert ax.get_title() == "t"


def test_plot_skeleton_2d_into_given_axes_with_uint8_image():
    fig = viz.new_figure()
    ax = fig.add_subplot(1, 2, 2)
    assert viz.plot_skeleton_2d(np.zeros((30, 40, 3), np.uint8), hand_2d(), ax=ax) is fig
    assert len(ax.lines) == 20


def test_image_to_numpy_conversions_and_errors():
    assert viz.image_to_numpy(np.full((4, 5, 3), 255, np.uint8)).max() == pytest.approx(1.0)
    assert viz.image_to_numpy(torch.zeros(1, 4, 5)).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="normalisation"):
        viz.image_to_numpy(torch.full((3, 4, 5), -2.0))
    with pytest.raises(ValueError, match="channels"):
        viz.image_to_numpy(np.zeros((4, 5, 7)))


def test_plot_skeleton_3d_pred_vs_gt_with_equal_axes():
    gt = hand_3d()
    fig = viz.plot_skeleton_3d([gt, gt + 5.0], labels=["gt", "pred"])
    (ax,) = fig.axes
    assert len(ax.lines) == 40
    spans = [np.diff(ax.get_xlim3d())[0], np.diff(ax.get_ylim3d())[0], np.diff(ax.get_zlim3d())[0]]
    assert spans == pytest.approx([spans[0]] * 3)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["gt", "pred"]
    with pytest.raises(ValueError, match="labels"):
        viz.plot_skeleton_3d(gt, labels=["a", "b"])


def test_plot_camera_rig_draws_8_edges_per_camera_plus_hand():
    joints = hand_3d()
    centre = joints.mean(0)
    K = np.array([[500.0, 0, 63.5], [0, 500.0, 63.5], [0, 0, 1]])
    Ks, Rs, ts = [], [], []
    for angle in (0.0, 1.5, 3.0):
        position = centre + 300 * np.array([np.sin(angle), 0.0, -np.cos(angle)])
        R = look_at_rotation(centre - position)
        Ks.append(K)
        Rs.append(R)
        ts.append(-R @ position)
    fig = viz.plot_camera_rig(np.stack(Ks), np.stack(Rs), np.stack(ts), joints_world=joints, size_mm=50.0)
    (ax,) = fig.axes
    assert len(ax.lines) == 3 * 8 + 20
    assert [t.get_text() for t in ax.texts] == ["0", "1", "2"]
    # The first camera sits 300 mm in front of the hand along -z; its centre is the apex of its pyramid.
    apex = ax.lines[0].get_data_3d()
    assert apex[0][0] == pytest.approx(centre[0]) and apex[1][0] == pytest.approx(centre[2] - 300.0)


def test_image_grid_tiles_pixels_like_make_grid():
    images = torch.zeros(5, 3, 4, 6)
    for i in range(5):
        images[i, 0] = (i + 1) / 10  # red channel identifies the image
    grid = viz.image_grid(images, nrow=3, padding=2, pad_value=1.0)
    assert grid.dtype == np.uint8
    assert grid.shape == (2 * (4 + 2) + 2, 3 * (6 + 2) + 2, 3)
    for i in range(5):
        top, left = 2 + (i // 3) * 6, 2 + (i % 3) * 8
        assert (grid[top : top + 4, left : left + 6, 0] == round((i + 1) / 10 * 255)).all()
        assert (grid[top : top + 4, left : left + 6, 1] == 0).all()
    assert (grid[0] == 255).all()  # border padding
    assert (grid[8:14, 18:24] == 255).all()  # the empty sixth cell stays padding


def test_image_grid_accepts_numpy_lists_and_rejects_mixed_sizes():
    grid = viz.image_grid([np.zeros((4, 4, 3), np.uint8)] * 2, nrow=8, padding=0)
    assert grid.shape == (4, 8, 3)
    with pytest.raises(ValueError, match="same size"):
        viz.image_grid([np.zeros((4, 4, 3)), np.zeros((5, 4, 3))])


def test_plot_image_grid_one_axes_per_image():
    fig = viz.plot_image_grid(torch.rand(5, 3, 8, 8), titles=list("abcde"), ncols=2)
    assert len(fig.axes) == 5
    assert [ax.get_title() for ax in fig.axes] == list("abcde")


def test_plot_pck_curves_reports_auc_in_legend():
    thresholds = np.linspace(20.0, 50.0, 4)
    fig = viz.plot_pck_curves(
        {
            "a": (thresholds, np.array([0.5, 0.5, 1.0, 1.0])),  # trapezoid: 22.5 / 30 = 0.75
            "b": {"thresholds": torch.tensor(thresholds), "curve": torch.ones(4)},
        }
    )
    (ax,) = fig.axes
    assert len(ax.lines) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a (AUC 0.750)", "b (AUC 1.000)"]


def test_plot_learning_curves_one_colour_per_name_one_line_per_run():
    runs = {
        "semi": [[(3.0, 80.0), (6.0, 70.0)], [(3.0, 82.0), (6.0, 71.0), (9.0, 65.0)]],
        "pretrained": [[(33.0, 60.0)], []],  # a run without points draws nothing
    }
    fig = viz.plot_learning_curves(runs, ylabel="val N-MPJPE (mm)", title="k=1")
    (ax,) = fig.axes
    assert len(ax.lines) == 3
    assert ax.lines[0].get_color() == ax.lines[1].get_color() != ax.lines[2].get_color()
    assert list(ax.lines[1].get_ydata()) == [82.0, 71.0, 65.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["semi (2 runs)", "pretrained (1 run)"]
    assert ax.get_ylabel() == "val N-MPJPE (mm)" and ax.get_title() == "k=1"


def test_confidence_plots():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(size=200)
    fig = viz.plot_confidence_histogram(torch.tensor(confidence), threshold=0.75)
    (ax,) = fig.axes
    assert len(ax.patches) == 50
    kept = (confidence >= 0.75).mean()
    assert f"kept {kept:.0%}" in ax.get_legend().get_texts()[0].get_text()
    cost = viz.plot_confidence_histogram(torch.tensor(confidence), threshold=0.2, keep="below")
    kept_cost = (confidence <= 0.2).mean()
    assert f"kept {kept_cost:.0%}" in cost.axes[0].get_legend().get_texts()[0].get_text()
    with pytest.raises(ValueError, match="keep"):
        viz.plot_confidence_histogram(confidence, keep="sideways")
    fig = viz.plot_confidence_vs_error(confidence, 10 * (1 - confidence), bins=5)
    (ax,) = fig.axes
    means = ax.lines[0].get_ydata()
    assert len(means) == 5 and np.all(np.diff(means) < 0)  # error falls as confidence rises
    with pytest.raises(ValueError, match="errors"):
        viz.plot_confidence_vs_error(confidence, confidence[:10])


def test_plot_pseudo_label_correction_draws_three_skeletons_and_arrows():
    before = hand_2d()
    after = before.copy()
    after[[3, 7]] += 5.0  # two corrected joints
    fig = viz.plot_pseudo_label_correction(np.zeros((60, 60, 3)), before, after, gt_2d=after)
    (ax,) = fig.axes
    assert len(ax.lines) == 60
    assert len(ax.texts) == 2  # one arrow annotation per moved joint
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "before",
        "after correction",
        "ground truth",
    ]


def test_figure_to_array_and_png(tmp_path):
    fig = viz.new_figure(3.0, 2.0, dpi=50)
    fig.add_subplot().plot([0, 1], [0, 1])
    array = viz.figure_to_array(fig)
    assert array.shape == (100, 150, 3) and array.dtype == np.uint8
    assert array.min() < 255  # something was drawn on the white background
    path = tmp_path / "skeleton.png"
    viz.plot_skeleton_2d(np.zeros((20, 20, 3)), hand_2d() / 3).savefig(path)
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_png_is_a_small_palette_png_at_the_asked_dpi():
    import io

    from PIL import Image

    y, x = np.mgrid[0:32, 0:32] / 31.0
    smooth = np.stack([np.stack([x, y, (x + y + k) / (2 + k)], axis=-1) for k in range(4)])
    noisy = np.clip(
        smooth + np.random.default_rng(3).normal(0, 0.05, smooth.shape), 0, 1
    )  # like real-style renders
    fig = viz.plot_image_grid(noisy, ncols=4, size_in=2.0)  # 8 x 2 inches
    data = viz.figure_png(fig, dpi=50)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "P" and len(image.getcolors(256)) <= 256
    assert 300 <= image.width <= 410 and 50 <= image.height <= 110  # 8 x 2 inches at 50 dpi, trimmed
    rgb = Image.open(io.BytesIO(viz.figure_png(fig, dpi=50, colors=None)))
    assert rgb.mode == "RGB" and rgb.size == image.size
    assert len(data) < 0.5 * len(viz.figure_png(fig, dpi=50, colors=None))
    # The palette keeps the picture: pixels within a few levels of the full-colour ones on average (these
    # spread-out colours are a hard case: about 10; notebook figures about 3).
    error = np.abs(np.asarray(image.convert("RGB"), dtype=float) - np.asarray(rgb, dtype=float)).mean()
    assert error < 16.0
    with pytest.raises(ValueError, match="colors"):
        viz.figure_png(fig, colors=1)
