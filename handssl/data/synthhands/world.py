"""The SynthHands world: subjects and their motion, a camera rig, framing crop cameras, and a renderer.

:class:`SynthHandsWorld` ties the pieces together (motion -> rig -> crop cameras -> capsules (+ a held
object) -> ray casting -> appearance) and renders any batch of ``(subject, sequence, frame, camera)`` views
at once. The pixels of a view depend only on the world's arguments and that key, never on the batch it
was rendered in. Which views make up a dataset (split, subjects, sequences, frames, cameras) is the
datasets' business (:mod:`handssl.data.synthhands.dataset`); one world can serve several of them.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from handssl.data.synthhands.appearance import STYLES, Appearance, ViewBatch
from handssl.data.synthhands.render import (
    PALM_RADIUS,
    PART_OBJECT,
    PART_SLEEVE,
    HandShape,
    hand_shape,
    raycast,
)
from handssl.data.synthhands.rig import Rig, make_rig
from handssl.geometry import look_at_rotation, project, world_to_camera
from handssl.skeleton import FINGERS, MIDDLE_MCP, NUM_JOINTS

__all__ = ["CROPS", "RENDER_VERSION", "Crop", "Style", "SynthHandsWorld"]

Style = Literal["synthetic", "real", "real_object"]
"""Appearance style: RHD-like source, STB-like target, or Dexter+Object-like (``"real"`` plus a held object)."""

Crop = Literal["joints", "fixed"]
"""How a view's crop is framed: around the joints' box, or a fixed extent at the hand centre's depth."""

RENDER_VERSION = "synthhands-2"
"""Bumped whenever the rendered pixels change; part of the disk cache key."""

LABEL_BACKGROUND, LABEL_HAND, LABEL_SLEEVE, LABEL_OBJECT = 0, 1, 2, 3
"""Per-pixel labels of a rendered view: background, hand skin (palm to bare forearm), sleeve, held object."""

CROPS: tuple[str, ...] = ("joints", "fixed")
"""Crop framings: around the joints' box with a margin, or a fixed extent in mm around the hand centre."""

_MIN_CROP_MM = 60.0  # a joints crop never zooms in further than this (hands seen end-on)


def _motion() -> Any:
    from handssl.data.synthhands import motion

    return motion


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class SynthHandsWorld:
    """The procedural world: subjects and their motion, a camera rig, and a renderer of one style.

    Everything that determines the pixels and the geometry of a view is an argument here; the datasets
    (:class:`~handssl.data.SynthHands`, :class:`~handssl.data.SynthHandsMultiView`) take a world and choose
    which views to draw from it. In YAML::

        world: {class_path: handssl.data.SynthHandsWorld, init_args: {style: real, image_size: 64}}

    Args:
        style: Appearance domain: ``"synthetic"`` (RHD-like source: rendered hands over varied
            natural-looking backgrounds, random lights), ``"real"`` (STB-like target: a camera in a lab room,
            key and fill light, sensor effects) or ``"real_object"`` (Dexter+Object-like: ``"real"`` with a
            held, occluding object); same geometry.
        image_size: Side of the square crops in pixels, an int >= 16 (64 on CPU; 128 and 256 work).
        num_cameras: Cameras in the rig.
        seed: World seed (subjects, motion, rig, textures, lights, noise); the datasets draw their cameras
            and appearance frames from it too.
        crop: ``"joints"``: each crop looks at the hand centre and its side is ``crop_margin`` times the
            side of the joints' square box as seen from that camera (each view its own focal length, as
            the papers' crops around the hand); ``"fixed"``: every crop covers ``crop_extent_mm``.
        crop_margin: Crop side over the joints' box side for ``crop="joints"`` (at least 1).
        crop_extent_mm: Side of the square, at the hand centre's depth, that a ``"fixed"`` crop covers (mm).
        rig_radius_mm: Distance of the cameras from the origin (mm).
        fov_deg: Field of view of the rig cameras' full images (degrees).
        device: Where the ray casting and shading run (``"cpu"`` or ``"cuda"``).
    """

    def __init__(
        self,
        style: Style = "synthetic",
        image_size: int = 64,
        num_cameras: int = 8,
        seed: int = 0,
        crop: Crop = "joints",
        crop_margin: float = 1.25,
        crop_extent_mm: float = 240.0,
        rig_radius_mm: float = 600.0,
        fov_deg: float = 60.0,
        device: str | torch.device = "cpu",
    ) -> None:
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        self.image_size = check_int("image_size", image_size, 16)
        if self.image_size > 2048:
            raise ValueError(f"image_size must be <= 2048, got {image_size}")
        self.num_cameras = check_int("num_cameras", num_cameras, 1)
        self.seed = check_int("seed", seed, 0)
        if not 50.0 <= crop_extent_mm <= 1000.0:
            raise ValueError(f"crop_extent_mm must be in [50, 1000] mm, got {crop_extent_mm}")
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        if not 1.0 <= crop_margin <= 4.0:
            raise ValueError(f"crop_margin must be in [1, 4], got {crop_margin}")
        self.style = style
        self.crop = crop
        self.crop_margin = float(crop_margin)
        self.crop_extent_mm = float(crop_extent_mm)
        self.device = torch.device(device)
        self.rig: Rig = make_rig(num_cameras, radius_mm=rig_radius_mm, fov_deg=fov_deg, seed=self.seed)
        # Background textures: cover every crop ray (hand centre within ~80 mm of the origin, camera
        # jitter, crop half-diagonal) at about one texel per crop pixel.
        distance = float(self.rig.centers.norm(dim=-1).min())
        widest, typical = (300.0, 170.0) if crop == "joints" else (self.crop_extent_mm, self.crop_extent_mm)
        half_angle = math.atan(80.0 / (distance - 80.0)) + math.radians(6.0)
        half_angle += math.atan(widest / math.sqrt(2.0) / (distance - 80.0))
        focal_px = self.image_size * distance / typical
        self.appearance = Appearance(
            style,
            seed=self.seed,
            num_cameras=self.num_cameras,
            image_size=self.image_size,
            coverage=math.tan(min(half_angle, math.radians(75.0))),
            texels_per_unit=focal_px,
        )
        # About 256k pixels per rendering group on CPU (temporaries stay small); big groups on GPU.
        self.group_size = max(1, 2**18 // self.image_size**2) if self.device.type == "cpu" else 1024
        self._subjects: dict[int, Any] = {}
        self._joints: dict[tuple[int, int], Tensor] = {}
        self._shared_sequences: list[_SharedSequences] = []
        self._objects: dict[tuple[int, int], np.ndarray] = {}

    def config(self) -> dict[str, Any]:
        """The arguments that determine the pixels (the disk cache key)."""
        return {
            "version": RENDER_VERSION,
            "style": self.style,
            "image_size": self.image_size,
            "num_cameras": self.num_cameras,
            "seed": self.seed,
            "crop": self.crop,
            "crop_margin": self.crop_margin,
            "crop_extent_mm": self.crop_extent_mm,
            "rig": [self.rig.K.tolist(), self.rig.R.tolist(), self.rig.t.tolist()],
        }

    def subject(self, subject: int) -> Any:
        """The :class:`~handssl.data.synthhands.motion.Subject` with global index ``subject`` (cached)."""
        if subject not in self._subjects:
            self._subjects[subject] = _motion().make_subject(self.seed, subject)
        return self._subjects[subject]

    def share_sequences(self, keys: Sequence[tuple[int, int]], num_frames: int) -> None:
        """Keep the motion of frames ``0 .. num_frames - 1`` of these ``(subject, sequence)`` keys in shared memory.

        Forked DataLoader workers then compute each sequence once for all processes (and for the
        workers of later epochs) instead of once per worker. Each dataset shares its own sequences; a
        world serving several datasets keeps them all.
        """
        num_frames = check_int("num_frames", num_frames, 1)
        if keys:
            self._shared_sequences.append(_SharedSequences(keys, num_frames))

    def sequence(self, subject: int, sequence: int, num_frames: int) -> Tensor:
        """``(num_frames, 21, 3)`` float32 world joints (mm) of frames ``0 .. num_frames - 1`` of a sequence (cached).

        Every frame's pose is a pure function of the seed, the subject, the sequence and the frame number
        (:func:`~handssl.data.synthhands.motion.sequence_joints`), so a longer sequence starts with the
        frames of a shorter one.
        """
        key = (int(subject), int(sequence))
        joints = self._joints.get(key)
        if joints is None or len(joints) < num_frames:
            joints = self._compute_sequence(key, num_frames)
            self._joints[key] = joints
        return joints[:num_frames]

    def _compute_sequence(self, key: tuple[int, int], num_frames: int) -> Tensor:
        """The joints of at least ``num_frames`` frames: from a shared table that holds them, else computed."""
        shared = next(
            (t for t in self._shared_sequences if key in t.slots and t.num_frames >= num_frames), None
        )
        if shared is not None and shared.filled[shared.slots[key]]:
            return shared.joints[shared.slots[key]].clone()
        length = num_frames if shared is None else shared.num_frames
        subject, sequence = key
        joints = _motion().sequence_joints(self.seed, self.subject(subject), sequence, list(range(length)))
        joints = torch.as_tensor(joints, dtype=torch.float32)
        if joints.shape != (length, NUM_JOINTS, 3) or not torch.isfinite(joints).all():
            raise RuntimeError(
                f"motion.sequence_joints returned {tuple(joints.shape)} (finite: "
                f"{bool(torch.isfinite(joints).all())}) for subject {subject}, sequence {sequence}"
            )
        if shared is not None:
            shared.joints[shared.slots[key]].copy_(joints)
            shared.filled[shared.slots[key]] = 1
        return joints

    def crop_extents(self, joints_world: Tensor, cameras: Tensor, center_world: Tensor) -> Tensor | float:
        """Side (mm, at the hand centre's depth) of each view's crop: fixed, or framing the joints' box.

        Args:
            joints_world: ``(N, 21, 3)`` float64 world joints (mm).
            cameras: ``(N,)`` rig camera indices.
            center_world: ``(N, 3)`` float64 point the crops look at.

        Returns:
            ``crop_extent_mm`` for ``crop="fixed"``; else an ``(N,)`` float64 tensor: ``crop_margin`` times
            the side of the square, centred on the look-at point, that holds every joint as seen from the
            camera (never below 60 mm).
        """
        if self.crop == "fixed":
            return self.crop_extent_mm
        R, t = self.rig.R[cameras], self.rig.t[cameras]
        center_cam = (R @ center_world.unsqueeze(-1)).squeeze(-1) + t
        look = look_at_rotation(center_cam)
        joints = world_to_camera(joints_world, look @ R, (look @ t.unsqueeze(-1)).squeeze(-1))
        half = (joints[..., :2] / joints[..., 2:]).abs().amax(dim=(1, 2))  # tan of the widest half-angle
        extent = 2.0 * half * self.crop_margin * center_cam.norm(dim=-1)
        return extent.clamp_min(_MIN_CROP_MM)

    def held_object(self, subject: int, sequence: int) -> np.ndarray:
        """The object a ``real_object`` sequence holds, in the palm frame (a pure function of the keys).

        Returns:
            ``(4,)`` float64: along-palm offset (mm, from the palm centre towards the fingers), angle of
            the axis from the knuckle line in the palm plane (rad), half-length (mm) and radius (mm).
        """
        key = (int(subject), int(sequence))
        if key not in self._objects:
            rng = np.random.default_rng([self.seed, 0x0B1, *key])
            self._objects[key] = np.array(
                [
                    rng.uniform(-15.0, 25.0),
                    rng.uniform(-0.6, 0.6),
                    rng.uniform(30.0, 55.0),
                    rng.uniform(15.0, 25.0),
                ]
            )
        return self._objects[key]

    def held_objects(
        self, joints_world: Tensor, subjects: Sequence[int], sequences: Sequence[int], finger_radius: Tensor
    ) -> Tensor:
        """``(N, 7)`` float64 world capsules ``(start, end, radius)`` of the held objects of ``N`` frames.

        The object (a can or a bottle) lies against the palmar side of the palm, across it, so it hides
        the palm and the bent fingers from some cameras and is hidden by the hand from others.
        """
        params = torch.from_numpy(np.stack([self.held_object(a, q) for a, q in zip(subjects, sequences)]))
        wrist, middle = joints_world[:, 0], joints_world[:, MIDDLE_MCP]
        forward = middle - wrist
        forward = forward / forward.norm(dim=-1, keepdim=True)
        lateral = joints_world[:, FINGERS["pinky"][0]] - joints_world[:, FINGERS["index"][0]]
        lateral = lateral - (lateral * forward).sum(-1, keepdim=True) * forward
        lateral = lateral / lateral.norm(dim=-1, keepdim=True)
        dorsal = torch.cross(lateral, forward, dim=-1)  # right hand: out of the back of the hand
        offset, angle, half_length, radius = (params[:, i : i + 1] for i in range(4))
        palm_half_thickness = PALM_RADIUS * finger_radius[:, None]
        center = (wrist + middle) / 2.0 + offset * forward - (palm_half_thickness + radius + 2.0) * dorsal
        axis = torch.cos(angle) * lateral + torch.sin(angle) * forward
        return torch.cat([center - half_length * axis, center + half_length * axis, radius], 1)

    def render(
        self,
        subjects: Sequence[int],
        sequences: Sequence[int],
        frames: Sequence[int],
        cameras: Sequence[int],
        device: str | torch.device | None = None,
    ) -> dict[str, Tensor]:
        """Render ``N`` views at once (the four sequences give one view each).

        Args:
            subjects: Global subject index of every view.
            sequences: Sequence of every view.
            frames: Frame of every view.
            cameras: Rig camera of every view.
            device: Ray-cast and shade there and return the pixels (``image``, ``background``, ``label``,
                ``depth``) there; ``None``: on the world's ``device``, pixels returned on the CPU. The
                geometry is computed and returned on the CPU either way (float64 maths, then float32).

        Returns:
            A dict of tensors: ``image`` and ``background`` ``(N, 3, S, S)`` uint8, ``label`` ``(N, S, S)``
            uint8 (0 background, 1 hand skin, 2 sleeve), ``depth`` ``(N, S, S)`` float32 mm (0 on the
            background), ``K``, ``R`` ``(N, 3, 3)``, ``t`` ``(N, 3)`` of the crop cameras (world -> crop),
            ``R_rot`` ``(N, 3, 3)`` (rig camera -> crop camera), ``joints3d`` (crop frame),
            ``joints3d_world`` ``(N, 21, 3)`` and ``joints2d`` ``(N, 21, 2)``; all float32.
        """
        n = len(frames)
        if not n == len(subjects) == len(sequences) == len(cameras):
            raise ValueError("subjects, sequences, frames and cameras must have the same length")
        bad = [f for f in frames if f < 0]
        if bad:
            raise ValueError(f"frame index must be >= 0: {bad[:5]}")
        bad = [c for c in cameras if not 0 <= c < self.num_cameras]
        if bad:
            raise ValueError(f"camera index out of range [0, {self.num_cameras}): {bad[:5]}")
        s = self.image_size
        frames_needed: dict[tuple[int, int], int] = {}
        for a, q, f in zip(subjects, sequences, frames):
            frames_needed[int(a), int(q)] = max(frames_needed.get((int(a), int(q)), 0), int(f) + 1)
        joints_world = torch.stack(
            [
                self.sequence(int(a), int(q), frames_needed[int(a), int(q)])[int(f)]
                for a, q, f in zip(subjects, sequences, frames)
            ]
        )
        world64 = joints_world.to(torch.float64)
        center = (world64.amax(1) + world64.amin(1)) / 2.0
        cams = torch.as_tensor(list(cameras), dtype=torch.long)
        crop = self.rig.crop_cameras(cams, center, s, self.crop_extents(world64, cams, center))
        joints_cam = world_to_camera(world64, crop.R, crop.t)
        radius = torch.tensor([self.subject(int(a)).finger_radius_mm for a in subjects], dtype=torch.float64)
        held = None
        if self.style == "real_object":
            held = self.held_objects(world64, subjects, sequences, radius)
            ends = world_to_camera(held[:, :6].reshape(n, 2, 3), crop.R, crop.t).reshape(n, 6)
            held = torch.cat([ends, held[:, 6:]], 1)
        shape = hand_shape(joints_cam, radius, held)
        views = ViewBatch(
            cameras=cams,
            subjects=torch.as_tensor(list(subjects), dtype=torch.long),
            sequences=torch.as_tensor(list(sequences), dtype=torch.long),
            frames=torch.as_tensor(list(frames), dtype=torch.long),
            R=crop.R,
            R_rot=crop.R_rot,
            K=crop.K,
            joints=joints_cam,
            skin_rgb=torch.stack([torch.as_tensor(self.subject(int(a)).skin_rgb) for a in subjects]),
            sleeve_rgb=torch.stack([torch.as_tensor(self.subject(int(a)).sleeve_rgb) for a in subjects]),
        )
        # Label of each primitive (index 0: background).
        to_label = {PART_SLEEVE: LABEL_SLEEVE, PART_OBJECT: LABEL_OBJECT}
        labels = torch.tensor(
            [LABEL_BACKGROUND] + [to_label.get(int(p), LABEL_HAND) for p in shape.part], dtype=torch.uint8
        )
        # Small groups keep every temporary in cache (results do not depend on the grouping).
        group = self.group_size
        target = self.device if device is None else torch.device(device)
        if device is not None and target.type != self.device.type:
            group = max(1, 2**18 // s**2) if target.type == "cpu" else 1024
        keep = device is not None
        parts = []
        for first in range(0, n, group):
            rows = slice(first, first + group)
            shape_g = HandShape(**{k: v[rows] for k, v in vars(shape).items()})
            views_g = ViewBatch(**{k: v[rows] for k, v in vars(views).items()})
            hits = raycast(shape_g.to(device=target), crop.K[rows].to(target), s)
            image, background = self.appearance.render(hits, shape_g, views_g)
            label = labels.to(hits.primitive.device).index_select(0, (hits.primitive + 1).flatten())
            label = label.view_as(hits.primitive)
            depth = torch.where(torch.isinf(hits.depth), 0.0, hits.depth)
            pixels = (image, background, label, depth)
            parts.append(pixels if keep else tuple(p.cpu() for p in pixels))
        image, background, label, depth = (torch.cat(p) if len(p) > 1 else p[0] for p in zip(*parts))
        f32 = torch.float32
        return {
            "image": image,
            "background": background,
            "label": label,
            "depth": depth,
            "K": crop.K.to(f32),
            "R": crop.R.to(f32),
            "t": crop.t.to(f32),
            "R_rot": crop.R_rot.to(f32),
            "joints3d": joints_cam.to(f32),
            "joints2d": project(joints_cam, crop.K).to(f32),
            "joints3d_world": joints_world,
        }


class _SharedSequences:
    """Motion of frames ``0 .. num_frames - 1`` of some sequences, in anonymous shared memory.

    Filled on first use by whichever process needs a sequence; forked workers see each other's writes (a
    slot is written joints first, then its flag, always with the same values). Pickling (a spawned
    worker) gives an empty table of the same sequences in that process's own memory.
    """

    def __init__(self, keys: Sequence[tuple[int, int]], num_frames: int) -> None:
        self.keys = list(dict.fromkeys((int(a), int(q)) for a, q in keys))
        self.num_frames = num_frames
        self.slots = {key: i for i, key in enumerate(self.keys)}
        flags = -(-len(self.keys) // 64) * 64
        count = len(self.keys) * num_frames * NUM_JOINTS * 3
        self._buffer = mmap.mmap(-1, flags + count * 4)
        self.filled = torch.frombuffer(self._buffer, dtype=torch.uint8, count=len(self.keys))
        joints = torch.frombuffer(self._buffer, dtype=torch.float32, count=count, offset=flags)
        self.joints = joints.view(-1, num_frames, NUM_JOINTS, 3)

    def __getstate__(self) -> dict[str, Any]:
        return {"keys": self.keys, "num_frames": self.num_frames}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["keys"], state["num_frames"])  # type: ignore[misc]
