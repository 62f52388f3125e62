"""The two appearance domains of SynthHands over one geometry: ``"synthetic"`` and ``"real"``.

``"synthetic"``
    Clean: the subject's skin colour as is, an ambient-heavy head light, smooth per-camera backgrounds,
    no noise, no blur, neutral colour.
``"real"``
    Harder: procedural skin texture (solid noise attached to the palm), one directional light per
    sequence (random direction and tint, specular highlights), cluttered textured per-camera backgrounds,
    a per-camera colour cast, a per-image blur and sensor noise.

Both styles draw nails on the fingertips' dorsal side and a lighter palmar side, so the front and the
back of the hand differ. Each camera has a **static background**: a texture on that camera's own image
plane (a function of the ray direction in the camera's frame), so the background crop of a camera
depends only on the crop window, never on the pose, and :meth:`Appearance.backgrounds` returns it alone.

Everything random is a pure function of integer keys (seed, subject, sequence, frame, camera): sensor
noise is a window of a fixed noise bank at a key-chosen offset, not a draw from a global generator. The
per-pixel work is element-wise (no reduction across pixels or images), so an image does not depend on the
other images of its batch, bit for bit.
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
    PART_PALM,
    PART_SLEEVE,
    HandShape,
    RayHits,
)
from handssl.skeleton import FINGERS, MIDDLE_MCP

__all__ = ["STYLES", "Appearance", "ViewBatch", "hash_int", "hash_ints"]

STYLES: tuple[str, ...] = ("synthetic", "real")
"""The appearance domains."""

_MASK32 = 0xFFFFFFFF
_TEXTURE_CACHE: dict[tuple, Tensor] = {}  # textures are pure functions of their key; share them per process
_NAIL_RGB = (0.96, 0.84, 0.82)
_PALMAR_RGB = (1.08, 0.92, 0.88)  # multiplicative tint of the palmar side (lighter, pinker)
_HEADLIGHT = (0.25, -0.55, -1.0)  # synthetic style: light from the camera, a little above, in camera frame


def hash_int(x: Tensor) -> Tensor:
    """Integer hash of an int64 tensor (values taken mod 2³²) to ``[0, 2³²)``; exact and element-wise."""
    x = x & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def _key(*parts: Tensor | int) -> Tensor:
    """Hash several integer keys (tensors broadcast) into one int64 key in ``[0, 2³²)``."""
    out = torch.zeros((), dtype=torch.long)
    for part in parts:
        out = hash_int(out * 31 + (torch.as_tensor(part, dtype=torch.long) & _MASK32) + 0x7F4A7C15)
    return out


def _unit(x: Tensor) -> Tensor:
    """``[0, 2³²)`` integers to floats in ``[0, 1)`` (float64)."""
    return x.to(torch.float64) / 4294967296.0


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


class Appearance:
    """Backgrounds, shading, compositing and camera effects of one style.

    Args:
        style: ``"synthetic"`` or ``"real"``.
        seed: World seed; textures, lights and noise are pure functions of it and integer keys.
        num_cameras: Number of rig cameras (one static background each).
        image_size: Side of the rendered crops in pixels (sets the background texture resolution).
        coverage: Half-width, in normalised image coordinates (``x / z``) of the rig cameras, of the
            background texture; crop rays beyond it see the texture's clamped edge.
        texels_per_unit: Texture resolution, texels per unit of normalised coordinates; pick at least
            the crops' focal length in pixels.
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
        self.seed = int(seed)
        self.num_cameras = int(num_cameras)
        self.image_size = int(image_size)
        self.coverage = float(coverage)
        # Smooth synthetic backgrounds need few texels; cluttered ones are capped at 640 (a 256 px crop then
        # sees about two pixels per texel, hidden under its blur).
        cap = 128 if style == "synthetic" else 640
        self.texture_size = max(16, min(cap, math.ceil(2 * coverage * texels_per_unit)))
        self._textures: Tensor | None = None
        self._stacked: Tensor | None = None
        self._noise_bank: Tensor | None = None
        self._subject_textures: dict[int, tuple[Tensor, Tensor]] = {}
        self._sequence_lights: dict[tuple[int, int], tuple[Tensor, Tensor, float]] = {}
        gains = torch.ones(self.num_cameras, 3, dtype=torch.float64)
        if style == "real":
            for c in range(self.num_cameras):
                rng = self._rng(3, c)
                gains[c] = torch.from_numpy(np.clip(1.0 + rng.normal(0.0, 0.08, 3), 0.8, 1.2))
        self._gains = gains

    # ------------------------------------------------------------------ per-entity random draws

    def _rng(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, STYLES.index(self.style), *[int(k) & _MASK32 for k in keys]])

    def subject_texture(self, subject: int) -> tuple[Tensor, Tensor]:
        """Solid skin texture of a subject: wave vectors (per mm) in the palm frame and phases.

        Returns:
            ``(waves (6, 3), phases (6,))`` float64; the texture is the mean of six smoothed triangle waves.
        """
        if subject in self._subject_textures:
            return self._subject_textures[subject]
        rng = self._rng(1, subject)
        directions = rng.normal(size=(6, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        periods_mm = np.concatenate([rng.uniform(18.0, 40.0, 3), rng.uniform(2.5, 7.0, 3)])
        waves = directions / periods_mm[:, None]
        out = torch.from_numpy(waves), torch.from_numpy(rng.uniform(0.0, 1.0, 6))
        self._subject_textures[subject] = out
        return out

    def sequence_light(self, subject: int, sequence: int) -> tuple[Tensor, Tensor, float]:
        """Lighting of one sequence: direction towards the light (world, unit), light RGB, ambient level.

        Only the ``"real"`` style uses it (the ``"synthetic"`` style lights from the camera).
        """
        if (subject, sequence) in self._sequence_lights:
            return self._sequence_lights[subject, sequence]
        rng = self._rng(2, subject, sequence)
        direction = rng.normal(size=3)
        direction[2] = abs(direction[2]) - 0.3  # mostly from above
        direction /= np.linalg.norm(direction)
        tint = np.clip(1.0 + rng.normal(0.0, 0.12, 3), 0.7, 1.3)
        rgb = tint / tint.mean() * rng.uniform(0.55, 0.95)
        out = torch.from_numpy(direction), torch.from_numpy(rgb), float(rng.uniform(0.2, 0.45))
        self._sequence_lights[subject, sequence] = out
        return out

    def camera_gains(self, cameras: Tensor) -> Tensor:
        """``(N, 3)`` float64 per-camera colour cast (white-balance gains); ones for ``"synthetic"``."""
        return self._gains[cameras]

    # ------------------------------------------------------------------ backgrounds

    @property
    def textures(self) -> Tensor:
        """``(C, 3, T, T)`` float32 background textures, one per camera (built on first use).

        In the ``"real"`` style they include the camera's colour cast.
        """
        if self._textures is None:
            key = (self.seed, self.style, self.num_cameras, self.texture_size, self.coverage)
            if key not in _TEXTURE_CACHE:
                textures = torch.stack([self._make_texture(c) for c in range(self.num_cameras)])
                _TEXTURE_CACHE[key] = textures * self._gains.to(torch.float32)[:, :, None, None]
                while len(_TEXTURE_CACHE) > 4:
                    _TEXTURE_CACHE.pop(next(iter(_TEXTURE_CACHE)))
            self._textures = _TEXTURE_CACHE[key]
        return self._textures

    def _stacked_textures(self, device: torch.device) -> Tensor:
        """All textures stacked vertically, each with a one-texel border, as one grid_sample input."""
        if self._stacked is None or self._stacked.device != device:
            padded = F.pad(self.textures, (0, 0, 1, 1), mode="replicate")  # (C, 3, T + 2, T)
            self._stacked = padded.permute(1, 0, 2, 3).reshape(1, 3, -1, self.texture_size).to(device)
        return self._stacked

    def _make_texture(self, camera: int) -> Tensor:
        size, half = self.texture_size, self.coverage
        rng = self._rng(4, camera)
        axis = torch.linspace(-half, half, size, dtype=torch.float32)
        Y, X = torch.meshgrid(axis, axis, indexing="ij")

        def smooth_noise(cells: int, channels: int) -> Tensor:
            grid = torch.from_numpy(rng.uniform(-1.0, 1.0, (1, channels, cells, cells)).astype(np.float32))
            return F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)[0]

        def colour(saturation: float) -> Tensor:
            grey = rng.uniform(0.2, 0.85)
            return torch.tensor(
                np.clip(grey + rng.normal(0.0, saturation, 3), 0.02, 0.98), dtype=torch.float32
            )

        if self.style == "synthetic":
            c1, c2 = colour(0.08), colour(0.08)
            angle = rng.uniform(0, 2 * math.pi)
            ramp = ((X * math.cos(angle) + Y * math.sin(angle)) / (2 * half) + 0.5).clamp(0, 1)
            image = c1[:, None, None] * (1 - ramp) + c2[:, None, None] * ramp
            return (image + 0.05 * smooth_noise(3, 1)).clamp(0, 1)

        image = colour(0.15)[:, None, None] + 0.15 * smooth_noise(5, 3)
        step = 2 * half / (size - 1)
        for _ in range(int(rng.integers(25, 40))):
            cx, cy = rng.uniform(-half, half, 2)
            sx, sy = rng.uniform(0.02, 0.25, 2)
            angle = rng.uniform(0, math.pi)
            kind = rng.integers(0, 3)
            fill_rgb = colour(0.18)[:, None, None]
            period = rng.uniform(0.01, 0.05)
            other_rgb = colour(0.18)[:, None, None]
            checked = rng.uniform() < 0.5
            # Only the texels within the shape's bounding circle can change.
            reach = math.hypot(sx, sy)
            c0, c1 = (max(0, math.floor((c - reach + half) / step)) for c in (cx, cy))
            c2, c3 = (min(size, math.ceil((c + reach + half) / step) + 1) for c in (cx, cy))
            if c2 <= c0 or c3 <= c1:
                continue
            x, y = X[c1:c3, c0:c2] - cx, Y[c1:c3, c0:c2] - cy
            xr = x * math.cos(angle) + y * math.sin(angle)
            yr = -x * math.sin(angle) + y * math.cos(angle)
            inside = (xr / sx) ** 2 + (yr / sy) ** 2 < 1 if kind == 0 else (xr.abs() < sx) & (yr.abs() < sy)
            fill = fill_rgb.expand(3, *xr.shape)
            if kind == 2:  # striped or checked fabric / packaging
                stripes = torch.sin(xr / period * 2 * math.pi) > 0
                if checked:
                    stripes = stripes ^ (torch.sin(yr / period * 2 * math.pi) > 0)
                fill = torch.where(stripes, fill, other_rgb)
            image[:, c1:c3, c0:c2] = torch.where(inside, fill, image[:, c1:c3, c0:c2])
        grain = smooth_noise(96, 3)
        return (image + 0.06 * grain).clamp(0, 1)

    def backgrounds(self, cameras: Tensor, R_rot: Tensor, K: Tensor) -> Tensor:
        """Background crops: each camera's static texture seen through its crop camera.

        Args:
            cameras: ``(N,)`` rig camera indices.
            R_rot: ``(N, 3, 3)`` rig-camera-to-crop-camera rotations.
            K: ``(N, 3, 3)`` crop intrinsics.

        Returns:
            ``(N, 3, S, S)`` float32 in ``[0, 1]`` (with the colour cast, before blur and noise).
        """
        n, s = cameras.shape[0], self.image_size
        device = R_rot.device
        stacked = self._stacked_textures(device)
        # Crop pixel -> rig-camera ray R_rot^T K^-1 [u, v, 1]; rows 0-1 pre-scaled to texture units.
        H = R_rot.to(torch.float64).transpose(1, 2) @ torch.linalg.inv(K.to(torch.float64))
        H = (H * H.new_tensor([1.0 / self.coverage, 1.0 / self.coverage, 1.0])[:, None]).to(torch.float32)
        pixels = torch.arange(s, dtype=torch.float32, device=device)
        cols, rows = pixels[None, None, :], pixels[None, :, None]
        ray = [
            H[:, i, 0, None, None] * cols + (H[:, i, 1, None, None] * rows + H[:, i, 2, None, None])
            for i in range(3)
        ]
        gx = (ray[0] / ray[2]).clamp(-1.0, 1.0)
        gy = (ray[1] / ray[2]).clamp(-1.0, 1.0)
        # Map y into the camera's band of the stacked texture (align_corners=True pixel coordinates).
        band, height = self.texture_size + 2, stacked.shape[2] - 1
        scale = (self.texture_size - 1) / height
        offset = (cameras.to(torch.float64) * band + 1.0 + (self.texture_size - 1) / 2.0) / height * 2.0 - 1.0
        gy = gy * scale + offset.to(device=device, dtype=torch.float32)[:, None, None]
        grid = torch.stack([gx, gy], -1).view(1, n * s, s, 2)
        sampled = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return sampled.view(3, n, s, s).transpose(0, 1).contiguous()

    # ------------------------------------------------------------------ shading

    def render(self, hits: RayHits, shape: HandShape, views: ViewBatch) -> tuple[Tensor, Tensor]:
        """Shade the hand, composite it over the background crops, apply the camera effects.

        Args:
            hits: Ray casting result of the ``N`` images.
            shape: The hands that were cast (their primitives' ``part`` and ``dorsal``).
            views: Per-image keys and geometry.

        Returns:
            ``(image, background)``: ``(N, 3, S, S)`` uint8 each; the background is the camera's
            background crop with the same colour cast and blur as the image but without the hand and
            without sensor noise.
        """
        s = self.image_size
        if hits.depth.shape[1:] != (s, s):
            raise ValueError(
                f"hits are {tuple(hits.depth.shape[1:])} pixels, this appearance renders {s}x{s}"
            )
        device = hits.depth.device
        background = self.backgrounds(views.cameras.to(device), views.R_rot.to(device), views.K.to(device))
        image = background.clone()
        if hits.fg_index.numel():
            colour = self._shade(hits, shape, views).clamp(0.0, 1.0)
            if self.style == "real":
                gains = self._gains.to(device=device, dtype=torch.float32)[views.cameras.to(device)]
                colour = colour * gains[torch.div(hits.fg_index, s * s, rounding_mode="floor")]
            # fg_index runs over (N, S*S); the image is (N, 3, S*S).
            flat = hits.fg_index + torch.div(hits.fg_index, s * s, rounding_mode="floor") * (2 * s * s)
            image_flat = image.view(-1)
            for c in range(3):
                image_flat[flat + c * s * s] = colour[:, c]
        if self.style == "real":
            key = _key(self.seed, views.subjects, views.sequences, views.frames, views.cameras)
            weight = (_unit(hash_int(key + 1)) * 0.6).to(device=device, dtype=torch.float32)[
                :, None, None, None
            ]
            image, background = _blur(image, weight), _blur(background, weight)
            sigma = (0.006 + _unit(hash_int(key + 2)) * 0.02).to(device=device, dtype=torch.float32)
            image = image + self._noise(hash_int(key + 3), device) * sigma[:, None, None, None]
        return _to_uint8(image), _to_uint8(background)

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

    def _shade(self, hits: RayHits, shape: HandShape, views: ViewBatch) -> Tensor:
        n, m = shape.dorsal.shape[:2]
        device = hits.fg_point.device
        f32 = torch.float32
        image = torch.div(hits.fg_primitive, m, rounding_mode="floor")
        part = shape.part.to(device)[hits.fg_primitive - image * m]
        dorsal = shape.dorsal.reshape(n * m, 3).to(device=device, dtype=f32)[hits.fg_primitive]
        normal, point = hits.fg_normal, hits.fg_point
        nx, ny, nz = normal.unbind(1)
        n_dorsal = nx * dorsal[:, 0] + ny * dorsal[:, 1] + nz * dorsal[:, 2]

        skin = views.skin_rgb.to(device=device, dtype=f32)[image]
        sleeve = views.sleeve_rgb.to(device=device, dtype=f32)[image]
        is_sleeve = (part == PART_SLEEVE)[:, None]
        albedo = torch.where(is_sleeve, sleeve, skin)
        palmar = ((part == PART_PALM) | (part == PART_FINGER) | (part == PART_FINGERTIP)) & (n_dorsal < 0)
        tint = torch.tensor(_PALMAR_RGB, dtype=f32, device=device)
        palmar_weight = (-n_dorsal).clamp(0.0, 1.0)[:, None] * palmar[:, None].to(f32)
        albedo = albedo * (1.0 + (tint - 1.0) * palmar_weight)
        nail = (part == PART_FINGERTIP) & (hits.fg_axial > 0.35) & (n_dorsal > 0.5)
        nail_rgb = 0.45 * albedo + 0.55 * torch.tensor(_NAIL_RGB, dtype=f32, device=device)
        albedo = torch.where(nail[:, None], nail_rgb, albedo)

        light_cam, light_rgb, ambient, up_cam = self._lights(views)
        light_cam, light_rgb, ambient, up_cam = (
            v.to(device=device, dtype=f32)[image] for v in (light_cam, light_rgb, ambient, up_cam)
        )
        n_l = (nx * light_cam[:, 0] + ny * light_cam[:, 1] + nz * light_cam[:, 2]).clamp_min(0.0)
        n_up = nx * up_cam[:, 0] + ny * up_cam[:, 1] + nz * up_cam[:, 2]
        shade = ambient * (0.8 + 0.2 * n_up)
        colour = albedo * (shade[:, None] + n_l[:, None] * light_rgb)

        if self.style == "real":
            texture = self._solid_texture(views, point, image, device)
            skin_mod = 1.0 + 0.22 * (texture - 0.5)[:, None] * torch.tensor([0.9, 1.0, 1.15], device=device)
            cloth_mod = (0.85 + 0.3 * texture)[:, None]
            colour = colour * torch.where(is_sleeve, cloth_mod, skin_mod)
            # Blinn-Phong highlight: half vector between the light and the view direction (-point).
            px, py, pz = point.unbind(1)
            dist = torch.sqrt(px * px + py * py + pz * pz)
            hx = light_cam[:, 0] - px / dist
            hy = light_cam[:, 1] - py / dist
            hz = light_cam[:, 2] - pz / dist
            h_len = torch.sqrt(hx * hx + hy * hy + hz * hz).clamp_min(1e-6)
            spec = ((nx * hx + ny * hy + nz * hz) / h_len).clamp_min(0.0)
            for _ in range(4):  # ^16
                spec = spec * spec
            strength = torch.where(is_sleeve[:, 0], 0.03, 0.12) + 0.25 * nail.to(f32)
            colour = colour + (spec * strength * (n_l > 0).to(f32))[:, None] * light_rgb
        return colour

    def _lights(self, views: ViewBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-image light direction and up vector in the crop camera frame, light RGB, ambient."""
        n = views.cameras.shape[0]
        R = views.R.to(torch.float64).cpu()
        up_cam = R[:, :, 2]  # world +z in camera coordinates
        if self.style == "synthetic":
            light = torch.tensor(_HEADLIGHT, dtype=torch.float64)
            light = (light / light.norm()).expand(n, 3)
            rgb = torch.full((n, 3), 0.45, dtype=torch.float64)
            return light, rgb, torch.full((n,), 0.6, dtype=torch.float64), up_cam
        lights = [
            self.sequence_light(int(s), int(q))
            for s, q in zip(views.subjects.tolist(), views.sequences.tolist())
        ]
        direction = torch.stack([d for d, _, _ in lights])
        rgb = torch.stack([c for _, c, _ in lights])
        ambient = torch.tensor([a for _, _, a in lights], dtype=torch.float64)
        light = (R @ direction.unsqueeze(-1)).squeeze(-1)
        return light, rgb, ambient, up_cam

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
        waves = waves.to(device=device, dtype=torch.float32)[image]
        phases = phases.to(device=device, dtype=torch.float32)[image]
        px, py, pz = point.unbind(1)
        total = torch.zeros_like(px)
        for k in range(waves.shape[1]):
            phase = waves[:, k, 0] * px + waves[:, k, 1] * py + waves[:, k, 2] * pz + phases[:, k]
            tri = (2.0 * (phase - torch.floor(phase)) - 1.0).abs()
            total = total + tri * tri * (3.0 - 2.0 * tri)
        return total / waves.shape[1]


def _blur(image: Tensor, weight: Tensor) -> Tensor:
    """Blend each image towards its 3x3 box blur by a per-image ``weight`` ``(N, 1, 1, 1)`` in ``[0, 1]``.

    The box sums are separable shifted additions (borders average the pixels that exist).
    """
    rows = image.clone()
    rows[..., 1:] += image[..., :-1]
    rows[..., :-1] += image[..., 1:]
    box = rows.clone()
    box[..., 1:, :] += rows[..., :-1, :]
    box[..., :-1, :] += rows[..., 1:, :]
    s = image.shape[-1]
    count = torch.full((s,), 3.0, device=image.device)
    count[0] = count[-1] = 2.0
    inverse = 1.0 / (count[:, None] * count[None, :])
    return image + weight * (box * inverse - image)


def hash_ints(*parts: int) -> int:
    """Hash several Python ints into one int in ``[0, 2³²)`` (the same values as the tensor hash of keys)."""
    out = 0
    for part in parts:
        x = (out * 31 + (int(part) & _MASK32) + 0x7F4A7C15) & _MASK32
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _MASK32
        out = x ^ (x >> 16)
    return out


def _to_uint8(image: Tensor) -> Tensor:
    """Quantise ``[0, 1]`` floats to 8 bits (round half up)."""
    return (image * 255.0 + 0.5).clamp_(0.0, 255.0).to(torch.uint8)
