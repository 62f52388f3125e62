"""The appearance domains of SynthHands over one geometry: a rendered source and two camera-like targets.

The styles pose the seeds' problem (a labelled rendered source such as RHD, an unlabelled real target such as
STB or Dexter+Object):

``"synthetic"`` (source, RHD-like)
    Clean renders composited over a large family of natural-looking backgrounds: procedural "photos" with
    1/f spatial statistics (coloured 1/f noise under a dead-leaves layer of occluding shapes) in natural
    palettes, one drawn per (subject, sequence, camera) and mirrored or re-tinted; a random light per
    frame (direction, colour, intensity) over a random ambient; the subjects' skin tones and sleeves; no
    sensor effects.
``"real"`` (target, STB-like)
    A camera in a room: a few fixed lab scenes (a wall, a desk edge, a monitor, shelves, a few objects, muted
    colours), one per sequence, seen by each rig camera from its own side; the person's own sleeve in
    muted colours; textured skin with a subsurface-like soft terminator; a key plus a fill light fixed per
    scene (no silhouettes); per-camera white balance and response (gamma, lifted blacks, lower saturation),
    exposure jitter, vignetting, defocus or motion blur, sensor noise (read plus shot) and compression-like
    chroma subsampling and quantisation.
``"real_object"`` (target, Dexter+Object-like)
    The real style with a can or bottle held against the palm (ray-cast with the hand, occluding by depth).

Both the palmar side and the nails differ from the back of the hand. Each view's **background** is static
for its (subject, sequence, camera): a texture on the camera's own image plane (a function of the ray
direction in the rig camera's frame), so the background crop depends only on the crop window, never on the
pose, and :meth:`Appearance.backgrounds` returns it alone.

Everything random is a pure function of integer keys (seed, subject, sequence, frame, camera): sensor noise
is a window of a fixed noise bank at a key-chosen offset, not a draw from a global generator. The per-pixel
work is element-wise or a fixed stencil of shifted additions within one image (no reduction across images),
so an image does not depend on the other images of its batch, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from handssl.data.synthhands.render import (
    PART_FINGER,
    PART_FINGERTIP,
    PART_OBJECT,
    PART_PALM,
    PART_SLEEVE,
    HandShape,
    RayHits,
)
from handssl.skeleton import FINGERS, MIDDLE_MCP

__all__ = ["NUM_PHOTOS", "NUM_SCENES", "STYLES", "Appearance", "ViewBatch", "hash_int", "hash_ints"]

STYLES: tuple[str, ...] = ("synthetic", "real", "real_object")
"""The appearance domains: the rendered source and the two camera-like targets."""

NUM_PHOTOS = 48
"""Background "photos" of the synthetic style (each also mirrored and re-tinted per view)."""

NUM_SCENES = 4
"""Lab scenes of the real styles; every sequence is filmed in one of them."""

_MASK32 = 0xFFFFFFFF
_TEXTURE_CACHE: dict[tuple, Tensor] = {}  # textures are pure functions of their key; share them per process
_NAIL_RGB = (0.96, 0.84, 0.82)
_PALMAR_RGB = (1.08, 0.92, 0.88)  # multiplicative tint of the palmar side (lighter, pinker)
_WRAP = 0.45  # real style: wrapped diffuse (light reaches past the terminator, as through skin)
_LUMA = (0.299, 0.587, 0.114)

# Natural colours of the synthetic style's photos (sRGB): foliage, earth, sky, stone, brick, wood, sand,
# water, walls, shadows, and a few saturated man-made ones.
_PHOTO_PALETTE = np.array(
    [
        [0.24, 0.38, 0.17], [0.42, 0.52, 0.24], [0.30, 0.33, 0.20], [0.46, 0.34, 0.22],
        [0.62, 0.47, 0.31], [0.56, 0.70, 0.88], [0.76, 0.82, 0.90], [0.50, 0.50, 0.49],
        [0.30, 0.30, 0.33], [0.80, 0.79, 0.76], [0.56, 0.29, 0.22], [0.54, 0.37, 0.21],
        [0.83, 0.75, 0.58], [0.24, 0.38, 0.48], [0.88, 0.86, 0.81], [0.12, 0.12, 0.14],
        [0.68, 0.18, 0.14], [0.84, 0.68, 0.22], [0.20, 0.30, 0.58], [0.70, 0.62, 0.52],
    ]
)  # fmt: skip
# Muted room colours of the real styles: walls, furniture, screens, books, plants.
_WALL_RGB = np.array([[0.78, 0.76, 0.70], [0.70, 0.72, 0.70], [0.72, 0.74, 0.78], [0.80, 0.77, 0.72]])
_DESK_RGB = np.array([[0.52, 0.40, 0.29], [0.62, 0.60, 0.57], [0.80, 0.78, 0.74], [0.38, 0.33, 0.29]])
_ROOM_OBJECT_RGB = np.array(
    [[0.45, 0.30, 0.28], [0.30, 0.36, 0.45], [0.40, 0.46, 0.34], [0.55, 0.52, 0.45], [0.25, 0.25, 0.27]]
)
_HELD_OBJECT_RGB = np.array(
    [[0.70, 0.16, 0.14], [0.85, 0.85, 0.82], [0.20, 0.32, 0.62], [0.25, 0.50, 0.30], [0.88, 0.70, 0.20]]
)


def hash_int(x: Tensor) -> Tensor:
    """Integer hash of an int64 tensor (values taken mod 2³²) to ``[0, 2³²)``; exact and element-wise."""
    x = x & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def hash_ints(*parts: int) -> int:
    """Hash several Python ints into one int in ``[0, 2³²)`` (the same values as the tensor hash of keys)."""
    out = 0
    for part in parts:
        x = (out * 31 + (int(part) & _MASK32) + 0x7F4A7C15) & _MASK32
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
        out = x ^ (x >> 16)
    return out


def _key(*parts: Tensor | int) -> Tensor:
    """Hash several integer keys (tensors broadcast) into one int64 key in ``[0, 2³²)``."""
    out = torch.zeros((), dtype=torch.long)
    for part in parts:
        out = hash_int(out * 31 + (torch.as_tensor(part, dtype=torch.long) & _MASK32) + 0x7F4A7C15)
    return out


def _unit(x: Tensor) -> Tensor:
    """``[0, 2³²)`` integers to floats in ``[0, 1)`` (float64)."""
    return x.to(torch.float64) / 4294967296.0


def _draws(key: Tensor, count: int) -> Tensor:
    """``(N, count)`` float64 uniforms in ``[0, 1)``, a pure function of each row's integer key."""
    return torch.stack([_unit(hash_int(key * 7919 + k + 1)) for k in range(count)], -1)


@dataclass
class ViewBatch:
    """What the appearance needs to know about ``N`` images (float64 geometry).

    Attributes:
        cameras: ``(N,)`` rig camera index of each image.
        subjects: ``(N,)`` global subject index.
        sequences: ``(N,)`` sequence index.
        frames: ``(N,)`` frame index.
        R: ``(N, 3, 3)`` world-to-crop-camera rotations.
        R_rot: ``(N, 3, 3)`` rotations from the rig camera frame to the crop camera frame.
        K: ``(N, 3, 3)`` crop intrinsics.
        joints: ``(N, 21, 3)`` joints in the crop camera frame, mm.
        skin_rgb: ``(N, 3)`` skin colour in ``[0, 1]``.
        sleeve_rgb: ``(N, 3)`` sleeve colour in ``[0, 1]``.
    """

    cameras: Tensor
    subjects: Tensor
    sequences: Tensor
    frames: Tensor
    R: Tensor
    R_rot: Tensor
    K: Tensor
    joints: Tensor
    skin_rgb: Tensor
    sleeve_rgb: Tensor


def _pink_noise(rng: np.random.Generator, size: int, beta: float, channels: int = 1) -> np.ndarray:
    """``(channels, size, size)`` noise with a ``1/f^beta`` amplitude spectrum, zero mean, unit std."""
    freq = np.fft.fftfreq(size)
    radius = np.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2)
    radius[0, 0] = 1.0
    spectrum = (rng.normal(size=(channels, size, size)) + 1j * rng.normal(size=(channels, size, size))) / (
        radius**beta
    )
    spectrum[:, 0, 0] = 0.0
    field = np.fft.ifft2(spectrum).real
    return (field - field.mean(axis=(1, 2), keepdims=True)) / field.std(axis=(1, 2), keepdims=True)


class Appearance:
    """Backgrounds, shading, compositing and camera effects of one style.

    Args:
        style: ``"synthetic"``, ``"real"`` or ``"real_object"``.
        seed: World seed; textures, lights and noise are pure functions of it and integer keys.
        num_cameras: Number of rig cameras (each sees its own side of the real styles' rooms).
        image_size: Side of the rendered crops in pixels.
        coverage: Half-width, in normalised image coordinates (``x / z``) of the rig cameras, of the
            background textures; crop rays beyond it see the texture's clamped edge.
        texels_per_unit: Texture resolution, texels per unit of normalised coordinates; pick about the
            crops' focal length in pixels (capped at 384 texels a side).
    """

    def __init__(
        self,
        style: str = "synthetic",
        seed: int = 0,
        num_cameras: int = 8,
        image_size: int = 64,
        coverage: float = 0.6,
        texels_per_unit: float = 160.0,
    ) -> None:
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        if coverage <= 0 or texels_per_unit <= 0:
            raise ValueError(f"coverage and texels_per_unit must be > 0, got {coverage}, {texels_per_unit}")
        self.style = style
        self.real = style != "synthetic"
        self.seed = int(seed)
        self.num_cameras = int(num_cameras)
        self.image_size = int(image_size)
        self.coverage = float(coverage)
        self.texture_size = max(16, min(384, math.ceil(2 * coverage * texels_per_unit)))
        self._textures: Tensor | None = None
        self._stacked: Tensor | None = None
        self._noise_bank: Tensor | None = None
        self._subject_textures: dict[int, tuple[Tensor, Tensor]] = {}
        gains = torch.ones(self.num_cameras, 3, dtype=torch.float64)
        response = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64).repeat(self.num_cameras, 1)
        if self.real:  # each camera's white balance and response: gamma, lifted blacks, saturation
            for c in range(self.num_cameras):
                rng = self._rng(3, c)
                gains[c] = torch.from_numpy(np.clip(1.0 + rng.normal(0.0, 0.1, 3), 0.8, 1.2))
                response[c] = torch.tensor(
                    [rng.uniform(0.75, 0.9), rng.uniform(0.05, 0.1), rng.uniform(0.7, 0.85)]
                )
        self._gains = gains
        self._response = response

    def _rng(self, *keys: int) -> np.random.Generator:
        # The two real styles share their rooms, lights and cameras: only the held object differs.
        domain = 1 if self.real else 0
        return np.random.default_rng([self.seed, domain, *[int(k) & _MASK32 for k in keys]])

    def _view_key(self, views: ViewBatch, salt: int, frame: bool = True, camera: bool = True) -> Tensor:
        parts = [views.subjects, views.sequences]
        parts += [views.frames] if frame else []
        parts += [views.cameras] if camera else []
        return _key(self.seed, salt, int(self.real), *parts)

    # ------------------------------------------------------------------ backgrounds

    @property
    def num_bands(self) -> int:
        """Background textures: the photos (synthetic) or one per scene and camera (real styles)."""
        return NUM_PHOTOS if not self.real else NUM_SCENES * self.num_cameras

    def scene(self, subjects: Tensor, sequences: Tensor) -> Tensor:
        """``(N,)`` lab scene of each (subject, sequence) in the real styles."""
        return _key(self.seed, 0x5C, subjects, sequences) % NUM_SCENES

    def background_layout(self, views: ViewBatch) -> tuple[Tensor, Tensor, Tensor]:
        """Which texture each view shows, how it is mirrored, and its tint.

        Returns:
            ``(band (N,) int64, flip (N, 2) float32 of ±1, tint (N, 3) float32)``.
        """
        n = views.cameras.shape[0]
        if self.real:
            band = self.scene(views.subjects, views.sequences) * self.num_cameras + views.cameras
            return band, torch.ones(n, 2), torch.ones(n, 3)
        draws = _draws(self._view_key(views, 0xB6, frame=False), 6)
        band = (draws[:, 0] * NUM_PHOTOS).long()
        flip = torch.where(draws[:, 1:3] < 0.5, -1.0, 1.0).to(torch.float32)
        tint = (0.75 + 0.5 * draws[:, 3:4]) * (1.0 + 0.16 * (draws[:, 3:6] - 0.5))
        return band, flip, tint.to(torch.float32)

    @property
    def textures(self) -> Tensor:
        """``(B, 3, T, T)`` float32 background textures (built on first use, shared per process)."""
        if self._textures is None:
            key = (self.seed, self.style != "synthetic", self.num_cameras, self.texture_size, self.coverage)
            if key not in _TEXTURE_CACHE:
                if self.real:
                    textures = torch.stack(
                        [
                            self._room_texture(scene, camera) * self._gains[camera, :, None, None].float()
                            for scene in range(NUM_SCENES)
                            for camera in range(self.num_cameras)
                        ]
                    )
                else:
                    textures = torch.stack([self._photo_texture(b) for b in range(NUM_PHOTOS)])
                _TEXTURE_CACHE[key] = textures.clamp(0.0, 1.0).contiguous()
                while len(_TEXTURE_CACHE) > 4:
                    _TEXTURE_CACHE.pop(next(iter(_TEXTURE_CACHE)))
            self._textures = _TEXTURE_CACHE[key]
        return self._textures

    def _stacked_textures(self, device: torch.device) -> Tensor:
        """All textures stacked vertically, each with a one-texel border, as one grid_sample input."""
        if self._stacked is None or self._stacked.device != device:
            padded = F.pad(self.textures, (0, 0, 1, 1), mode="replicate")  # (B, 3, T + 2, T)
            self._stacked = padded.permute(1, 0, 2, 3).reshape(1, 3, -1, self.texture_size).to(device)
        return self._stacked

    def _grid(self) -> tuple[np.ndarray, np.ndarray]:
        axis = torch.linspace(-self.coverage, self.coverage, self.texture_size, dtype=torch.float64)
        Y, X = torch.meshgrid(axis, axis, indexing="ij")
        return X.numpy(), Y.numpy()

    def _photo_texture(self, index: int) -> Tensor:
        """A natural-looking "photo": coloured 1/f noise under a dead-leaves layer of occluders."""
        size, half = self.texture_size, self.coverage
        rng = self._rng(4, index)
        X, Y = self._grid()
        palette = _PHOTO_PALETTE[rng.choice(len(_PHOTO_PALETTE), size=3, replace=False)]
        weights = _pink_noise(rng, size, rng.uniform(1.6, 2.4), channels=3) * rng.uniform(1.0, 2.5)
        weights = np.exp(weights - weights.max(0, keepdims=True))
        base = np.einsum("kyx,kc->cyx", weights / weights.sum(0, keepdims=True), palette)
        detail = _pink_noise(rng, size, rng.uniform(0.9, 1.3))[0]
        image = base * (1.0 + rng.uniform(0.15, 0.35) * detail)
        step = 2 * half / (size - 1)
        for _ in range(int(rng.integers(6, 22))):
            # Sizes follow a power law (few large occluders, more small ones), as in dead-leaves models.
            radius = half * 0.06 * (1.0 - rng.uniform() * 0.9) ** -1.2
            sx, sy = radius * rng.uniform(0.5, 1.5), radius * rng.uniform(0.5, 1.5)
            cx, cy = rng.uniform(-half, half, 2)
            angle = rng.uniform(0.0, math.pi)
            reach = math.hypot(sx, sy)
            c0, r0 = (max(0, math.floor((c - reach + half) / step)) for c in (cx, cy))
            c1, r1 = (min(size, math.ceil((c + reach + half) / step) + 1) for c in (cx, cy))
            if c1 <= c0 or r1 <= r0:
                continue
            x, y = X[r0:r1, c0:c1] - cx, Y[r0:r1, c0:c1] - cy
            xr = x * math.cos(angle) + y * math.sin(angle)
            yr = -x * math.sin(angle) + y * math.cos(angle)
            if rng.uniform() < 0.5:
                inside = (xr / sx) ** 2 + (yr / sy) ** 2 < 1.0
            else:
                inside = (np.abs(xr) < sx) & (np.abs(yr) < sy)
            colour = _PHOTO_PALETTE[rng.integers(len(_PHOTO_PALETTE))] * rng.uniform(0.7, 1.2)
            shading = 1.0 + rng.uniform(-0.3, 0.3) * (xr / reach) + 0.15 * detail[r0:r1, c0:c1]
            fill = colour[:, None, None] * shading[None]
            image[:, r0:r1, c0:c1] = np.where(inside[None], fill, image[:, r0:r1, c0:c1])
        return torch.from_numpy(np.clip(image, 0.02, 0.98)).to(torch.float32)

    def _room_texture(self, scene: int, camera: int) -> Tensor:
        """One lab scene seen by one camera: wall, desk edge, monitor, shelves, a few objects; muted."""
        size, half = self.texture_size, self.coverage
        room = self._rng(5, scene)
        wall_rgb = _WALL_RGB[room.integers(len(_WALL_RGB))] * room.uniform(0.8, 1.05)
        desk_rgb = _DESK_RGB[room.integers(len(_DESK_RGB))]
        rng = self._rng(6, scene, camera)
        X, Y = self._grid()
        angle = rng.uniform(0.0, 2.0 * math.pi)
        light_ramp = 1.0 + 0.12 * (X * math.cos(angle) + Y * math.sin(angle)) / half
        image = wall_rgb[:, None, None] * light_ramp[None] * (1.0 + 0.03 * _pink_noise(rng, size, 1.6)[0])

        def box(x0: float, y0: float, x1: float, y1: float, rgb: np.ndarray) -> None:
            inside = (x0 <= X) & (x1 > X) & (y0 <= Y) & (y1 > Y)
            image[:] = np.where(inside[None], rgb[:, None, None] * light_ramp[None], image)

        if rng.uniform() < 0.6:  # shelves with a few books
            x0, y0 = rng.uniform(-half, 0.2 * half), rng.uniform(-half, 0.0)
            width, height = rng.uniform(0.5, 0.9) * half, rng.uniform(0.6, 1.0) * half
            shelf_rgb = _DESK_RGB[rng.integers(len(_DESK_RGB))] * 0.9
            box(x0, y0, x0 + width, y0 + height, shelf_rgb * 0.75)
            for k in range(3):
                board = y0 + (k + 1) * height / 3.0
                x = x0 + 0.03 * half
                while x < x0 + width - 0.1 * half:
                    w = rng.uniform(0.06, 0.14) * half
                    h = rng.uniform(0.6, 0.9) * height / 3.0
                    box(x, board - h, x + w, board - 0.02 * half, _ROOM_OBJECT_RGB[rng.integers(5)] * 1.1)
                    x += w + rng.uniform(0.0, 0.05) * half
                box(x0, board - 0.02 * half, x0 + width, board + 0.02 * half, shelf_rgb)
        if rng.uniform() < 0.6:  # a monitor: bezel and a dim screen
            cx, cy = rng.uniform(-0.6, 0.6) * half, rng.uniform(-0.6, 0.2) * half
            w, h = rng.uniform(0.35, 0.6) * half, rng.uniform(0.25, 0.4) * half
            box(cx - w, cy - h, cx + w, cy + h, np.array([0.10, 0.10, 0.11]))
            screen = np.array([0.22, 0.26, 0.32]) * rng.uniform(0.7, 1.2)
            box(cx - 0.92 * w, cy - 0.88 * h, cx + 0.92 * w, cy + 0.88 * h, screen)
        # The desk edge: everything below a slightly tilted line (cameras above the hand see more desk).
        edge = rng.uniform(-0.1, 0.7) * half + np.tan(rng.uniform(-0.2, 0.2)) * X
        grain = 1.0 + 0.04 * _pink_noise(rng, size, 1.3)[0]
        desk = desk_rgb[:, None, None] * grain[None] * (0.95 + 0.1 * (Y - edge) / half)[None]
        image = np.where((edge < Y)[None], desk, image)
        for _ in range(int(rng.integers(1, 4))):  # mugs, boxes, a plant
            cx, cy = rng.uniform(-half, half), rng.uniform(-0.5, 0.8) * half
            r = rng.uniform(0.06, 0.16) * half
            rgb = _ROOM_OBJECT_RGB[rng.integers(5)] * rng.uniform(0.8, 1.2)
            inside = ((X - cx) / r) ** 2 + ((Y - cy) / (1.3 * r)) ** 2 < 1.0
            image = np.where(inside[None], rgb[:, None, None] * (1.0 - 0.25 * (X - cx) / r)[None], image)
        texture = torch.from_numpy(np.clip(image, 0.02, 0.98)).to(torch.float32)[None]
        return F.avg_pool2d(F.pad(texture, (1, 1, 1, 1), mode="replicate"), 3, stride=1)[0]  # soft edges

    def backgrounds(self, bands: Tensor, flips: Tensor, R_rot: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
        """Background crops: each view's static texture seen through its crop camera, and vignetting.

        Args:
            bands: ``(N,)`` texture index of each view (:meth:`background_layout`).
            flips: ``(N, 2)`` ±1 mirroring of the texture's x and y.
            R_rot: ``(N, 3, 3)`` rig-camera-to-crop-camera rotations.
            K: ``(N, 3, 3)`` crop intrinsics.

        Returns:
            ``(N, 3, S, S)`` float32 backgrounds in ``[0, 1]`` and the ``(N, 1, S, S)`` float32 relative
            illumination of the rig camera's lens at each crop pixel (``1 / (1 + r²)²`` in normalised
            coordinates).
        """
        n, s = bands.shape[0], self.image_size
        device = R_rot.device
        stacked = self._stacked_textures(device)
        # Crop pixel -> rig-camera ray R_rot^T K^-1 [u, v, 1].
        H = (R_rot.to(torch.float64).transpose(1, 2) @ torch.linalg.inv(K.to(torch.float64))).to(
            torch.float32
        )
        pixels = torch.arange(s, dtype=torch.float32, device=device)
        cols, rows = pixels[None, None, :], pixels[None, :, None]
        ray = [
            H[:, i, 0, None, None] * cols + (H[:, i, 1, None, None] * rows + H[:, i, 2, None, None])
            for i in range(3)
        ]
        x, y = ray[0] / ray[2], ray[1] / ray[2]
        falloff = 1.0 / (1.0 + x * x + y * y)
        flips = flips.to(device=device, dtype=torch.float32)
        gx = (x * (flips[:, 0, None, None] / self.coverage)).clamp(-1.0, 1.0)
        gy = (y * (flips[:, 1, None, None] / self.coverage)).clamp(-1.0, 1.0)
        # Map y into the view's band of the stacked texture (align_corners=True pixel coordinates).
        band, height = self.texture_size + 2, stacked.shape[2] - 1
        scale = (self.texture_size - 1) / height
        offset = (bands.to(torch.float64) * band + 1.0 + (self.texture_size - 1) / 2.0) / height * 2.0 - 1.0
        gy = gy * scale + offset.to(device=device, dtype=torch.float32)[:, None, None]
        grid = torch.stack([gx, gy], -1).view(1, n * s, s, 2)
        sampled = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return sampled.view(3, n, s, s).transpose(0, 1).contiguous(), (falloff * falloff).unsqueeze(1)

    # ------------------------------------------------------------------ rendering

    def render(self, hits: RayHits, shape: HandShape, views: ViewBatch) -> tuple[Tensor, Tensor]:
        """Shade the hand, composite it over the background crops, apply the camera effects.

        Args:
            hits: Ray casting result of the ``N`` images.
            shape: The hands that were cast (their primitives' ``part`` and ``dorsal``).
            views: Per-image keys and geometry.

        Returns:
            ``(image, background)``: ``(N, 3, S, S)`` uint8 each; the background is the view's background
            crop with the same colour cast, exposure, vignetting and blur as the image but without the hand,
            the sensor noise and the compression.
        """
        s = self.image_size
        if hits.depth.shape[1:] != (s, s):
            raise ValueError(
                f"hits are {tuple(hits.depth.shape[1:])} pixels, this appearance renders {s}x{s}"
            )
        device = hits.depth.device
        bands, flips, tint = self.background_layout(views)
        background, falloff = self.backgrounds(
            bands.to(device), flips, views.R_rot.to(device), views.K.to(device)
        )
        background = background * tint.to(device)[:, :, None, None]
        image = background.clone()
        if hits.fg_index.numel():
            colour = self._shade(hits, shape, views).clamp(0.0, 1.0)
            if self.real:  # the camera's white balance (the room textures carry it already)
                gains = self._gains.to(device=device, dtype=torch.float32)[views.cameras.to(device)]
                colour = colour * gains.index_select(
                    0, torch.div(hits.fg_index, s * s, rounding_mode="floor")
                )
            # fg_index runs over (N, S*S); the image is (N, 3, S*S).
            flat = hits.fg_index + torch.div(hits.fg_index, s * s, rounding_mode="floor") * (2 * s * s)
            image_flat = image.view(-1)
            for c in range(3):
                image_flat.index_copy_(0, flat + c * s * s, colour[:, c])
        if self.real:
            image, background = self._camera(image, background, falloff, views)
        return _to_uint8(image), _to_uint8(background)

    def _camera(
        self, image: Tensor, background: Tensor, falloff: Tensor, views: ViewBatch
    ) -> tuple[Tensor, Tensor]:
        """The real camera: exposure and white-balance jitter, vignetting, response, blur, noise, compression."""
        device = image.device
        d = _draws(self._view_key(views, 0xCA), 8).to(device=device, dtype=torch.float32)
        exposure = (0.9 + 0.22 * d[:, 0:1]) * (1.0 + 0.08 * (d[:, 1:4] - 0.5))  # (N, 3)
        gain = exposure[:, :, None, None] * (0.7 + 0.3 * falloff)
        gamma, lift, saturation = (
            v[:, None, None, None]
            for v in self._response.to(device=device, dtype=torch.float32)[views.cameras.to(device)].unbind(1)
        )

        def respond(x: Tensor) -> Tensor:
            x = (x * gain).clamp(0.0, 1.0) ** gamma
            luma = _LUMA[0] * x[:, 0:1] + _LUMA[1] * x[:, 1:2] + _LUMA[2] * x[:, 2:3]
            return lift + (1.0 - lift) * (luma + saturation * (x - luma))

        image, background = respond(image), respond(background)
        # Defocus (two blends towards the 3x3 box blur, about a 5x5 kernel) or motion blur (3 taps along x or
        # y, twice): a lower-resolution camera than the renders, the first thing a source-only network misses.
        first, second = (0.6 + 0.4 * d[:, 5])[:, None, None, None], (0.2 + 0.8 * d[:, 6])[:, None, None, None]
        kinds = torch.where(d[:, 4] < 0.7, 0, torch.where(d[:, 5] < 0.5, 1, 2))
        blurred = []
        for x in (image, background):
            out = torch.empty_like(x)
            for kind in range(3):
                rows = torch.nonzero(kinds == kind).squeeze(1)
                if len(rows) and kind == 0:
                    out[rows] = _box_blur(_box_blur(x[rows], first[rows]), second[rows])
                elif len(rows):
                    out[rows] = _shift_mean(_shift_mean(x[rows], -kind), -kind)
            blurred.append(out)
        image, background = blurred
        # Sensor noise: read noise plus shot noise that grows with the signal.
        read = (0.025 + 0.02 * d[:, 6])[:, None, None, None]
        sigma = torch.sqrt(read * read + 0.0014 * image.clamp_min(0.0))
        image = image + self._noise(hash_int(self._view_key(views, 0xA0).to(device)), device) * sigma
        return _compress(image, step=(2.0 + 4.0 * d[:, 7]) / 255.0), background

    def _noise(self, keys: Tensor, device: torch.device) -> Tensor:
        """``(N, 3, S, S)`` unit Gaussian sensor noise: windows of a fixed noise bank at key-chosen offsets."""
        count = 3 * self.image_size**2
        if self._noise_bank is None or self._noise_bank.device != device:
            generator = torch.Generator().manual_seed(hash_ints(self.seed, 0xB0B))
            self._noise_bank = torch.randn(4 * count + 4099, generator=generator).to(device)
        span = self._noise_bank.shape[0] - count
        starts = (keys % span).tolist()
        window = torch.stack([self._noise_bank[o : o + count] for o in starts])
        return window.view(-1, 3, self.image_size, self.image_size)

    # ------------------------------------------------------------------ shading

    def subject_texture(self, subject: int) -> tuple[Tensor, Tensor]:
        """Solid skin texture of a subject: wave vectors (per mm) in the palm frame and phases.

        Returns:
            ``(waves (6, 3), phases (6,))`` float64; the texture is the mean of six smoothed triangle waves.
        """
        if subject not in self._subject_textures:
            rng = self._rng(1, subject)
            directions = rng.normal(size=(6, 3))
            directions /= np.linalg.norm(directions, axis=1, keepdims=True)
            periods_mm = np.concatenate([rng.uniform(18.0, 40.0, 3), rng.uniform(2.5, 7.0, 3)])
            waves = directions / periods_mm[:, None]
            self._subject_textures[subject] = torch.from_numpy(waves), torch.from_numpy(rng.uniform(0, 1, 6))
        return self._subject_textures[subject]

    def lights(self, views: ViewBatch) -> dict[str, Tensor]:
        """Per-image lights in the crop camera frame (float64).

        The synthetic style draws one light per frame (world direction anywhere on the sphere, tint and
        intensity) over a random ambient; the real styles light each scene with a fixed key light from
        above and a fill light from the other side.

        Returns:
            ``key``/``fill`` ``(N, 3)`` unit directions towards the lights, ``key_rgb``/``fill_rgb`` ``(N, 3)``,
            ``ambient`` ``(N, 3)`` and ``up`` ``(N, 3)`` (world +z in camera coordinates).
        """
        n = views.cameras.shape[0]
        R = views.R.to(torch.float64).cpu()
        if self.real:
            d = _draws(_key(self.seed, 0x11, self.scene(views.subjects, views.sequences)), 10)
            azimuth = 2.0 * math.pi * d[:, 0]
            elevation = 0.5 + 0.6 * d[:, 1]
            key = torch.stack(
                [elevation.cos() * azimuth.cos(), elevation.cos() * azimuth.sin(), elevation.sin()], -1
            )
            fill = torch.stack([-key[:, 0], -key[:, 1], 0.3 * torch.ones(n, dtype=torch.float64)], -1)
            warm = torch.stack(
                [1.04 + 0.04 * d[:, 2], torch.ones(n, dtype=torch.float64), 0.94 - 0.04 * d[:, 3]], -1
            )
            key_rgb = warm * (0.5 + 0.15 * d[:, 4:5])
            fill_rgb = torch.tensor([0.94, 0.98, 1.06], dtype=torch.float64) * (0.28 + 0.08 * d[:, 5:6])
            ambient = torch.full((n, 3), 1.0, dtype=torch.float64) * (0.5 + 0.08 * d[:, 6:7])
        else:
            d = _draws(self._view_key(views, 0x12, camera=False), 10)
            z = 2.0 * d[:, 0] - 1.0
            azimuth = 2.0 * math.pi * d[:, 1]
            ring = (1.0 - z * z).clamp_min(0.0).sqrt()
            key = torch.stack([ring * azimuth.cos(), ring * azimuth.sin(), z], -1)
            fill = torch.zeros(n, 3, dtype=torch.float64)
            fill[:, 2] = 1.0
            tint = 1.0 + 0.35 * (d[:, 2:5] - 0.5)
            key_rgb = tint / tint.mean(-1, keepdim=True) * (0.3 + 0.55 * d[:, 5:6])
            fill_rgb = torch.zeros(n, 3, dtype=torch.float64)
            ambient_tint = 1.0 + 0.2 * (d[:, 6:9] - 0.5)
            ambient = ambient_tint / ambient_tint.mean(-1, keepdim=True) * (0.4 + 0.25 * d[:, 9:10])
        rotate = lambda v: (R @ v.unsqueeze(-1)).squeeze(-1)  # noqa: E731
        fill = fill / fill.norm(dim=-1, keepdim=True)
        return {
            "key": rotate(key),
            "fill": rotate(fill),
            "key_rgb": key_rgb,
            "fill_rgb": fill_rgb,
            "ambient": ambient,
            "up": R[:, :, 2],
        }

    def _shade(self, hits: RayHits, shape: HandShape, views: ViewBatch) -> Tensor:
        n, m = shape.dorsal.shape[:2]
        device = hits.fg_point.device
        f32 = torch.float32
        image = torch.div(hits.fg_primitive, m, rounding_mode="floor")
        # index_select rather than advanced indexing: the same values, several times faster on CPU.
        part = shape.part.to(device).index_select(0, hits.fg_primitive - image * m)
        dorsal = (
            shape.dorsal.reshape(n * m, 3).to(device=device, dtype=f32).index_select(0, hits.fg_primitive)
        )
        normal, point = hits.fg_normal, hits.fg_point
        nx, ny, nz = normal.unbind(1)
        n_dorsal = nx * dorsal[:, 0] + ny * dorsal[:, 1] + nz * dorsal[:, 2]

        skin = views.skin_rgb.to(device=device, dtype=f32).index_select(0, image)
        sleeve = views.sleeve_rgb.to(device=device, dtype=f32)
        if self.real:  # the same person's everyday clothes: muted
            sleeve = 0.45 * sleeve + 0.55 * sleeve.mean(-1, keepdim=True) * 0.8
        sleeve = sleeve.index_select(0, image)
        is_sleeve = (part == PART_SLEEVE)[:, None]
        is_object = (part == PART_OBJECT)[:, None]
        albedo = torch.where(is_sleeve, sleeve, skin)
        if self.style == "real_object":
            pick = (_key(self.seed, 0x0B, views.subjects, views.sequences) % len(_HELD_OBJECT_RGB)).to(device)
            object_rgb = torch.as_tensor(_HELD_OBJECT_RGB, dtype=f32, device=device)[pick].index_select(
                0, image
            )
            albedo = torch.where(is_object, object_rgb, albedo)
        palmar = ((part == PART_PALM) | (part == PART_FINGER) | (part == PART_FINGERTIP)) & (n_dorsal < 0)
        tint = torch.tensor(_PALMAR_RGB, dtype=f32, device=device)
        palmar_weight = (-n_dorsal).clamp(0.0, 1.0)[:, None] * palmar[:, None].to(f32)
        albedo = albedo * (1.0 + (tint - 1.0) * palmar_weight)
        nail = (part == PART_FINGERTIP) & (hits.fg_axial > 0.35) & (n_dorsal > 0.5)
        nail_rgb = 0.45 * albedo + 0.55 * torch.tensor(_NAIL_RGB, dtype=f32, device=device)
        albedo = torch.where(nail[:, None], nail_rgb, albedo)

        light = {
            k: v.to(device=device, dtype=f32).index_select(0, image) for k, v in self.lights(views).items()
        }

        def facing(direction: Tensor) -> Tensor:
            cosine = nx * direction[:, 0] + ny * direction[:, 1] + nz * direction[:, 2]
            if self.real:  # wrapped diffuse: a soft, subsurface-like terminator
                return ((cosine + _WRAP) / (1.0 + _WRAP)).clamp_min(0.0)
            return cosine.clamp_min(0.0)

        n_key = facing(light["key"])
        n_up = nx * light["up"][:, 0] + ny * light["up"][:, 1] + nz * light["up"][:, 2]
        irradiance = light["ambient"] * (0.8 + 0.2 * n_up)[:, None] + n_key[:, None] * light["key_rgb"]
        if self.real:
            irradiance = irradiance + facing(light["fill"])[:, None] * light["fill_rgb"]
            # Light scattered under the skin comes back redder where the key light grazes.
            scatter = (1.0 - n_key).clamp(0.0, 1.0)[:, None] * torch.tensor(
                [0.04, -0.02, -0.04], device=device
            )
            is_skin = ~(is_sleeve | is_object)
            irradiance = irradiance * (1.0 + scatter * is_skin.to(f32))
        colour = albedo * irradiance

        if self.real:
            texture = self._solid_texture(views, point, image, device)
            skin_mod = 1.0 + 0.35 * (texture - 0.5)[:, None] * torch.tensor([0.9, 1.0, 1.15], device=device)
            cloth_mod = (0.85 + 0.3 * texture)[:, None]
            colour = colour * torch.where(is_sleeve, cloth_mod, torch.where(is_object, 1.0, skin_mod))
        # Blinn-Phong highlight: half vector between the key light and the view direction (-point).
        px, py, pz = point.unbind(1)
        dist = torch.sqrt(px * px + py * py + pz * pz)
        key = light["key"]
        hx, hy, hz = key[:, 0] - px / dist, key[:, 1] - py / dist, key[:, 2] - pz / dist
        h_len = torch.sqrt(hx * hx + hy * hy + hz * hz).clamp_min(1e-6)
        spec = ((nx * hx + ny * hy + nz * hz) / h_len).clamp_min(0.0)
        for _ in range(4):  # ^16
            spec = spec * spec
        strength = (
            torch.where(is_sleeve[:, 0], 0.03, 0.08) + 0.25 * nail.to(f32) + 0.2 * is_object[:, 0].to(f32)
        )
        return colour + (spec * strength * (n_key > 0).to(f32))[:, None] * light["key_rgb"]

    def _solid_texture(self, views: ViewBatch, point: Tensor, image: Tensor, device: torch.device) -> Tensor:
        """Skin/cloth texture in ``[0, 1]`` at each surface point: waves fixed to the palm frame."""
        joints = views.joints.to(torch.float64).cpu()
        wrist = joints[:, 0]
        forward = joints[:, MIDDLE_MCP] - wrist
        forward = forward / forward.norm(dim=-1, keepdim=True)
        lateral = joints[:, FINGERS["pinky"][0]] - joints[:, FINGERS["index"][0]]
        lateral = lateral - (lateral * forward).sum(-1, keepdim=True) * forward
        lateral = lateral / lateral.norm(dim=-1, keepdim=True)
        frame = torch.stack([lateral, forward, torch.cross(lateral, forward, dim=-1)], -1)  # palm -> camera
        textures = [self.subject_texture(int(s)) for s in views.subjects.tolist()]
        waves = torch.stack([w for w, _ in textures]) @ frame.transpose(1, 2)  # (N, 6, 3) camera frame
        phases = torch.stack([p for _, p in textures]) - (waves @ wrist.unsqueeze(-1)).squeeze(-1)
        waves = waves.to(device=device, dtype=torch.float32).index_select(0, image)
        phases = phases.to(device=device, dtype=torch.float32).index_select(0, image)
        px, py, pz = point.unbind(1)
        total = torch.zeros_like(px)
        for k in range(waves.shape[1]):
            phase = waves[:, k, 0] * px + waves[:, k, 1] * py + waves[:, k, 2] * pz + phases[:, k]
            tri = (2.0 * (phase - torch.floor(phase)) - 1.0).abs()
            total = total + tri * tri * (3.0 - 2.0 * tri)
        return total / waves.shape[1]


def _shift_mean(image: Tensor, dim: int) -> Tensor:
    """Mean of each pixel and its two neighbours along ``dim`` (borders average the pixels that exist)."""
    total = image.clone()
    s = image.shape[dim]
    total.narrow(dim, 1, s - 1).add_(image.narrow(dim, 0, s - 1))
    total.narrow(dim, 0, s - 1).add_(image.narrow(dim, 1, s - 1))
    count = torch.full((s,), 3.0, device=image.device)
    count[0] = count[-1] = 2.0
    shape = [1] * image.ndim
    shape[dim] = s
    return total / count.view(shape)


def _box_blur(image: Tensor, weight: Tensor) -> Tensor:
    """Blend each image towards its 3x3 box blur by a per-image ``weight`` ``(N, 1, 1, 1)`` in ``[0, 1]``."""
    return image + weight * (_shift_mean(_shift_mean(image, -1), -2) - image)


def _compress(image: Tensor, step: Tensor) -> Tensor:
    """Compression-like artefacts: 4:2:0 chroma subsampling and a per-image luma quantisation ``step (N,)``."""
    r, g, b = image.unbind(1)
    luma = _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b
    chroma = torch.stack([r - luma, b - luma], 1)
    n, _, s, _ = chroma.shape
    if s % 2 == 0:
        blocks = chroma.view(n, 2, s // 2, 2, s // 2, 2)
        mean = (blocks[:, :, :, 0, :, 0] + blocks[:, :, :, 0, :, 1] + blocks[:, :, :, 1, :, 0]) + blocks[
            :, :, :, 1, :, 1
        ]
        mean = (mean * 0.25)[:, :, :, None, :, None].expand_as(blocks)
        chroma = mean.reshape(n, 2, s, s)
    q = step.to(image)[:, None, None]
    luma = torch.floor(luma / q + 0.5) * q
    r, b = chroma[:, 0] + luma, chroma[:, 1] + luma
    g = (luma - _LUMA[0] * r - _LUMA[2] * b) / _LUMA[1]
    return torch.stack([r, g, b], 1)


def _to_uint8(image: Tensor) -> Tensor:
    """Quantise ``[0, 1]`` floats to 8 bits (round half up)."""
    return (image * 255.0 + 0.5).clamp_(0.0, 255.0).to(torch.uint8)
