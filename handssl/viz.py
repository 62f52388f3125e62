"""Every plot handssl draws: skeleton overlays, 3D skeletons, camera rigs, image grids, PCK curves.

Notebooks, wandb callbacks and scripts all import from here. Functions that make a plot return a
``matplotlib.figure.Figure`` built without pyplot (no global figure state, safe under the Agg backend and in
worker processes); Jupyter displays a returned figure as usual. Pass ``ax=`` to draw into an existing axes
instead; the function then returns that axes' figure. ``figure_to_array`` turns a figure into an RGB array
for loggers, ``figure_png`` into compact PNG bytes for notebook outputs.

Conventions: 2D joints in pixels with pixel centres at integer coordinates (``imshow``'s default), 3D joints
in millimetres in OpenCV camera or world coordinates. 3D views show ``x`` to the right, ``z`` (depth) into
the screen and ``-y`` up, so a hand seen by an OpenCV camera looks the way it does in the image. Skeleton
colours come from :func:`handssl.skeleton.joint_color` (one colour per finger, wrist grey).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from mpl_toolkits.mplot3d import Axes3D

from handssl.geometry import camera_to_world, unproject
from handssl.metrics.functional import auc_from_curve
from handssl.skeleton import BONES, NUM_JOINTS, joint_color

if TYPE_CHECKING:
    from matplotlib.typing import LineStyleType

__all__ = [
    "draw_skeleton_2d",
    "draw_skeleton_3d",
    "figure_png",
    "figure_to_array",
    "image_grid",
    "image_to_numpy",
    "new_figure",
    "plot_camera_rig",
    "plot_confidence_histogram",
    "plot_confidence_vs_error",
    "plot_image_grid",
    "plot_learning_curves",
    "plot_pck_curves",
    "plot_pseudo_label_correction",
    "plot_skeleton_2d",
    "plot_skeleton_3d",
]

# Single colours for extra skeletons (ground truth, other models) drawn next to a finger-coloured one.
_OVERLAY_COLORS: tuple[str, ...] = ("#ffffff", "#000000", "#00e5ff", "#ffe119", "#f032e6", "#aaffc3")
_LINESTYLES: tuple[Literal["-", "--", ":", "-."], ...] = ("-", "--", ":", "-.")
_NEUTRAL = "#404040"


# ----------------------------------------------------------------------------------------------- helpers
def _numpy(x: Any, dtype: Any = np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return x.numpy().astype(dtype) if dtype is not None else x.numpy()
    return np.asarray(x, dtype=dtype)


def _joints(joints: Any, dim: int, where: str) -> np.ndarray:
    array = _numpy(joints)
    if array.shape != (NUM_JOINTS, dim):
        raise ValueError(f"{where}: expected joints of shape ({NUM_JOINTS}, {dim}), got {array.shape}")
    return array


def _valid(valid: Any, joints: np.ndarray) -> np.ndarray:
    """Valid mask: the given one (``(21,)`` bool) and finite coordinates."""
    finite = np.isfinite(joints).all(-1)
    if valid is None:
        return finite
    mask = _numpy(valid, dtype=bool).reshape(-1)
    if mask.shape != (NUM_JOINTS,):
        raise ValueError(f"valid must have shape ({NUM_JOINTS},), got {mask.shape}")
    return mask & finite


def new_figure(
    width_in: float = 5.0, height_in: float = 5.0, dpi: int = 100, constrained: bool = True
) -> Figure:
    """A pyplot-free figure with an Agg canvas, so it renders anywhere.

    Args:
        width_in: Width in inches.
        height_in: Height in inches.
        dpi: Dots per inch.
        constrained: Use constrained layout so labels are not clipped (it clips 3D axis labels instead, so
            the 3D plots turn it off).
    """
    figure = Figure(figsize=(width_in, height_in), dpi=dpi, layout="constrained" if constrained else None)
    FigureCanvasAgg(figure)
    return figure


def _axes(ax: Axes | None, projection: str | None = None, size_in: tuple[float, float] = (5.0, 5.0)) -> Axes:
    if ax is not None:
        return ax
    return new_figure(*size_in, constrained=projection != "3d").add_subplot(projection=projection)


def _axes_3d(ax: Axes | None, where: str, size_in: tuple[float, float] = (5.0, 5.0)) -> Axes3D:
    """``ax`` (which must be a ``projection="3d"`` axes) or a new figure's 3D axes."""
    ax = _axes(ax, projection="3d", size_in=size_in)
    if not isinstance(ax, Axes3D):
        raise ValueError(f"{where}: ax must be a projection='3d' axes, got {type(ax).__name__}")
    return ax


def _figure(ax: Axes) -> Figure:
    figure = ax.get_figure()
    while figure is not None and not isinstance(figure, Figure):  # a SubFigure
        figure = figure.get_figure()
    if figure is None:
        raise ValueError("the axes belong to no figure")
    return figure


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure to an RGB image.

    Args:
        fig: Any matplotlib figure (one without an Agg canvas gets one).

    Returns:
        ``uint8`` array ``(H, W, 3)`` with ``H, W`` = figure size in inches times its dpi.
    """
    canvas = fig.canvas
    if not isinstance(canvas, FigureCanvasAgg):
        canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def figure_png(fig: Figure, dpi: float = 72.0, colors: int | None = 256) -> bytes:
    """A figure as compact PNG bytes, e.g. for a notebook output that is committed with the notebook.

    Drawn at ``dpi`` and trimmed as Jupyter shows figures (``bbox_inches="tight"``), then, with ``colors``,
    reduced to a palette of that many colours: plots and rendered images keep their look at a third of the
    bytes of an RGBA PNG. Display it with ``IPython.display.Image(figure_png(fig))``.

    Args:
        fig: Any matplotlib figure (one without an Agg canvas gets one).
        dpi: Dots per inch (72: Jupyter's classic inline size).
        colors: Size of the palette (2-256), or ``None`` to keep full RGB.

    Returns:
        The PNG file's bytes.
    """
    from io import BytesIO

    from PIL import Image

    if colors is not None and not 2 <= colors <= 256:
        raise ValueError(f"figure_png: colors must be between 2 and 256 or None, got {colors}")
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    drawn = BytesIO()
    fig.savefig(drawn, format="png", dpi=dpi, bbox_inches="tight", facecolor=fig.get_facecolor())
    drawn.seek(0)
    image = Image.open(drawn).convert("RGB")
    if colors is not None:
        image = image.quantize(colors=colors, method=Image.Quantize.FASTOCTREE)
    out = BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def image_to_numpy(image: Any) -> np.ndarray:
    """Convert an image to ``float32 (H, W, 3)`` in ``[0, 1]`` for ``imshow``.

    Args:
        image: A tensor ``C x H x W`` (``C`` = 1 or 3) in ``[0, 1]`` (or ``uint8``), or a numpy ``H x W x 3``,
            ``H x W`` or ``C x H x W`` array, ``uint8`` or float in ``[0, 1]``.

    Raises:
        ValueError: Unsupported shape, or a float image far outside ``[0, 1]`` (e.g. still mean/std
            normalised; undo the normalisation first).
    """
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3):
            array = array.transpose(1, 2, 0)
    else:
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
            array = array.transpose(1, 2, 0)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise ValueError(
            f"image must be C x H x W (tensor) or H x W x 3 (numpy) with 1 or 3 channels, got {np.shape(image)}"
        )
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    array = array.astype(np.float32)
    if array.size and (np.nanmin(array) < -0.05 or np.nanmax(array) > 1.05):
        raise ValueError(
            f"float image values span [{np.nanmin(array):.2f}, {np.nanmax(array):.2f}], expected [0, 1]; "
            "undo any mean/std normalisation before plotting"
        )
    return np.clip(array, 0.0, 1.0)


def _legend_handle(color: str | None, linestyle: LineStyleType, label: str) -> Line2D:
    return Line2D([], [], color=color or _NEUTRAL, linestyle=linestyle, marker="o", markersize=4, label=label)


def _plot_space(points: np.ndarray) -> np.ndarray:
    """OpenCV ``(x, y, z)`` to the plotted ``(x, z, -y)``: depth into the screen, image-up up."""
    return np.stack([points[..., 0], points[..., 2], -points[..., 1]], axis=-1)


def _set_equal_3d(ax: Axes3D, plotted_points: np.ndarray) -> None:
    points = plotted_points[np.isfinite(plotted_points).all(-1)]
    if not len(points):
        return
    low, high = points.min(0), points.max(0)
    centre, radius = (low + high) / 2, max(float((high - low).max()) / 2 * 1.1, 1.0)
    ax.set_xlim(centre[0] - radius, centre[0] + radius)
    ax.set_ylim(centre[1] - radius, centre[1] + radius)
    ax.set_zlim(centre[2] - radius, centre[2] + radius)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("z (mm)")
    ax.set_zlabel("-y (mm)")


# -------------------------------------------------------------------------------------------- skeletons
def draw_skeleton_2d(
    ax: Axes,
    joints2d: Any,
    valid: Any = None,
    color: str | None = None,
    linestyle: str = "-",
    label: str | None = None,
) -> list[Line2D]:
    """Draw one 21-joint skeleton on 2D axes: a line per bone with both ends valid, and a dot per joint.

    Args:
        ax: Matplotlib axes (image coordinates: ``x`` right, ``y`` down once an image is shown).
        joints2d: ``(21, 2)`` pixel coordinates (tensor or array); NaN joints are skipped.
        valid: Optional ``(21,)`` bool mask of joints to draw.
        color: One colour for the whole skeleton; ``None`` colours each finger (``joint_color``).
        linestyle: Matplotlib line style of the bones.
        label: Legend label, attached to the first bone line.

    Returns:
        The bone lines drawn (20 for a fully valid skeleton).
    """
    joints = _joints(joints2d, 2, "draw_skeleton_2d")
    mask = _valid(valid, joints)
    lines: list[Line2D] = []
    for parent, child in BONES:
        if not (mask[parent] and mask[child]):
            continue
        (line,) = ax.plot(
            joints[[parent, child], 0],
            joints[[parent, child], 1],
            color=color or joint_color(child),
            linestyle=linestyle,
            linewidth=2.0,
            solid_capstyle="round",
            label=label if not lines else None,
        )
        lines.append(line)
    if mask.any():
        colors = [color or joint_color(int(j)) for j in np.flatnonzero(mask)]
        ax.scatter(joints[mask, 0], joints[mask, 1], c=colors, s=12, zorder=3, edgecolors="none")
    return lines


def plot_skeleton_2d(
    image: Any,
    joints2d: Any,
    valid: Any = None,
    others: Mapping[str, Any] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    label: str | None = None,
) -> Figure:
    """A skeleton (finger colours) over an image, optionally with other skeletons (single colours, dashed).

    Args:
        image: Tensor ``C x H x W`` in ``[0, 1]`` or numpy ``H x W x 3`` (``uint8`` or float in ``[0, 1]``).
        joints2d: ``(21, 2)`` pixels of the main skeleton.
        valid: Optional ``(21,)`` bool mask for the main skeleton.
        others: Optional ``{label: (21, 2) joints}`` to overlay, e.g. ``{"ground truth": gt_2d}``.
        ax: Axes to draw into; a new figure when omitted.
        title: Axes title.
        label: Legend label of the main skeleton (a legend appears when there are ``others``).

    Returns:
        The figure.
    """
    ax = _axes(ax)
    picture = image_to_numpy(image)
    ax.imshow(picture)
    handles = []
    draw_skeleton_2d(ax, joints2d, valid)
    if label or others:
        handles.append(_legend_handle(None, "-", label or "prediction"))
    for index, (name, joints) in enumerate((others or {}).items()):
        color = _OVERLAY_COLORS[index % len(_OVERLAY_COLORS)]
        draw_skeleton_2d(ax, joints, color=color, linestyle="--")
        handles.append(_legend_handle(color, "--", name))
    height, width = picture.shape[:2]
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.7, facecolor="#808080")
    if title:
        ax.set_title(title)
    return _figure(ax)


def draw_skeleton_3d(
    ax: Axes,
    joints3d: Any,
    valid: Any = None,
    color: str | None = None,
    linestyle: str = "-",
    label: str | None = None,
) -> list[Any]:
    """Draw one 21-joint skeleton on 3D axes (plotted as ``x, z, -y``; see the module docstring).

    Args:
        ax: A ``projection="3d"`` axes.
        joints3d: ``(21, 3)`` joints in mm.
        valid: Optional ``(21,)`` bool mask.
        color: One colour for the whole skeleton; ``None`` colours each finger.
        linestyle: Line style of the bones.
        label: Legend label, attached to the first bone line.

    Returns:
        The bone lines drawn (20 for a fully valid skeleton).
    """
    ax3d = _axes_3d(ax, "draw_skeleton_3d")
    joints = _joints(joints3d, 3, "draw_skeleton_3d")
    mask = _valid(valid, joints)
    shown = _plot_space(joints)
    lines: list[Any] = []
    for parent, child in BONES:
        if not (mask[parent] and mask[child]):
            continue
        segment = shown[[parent, child]]
        (line,) = ax3d.plot(
            segment[:, 0],
            segment[:, 1],
            segment[:, 2],
            color=color or joint_color(child),
            linestyle=linestyle,
            linewidth=2.0,
            label=label if not lines else None,
        )
        lines.append(line)
    if mask.any():
        colors = [color or joint_color(int(j)) for j in np.flatnonzero(mask)]
        ax3d.scatter(shown[mask, 0], shown[mask, 1], shown[mask, 2], c=colors, s=10, depthshade=False)
    return lines


def plot_skeleton_3d(
    joints3d: Any,
    ax: Axes | None = None,
    labels: Sequence[str] | None = None,
    valid: Any = None,
    title: str | None = None,
) -> Figure:
    """One or more 3D skeletons (e.g. ground truth and prediction) with equal axis scaling.

    The first skeleton is drawn solid, the next ones dashed, dotted, ...; all in finger colours.

    Args:
        joints3d: A ``(21, 3)`` pose, a ``(N, 21, 3)`` stack or a list of ``(21, 3)`` poses, in mm.
        ax: A ``projection="3d"`` axes; a new figure when omitted.
        labels: Optional legend label per skeleton.
        valid: Optional ``(21,)`` mask shared by all skeletons, or one mask per skeleton.
        title: Axes title.

    Returns:
        The figure.
    """
    poses = _pose_list(joints3d)
    if labels is not None and len(labels) != len(poses):
        raise ValueError(f"plot_skeleton_3d: {len(labels)} labels for {len(poses)} skeletons")
    masks = _mask_list(valid, len(poses))
    ax3d = _axes_3d(ax, "plot_skeleton_3d")
    handles = []
    for index, (pose, mask) in enumerate(zip(poses, masks)):
        linestyle = _LINESTYLES[index % len(_LINESTYLES)]
        draw_skeleton_3d(ax3d, pose, mask, linestyle=linestyle)
        if labels is not None:
            handles.append(_legend_handle(None, linestyle, labels[index]))
    _set_equal_3d(ax3d, _plot_space(np.stack(poses)).reshape(-1, 3))
    if handles:
        ax3d.legend(handles=handles, loc="upper right", fontsize=8)
    if title:
        ax3d.set_title(title)
    return _figure(ax3d)


def _pose_list(joints3d: Any) -> list[np.ndarray]:
    if isinstance(joints3d, (list, tuple)):
        poses = [_joints(p, 3, "plot_skeleton_3d") for p in joints3d]
    else:
        array = _numpy(joints3d)
        poses = [array] if array.ndim == 2 else list(array)
        poses = [_joints(p, 3, "plot_skeleton_3d") for p in poses]
    if not poses:
        raise ValueError("plot_skeleton_3d: no skeleton given")
    return poses


def _mask_list(valid: Any, count: int) -> list[Any]:
    if valid is None:
        return [None] * count
    if isinstance(valid, (list, tuple)):
        if len(valid) != count:
            raise ValueError(f"{len(valid)} valid masks for {count} skeletons")
        return list(valid)
    mask = _numpy(valid, dtype=bool)
    return [mask] * count if mask.ndim == 1 else list(mask)


def plot_camera_rig(
    K: Any,
    R: Any,
    t: Any,
    joints_world: Any = None,
    ax: Axes | None = None,
    size_mm: float = 100.0,
    image_size: tuple[int, int] | None = None,
    title: str | None = None,
) -> Figure:
    """Camera frustums in 3D (world frame, OpenCV ``x_cam = R x_world + t``), with an optional hand.

    Each camera is drawn as a pyramid from its centre to the image corners unprojected at depth
    ``size_mm``; the thick edge is the image's top row, and the camera index is written at its centre.

    Args:
        K: ``(V, 3, 3)`` or ``(3, 3)`` intrinsics.
        R: ``(V, 3, 3)`` or ``(3, 3)`` world-to-camera rotations.
        t: ``(V, 3)`` or ``(3,)`` world-to-camera translations in mm.
        joints_world: Optional ``(21, 3)`` world joints in mm (or a list of poses) to draw in the rig.
        ax: A ``projection="3d"`` axes; a new figure when omitted.
        size_mm: Depth of the drawn frustums.
        image_size: ``(width, height)`` in pixels; by default ``(2 cx + 1, 2 cy + 1)`` from each ``K``.
        title: Axes title.

    Returns:
        The figure.
    """
    K_all, R_all, t_all = (_numpy(x) for x in (K, R, t))
    K_all, R_all, t_all = K_all.reshape(-1, 3, 3), R_all.reshape(-1, 3, 3), t_all.reshape(-1, 3)
    if not len(K_all) == len(R_all) == len(t_all):
        raise ValueError(
            f"plot_camera_rig: K, R and t must describe the same cameras, got {len(K_all)}, {len(R_all)}, {len(t_all)}"
        )
    ax3d = _axes_3d(ax, "plot_camera_rig", size_in=(6.0, 6.0))
    shown_points = []
    for index, (k, r, tt) in enumerate(zip(K_all, R_all, t_all)):
        width, height = image_size if image_size is not None else (2 * k[0, 2] + 1, 2 * k[1, 2] + 1)
        corners_px = np.array(
            [[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], dtype=np.float64
        )
        corners_cam = unproject(corners_px, np.full(4, float(size_mm)), k)
        corners = camera_to_world(np.vstack([np.zeros((1, 3)), corners_cam]), r, tt)
        shown = _plot_space(corners)
        shown_points.append(shown)
        color = f"C{index % 10}"
        for corner in range(1, 5):
            ax3d.plot(*shown[[0, corner]].T, color=color, linewidth=1.0)
        for corner in range(1, 5):
            following = corner % 4 + 1
            ax3d.plot(*shown[[corner, following]].T, color=color, linewidth=2.5 if corner == 1 else 1.0)
        ax3d.text(*shown[0], str(index), color=color, fontsize=8)
    if joints_world is not None:
        poses = _pose_list(joints_world)
        for pose in poses:
            draw_skeleton_3d(ax3d, pose)
            shown_points.append(_plot_space(pose))
    _set_equal_3d(ax3d, np.concatenate(shown_points))
    if title:
        ax3d.set_title(title)
    return _figure(ax3d)


# ---------------------------------------------------------------------------------------------- grids
def _image_stack(images: Any) -> np.ndarray:
    """Images to ``float32 (N, H, W, 3)`` in ``[0, 1]``."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must be an (N, C, H, W) tensor, got shape {tuple(images.shape)}")
        return (
            np.stack([image_to_numpy(image) for image in images]) if len(images) else np.zeros((0, 1, 1, 3))
        )
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return (
            np.stack([image_to_numpy(image) for image in images]) if len(images) else np.zeros((0, 1, 1, 3))
        )
    converted = [image_to_numpy(image) for image in images]
    if converted and len({c.shape for c in converted}) > 1:
        raise ValueError(f"images must all have the same size, got {sorted({c.shape for c in converted})}")
    return np.stack(converted) if converted else np.zeros((0, 1, 1, 3))


def image_grid(images: Any, nrow: int = 8, padding: int = 2, pad_value: float = 0.0) -> np.ndarray:
    """Tile images into one ``uint8 (H, W, 3)`` array, row-major, like ``torchvision.utils.make_grid``.

    Image ``i`` goes to row ``i // nrow``, column ``i % nrow``; its top-left pixel lands at
    ``(padding + row * (h + padding), padding + column * (w + padding))``.

    Args:
        images: ``(N, C, H, W)`` tensor in ``[0, 1]``, ``(N, H, W, 3)`` array, or a list of same-size images.
        nrow: Images per row.
        padding: Pixels between images and around the border.
        pad_value: Grey level of the padding, in ``[0, 1]``.

    Returns:
        The grid image.
    """
    if nrow < 1 or padding < 0:
        raise ValueError(f"image_grid: need nrow >= 1 and padding >= 0, got nrow={nrow}, padding={padding}")
    stack = _image_stack(images)
    if not len(stack):
        raise ValueError("image_grid: no images given")
    count, height, width = stack.shape[:3]
    columns = min(nrow, count)
    rows = -(-count // columns)
    grid = np.full(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, 3),
        pad_value,
        dtype=np.float32,
    )
    for index, image in enumerate(stack):
        top = padding + (index // columns) * (height + padding)
        left = padding + (index % columns) * (width + padding)
        grid[top : top + height, left : left + width] = image
    return np.round(np.clip(grid, 0.0, 1.0) * 255.0).astype(np.uint8)


def plot_image_grid(
    images: Any,
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    size_in: float = 2.5,
) -> Figure:
    """Images in a grid of axes, one per image, with optional titles.

    Args:
        images: ``(N, C, H, W)`` tensor in ``[0, 1]``, ``(N, H, W, 3)`` array, or a list of same-size images.
        titles: Optional title per image.
        ncols: Axes per row.
        size_in: Width and height of each cell in inches.

    Returns:
        The figure, with exactly ``N`` axes.
    """
    stack = _image_stack(images)
    if titles is not None and len(titles) != len(stack):
        raise ValueError(f"plot_image_grid: {len(titles)} titles for {len(stack)} images")
    if ncols < 1:
        raise ValueError(f"plot_image_grid: ncols must be >= 1, got {ncols}")
    columns = max(1, min(ncols, len(stack)))
    rows = max(1, -(-len(stack) // columns))
    figure = new_figure(columns * size_in, rows * size_in)
    for index, image in enumerate(stack):
        ax = figure.add_subplot(rows, columns, index + 1)
        ax.imshow(image)
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(titles[index], fontsize=9)
    return figure


# ------------------------------------------------------------------------------------------ evaluation
def _curve_pair(value: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(value, Mapping):
        curve = value.get("curve", value.get("pck_curve"))
        if curve is None or "thresholds" not in value:
            raise ValueError("a PCK result mapping needs 'thresholds' and 'curve' (or 'pck_curve')")
        return _numpy(value["thresholds"]), _numpy(curve)
    thresholds, curve = value
    return _numpy(thresholds), _numpy(curve)


def plot_pck_curves(
    curves: Mapping[str, Any],
    ax: Axes | None = None,
    unit: str = "mm",
    title: str | None = None,
) -> Figure:
    """PCK curves, with each curve's normalised AUC in the legend.

    Args:
        curves: ``{name: (thresholds, pck)}``; a value may also be a :class:`~handssl.metrics.PCK` result
            or a protocol result (a mapping with ``thresholds`` and ``curve`` / ``pck_curve``).
        ax: Axes to draw into; a new figure when omitted.
        unit: Threshold unit for the x label.
        title: Axes title.

    Returns:
        The figure.
    """
    ax = _axes(ax, size_in=(5.0, 4.0))
    for name, value in curves.items():
        thresholds, pck = _curve_pair(value)
        if thresholds.shape != pck.shape or thresholds.ndim != 1:
            raise ValueError(
                f"plot_pck_curves: {name!r} needs 1-D thresholds and curve of equal length, "
                f"got {thresholds.shape} and {pck.shape}"
            )
        auc = float(auc_from_curve(torch.from_numpy(pck), torch.from_numpy(thresholds)))
        ax.plot(thresholds, pck, marker=".", label=f"{name} (AUC {auc:.3f})")
    ax.set_xlabel(f"threshold ({unit})")
    ax.set_ylabel("PCK")
    ax.set_ylim(0.0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title)
    return _figure(ax)


def plot_learning_curves(
    runs: Mapping[str, Sequence[Sequence[tuple[float, float]]]],
    ax: Axes | None = None,
    xlabel: str = "training minutes",
    ylabel: str = "validation error",
    title: str | None = None,
) -> Figure:
    """Learning curves of several runs per name (seeds): one colour per name, one thin line per run.

    Args:
        runs: ``{name: [run, ...]}``, each run a sequence of ``(x, y)`` points (e.g. minutes, validation
            N-MPJPE); a run of one point is drawn as a marker.
        ax: Axes to draw into; a new figure when omitted.
        xlabel: The x axis label.
        ylabel: The y axis label.
        title: Axes title.

    Returns:
        The figure.
    """
    ax = _axes(ax, size_in=(6.0, 4.0))
    for index, (name, curves) in enumerate(runs.items()):
        drawn = [_numpy(points).reshape(-1, 2) for points in curves if len(points)]
        for run, xy in enumerate(drawn):
            label = f"{name} ({len(drawn)} run{'s' if len(drawn) > 1 else ''})" if run == 0 else None
            ax.plot(xy[:, 0], xy[:, 1], color=f"C{index}", marker=".", linewidth=1.2, alpha=0.8, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if runs:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _figure(ax)


def plot_confidence_histogram(
    confidence: Any,
    threshold: float | None = None,
    ax: Axes | None = None,
    bins: int = 50,
    title: str | None = None,
    keep: str = "above",
) -> Figure:
    """Histogram of pseudo-label confidences, with the selection threshold and the share kept.

    Args:
        confidence: Confidences of any shape (flattened; non-finite values dropped).
        threshold: Optional selection threshold.
        ax: Axes to draw into; a new figure when omitted.
        bins: Number of histogram bins.
        title: Axes title.
        keep: ``"above"``: values ``>= threshold`` are kept (a confidence); ``"below"``: values
            ``<= threshold`` are kept (a cost such as SemiHand's prediction spread).

    Returns:
        The figure.
    """
    if keep not in ("above", "below"):
        raise ValueError(f"keep must be 'above' or 'below', got {keep!r}")
    values = _numpy(confidence).reshape(-1)
    values = values[np.isfinite(values)]
    ax = _axes(ax, size_in=(5.0, 3.5))
    ax.hist(values, bins=bins, color="#4363d8", alpha=0.85)
    if threshold is not None:
        selected = values >= threshold if keep == "above" else values <= threshold
        kept = float(selected.mean()) if len(values) else float("nan")
        ax.axvline(
            threshold, color="#e6194b", linestyle="--", label=f"threshold {threshold:g} (kept {kept:.0%})"
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("confidence")
    ax.set_ylabel("count")
    if title:
        ax.set_title(title)
    return _figure(ax)


def plot_confidence_vs_error(
    confidence: Any,
    error: Any,
    ax: Axes | None = None,
    error_label: str = "error (mm)",
    bins: int = 10,
    title: str | None = None,
) -> Figure:
    """Scatter of error against confidence, with the mean error per confidence decile (or ``bins`` quantiles).

    A useful confidence has the binned mean error falling as confidence rises.

    Args:
        confidence: Confidences, any shape.
        error: Errors, same number of elements as ``confidence``.
        ax: Axes to draw into; a new figure when omitted.
        error_label: y-axis label (say the unit).
        bins: Number of equal-count confidence bins for the mean line.
        title: Axes title.

    Returns:
        The figure.
    """
    conf, err = _numpy(confidence).reshape(-1), _numpy(error).reshape(-1)
    if conf.shape != err.shape:
        raise ValueError(f"plot_confidence_vs_error: {conf.size} confidences but {err.size} errors")
    keep = np.isfinite(conf) & np.isfinite(err)
    conf, err = conf[keep], err[keep]
    ax = _axes(ax, size_in=(5.0, 3.5))
    ax.scatter(conf, err, s=6, alpha=0.35, color="#4363d8", edgecolors="none", label="samples")
    if len(conf) >= bins > 0:
        order = np.argsort(conf)
        groups = np.array_split(order, bins)
        centres = [conf[g].mean() for g in groups if len(g)]
        means = [err[g].mean() for g in groups if len(g)]
        ax.plot(centres, means, color="#e6194b", marker="o", linewidth=2.0, label="mean per bin")
        ax.legend(fontsize=8)
    ax.set_xlabel("confidence")
    ax.set_ylabel(error_label)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return _figure(ax)


def plot_pseudo_label_correction(
    image: Any,
    before_2d: Any,
    after_2d: Any,
    gt_2d: Any = None,
    ax: Axes | None = None,
    title: str | None = None,
    min_shift_px: float = 0.5,
) -> Figure:
    """Pseudo-labels before (dashed, white) and after (finger colours) biomechanical correction.

    Arrows mark joints the correction moved by more than ``min_shift_px``; the ground truth, when given, is
    drawn dotted in black.

    Args:
        image: Tensor ``C x H x W`` in ``[0, 1]`` or numpy ``H x W x 3``.
        before_2d: ``(21, 2)`` pixels before correction.
        after_2d: ``(21, 2)`` pixels after correction.
        gt_2d: Optional ``(21, 2)`` ground-truth pixels.
        ax: Axes to draw into; a new figure when omitted.
        title: Axes title; by default the mean shift in pixels.
        min_shift_px: Smallest shift that gets an arrow.

    Returns:
        The figure.
    """
    before = _joints(before_2d, 2, "plot_pseudo_label_correction")
    after = _joints(after_2d, 2, "plot_pseudo_label_correction")
    ax = _axes(ax)
    picture = image_to_numpy(image)
    ax.imshow(picture)
    draw_skeleton_2d(ax, before, color="#ffffff", linestyle="--")
    draw_skeleton_2d(ax, after)
    handles = [_legend_handle("#ffffff", "--", "before"), _legend_handle(None, "-", "after correction")]
    if gt_2d is not None:
        draw_skeleton_2d(ax, gt_2d, color="#000000", linestyle=":")
        handles.append(_legend_handle("#000000", ":", "ground truth"))
    shift = np.linalg.norm(after - before, axis=-1)
    for joint in np.flatnonzero(np.isfinite(shift) & (shift > min_shift_px)):
        ax.annotate(
            "",
            xy=tuple(after[joint]),
            xytext=tuple(before[joint]),
            arrowprops={"arrowstyle": "->", "color": "#ffe119", "linewidth": 1.2},
        )
    height, width = picture.shape[:2]
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.7, facecolor="#808080")
    finite = np.isfinite(shift)
    ax.set_title(title or f"correction: mean shift {shift[finite].mean() if finite.any() else 0.0:.1f} px")
    return _figure(ax)
