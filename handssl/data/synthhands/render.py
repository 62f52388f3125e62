"""Analytic ray casting of a hand made of capsules and rounded triangles: exact depth, mask, normals.

The hand (:func:`hand_shape`) is built from the 21 canonical joints: capsules (a segment plus a radius)
for the phalanges (three per finger, two for the thumb), the thenar, the knuckle row, the heel and the
edges of the palm, a thumb web, a bare wrist and a forearm sleeve; and two *rounded triangles* (a triangle
thickened by a radius) that make the palm a flat slab. The rounded triangles' rims are capsules of the
same radius, so only their two flat faces are ray-cast here.

:func:`raycast` shoots one ray per pixel centre of a pinhole camera (no distortion, no skew; the crop
cameras of :func:`handssl.geometry.crop_camera` are like that) and keeps the nearest hit. Only the pixels
inside each primitive's exact projected bounding box are tested, so the work grows with the hand's area on
screen, not with the number of primitives times the image; batched torch, CPU or GPU.

Bitwise determinism: the per-pixel work uses only IEEE-exact float32 operations (``+ - * /``, ``sqrt``,
comparisons) element by element, so a pixel's value does not depend on which other images were rendered
in the same batch. The set-up per primitive (not per pixel) runs in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from handssl.skeleton import FINGERS, MIDDLE_MCP, NUM_JOINTS

__all__ = [
    "BACKGROUND",
    "NUM_CAPSULES",
    "NUM_PRIMITIVES",
    "NUM_TRIANGLES",
    "PALM_RADIUS",
    "PART_FINGER",
    "PART_FINGERTIP",
    "PART_FOREARM",
    "PART_OBJECT",
    "PART_PALM",
    "PART_SLEEVE",
    "PRIMITIVE_PART",
    "HandShape",
    "RayHits",
    "hand_shape",
    "raycast",
]

BACKGROUND = -1
"""Primitive index of a pixel whose ray hits nothing."""

PART_PALM, PART_FINGER, PART_FINGERTIP, PART_FOREARM, PART_SLEEVE, PART_OBJECT = range(6)
"""Material of a primitive: palm, finger (proximal/middle phalanx), fingertip (distal phalanx, carries
the nail), bare forearm skin, sleeve, a held object. Palm to forearm is skin (the hand mask)."""

# Radius of each finger's phalanges relative to Subject.finger_radius_mm (proximal, middle, distal).
_FINGER_SCALE = {"index": 1.0, "middle": 1.02, "ring": 0.95, "pinky": 0.82}
_PHALANX_SCALE = (1.0, 0.9, 0.8)
PALM_RADIUS = 1.35  # half-thickness of the palm slab, x finger radius
_WRIST_WIDTH = 0.5  # wrist-side palm anchors spread this fraction of the knuckle row's spread
_FOREARM_LENGTH_MM = 55.0
_SLEEVE_LENGTH_MM = 220.0
_NEAR_MM = 1.0  # hits closer to the camera than this are ignored

_INDEX, _MIDDLE, _RING, _PINKY = (FINGERS[f][0] for f in ("index", "middle", "ring", "pinky"))


def _build_layout() -> tuple[list[tuple], list[int], list[tuple]]:
    """Recipes: capsules ``(a, b, radius_scale)`` with their materials, and palm triangles ``(p0, p1, p2)``.

    Points are ``("joint", j)``, ``("anchor", j)`` (the wrist-side palm anchor of the finger whose MCP is
    ``j``), ``("mid", j)`` (half-way from that anchor to MCP ``j``) or ``("arm", mm)`` (on the forearm
    axis, ``mm`` from the wrist).
    """
    capsules: list[tuple] = []
    parts: list[int] = []
    for finger, scale in _FINGER_SCALE.items():
        mcp, pip, dip, tip = FINGERS[finger]
        for (p, c), s, part in zip(
            ((mcp, pip), (pip, dip), (dip, tip)), _PHALANX_SCALE, (PART_FINGER, PART_FINGER, PART_FINGERTIP)
        ):
            capsules.append((("joint", p), ("joint", c), scale * s))
            parts.append(part)
    cmc, t_mcp, t_ip, t_tip = FINGERS["thumb"]
    palm = PALM_RADIUS
    capsules += [
        (("joint", t_mcp), ("joint", t_ip), 1.08),
        (("joint", t_ip), ("joint", t_tip), 0.95),
        (("joint", cmc), ("joint", t_mcp), 1.25),  # thenar, distal part
        (("anchor", _INDEX), ("joint", cmc), 1.35),  # thenar, wrist part
        (("joint", cmc), ("mid", _INDEX), 1.2),  # thenar, towards the palm
        (("joint", t_mcp), ("joint", _INDEX), 0.55),  # thumb web
        # Rims of the palm slab (same radius as the slab) and the middle/ring metacarpals, which bulge
        # out of it when the palm cups.
        (("anchor", _INDEX), ("joint", _INDEX), palm),
        (("anchor", _PINKY), ("joint", _PINKY), palm),
        (("joint", _INDEX), ("joint", _PINKY), palm),  # knuckle row
        (("anchor", _INDEX), ("anchor", _PINKY), palm),  # heel
        (("anchor", _INDEX), ("joint", _PINKY), palm),  # diagonal shared by the two triangles
        (("anchor", _MIDDLE), ("joint", _MIDDLE), 0.9 * palm),
        (("anchor", _RING), ("joint", _RING), 0.9 * palm),
        (("joint", 0), ("arm", _FOREARM_LENGTH_MM), 2.1),  # bare wrist
        (("arm", _FOREARM_LENGTH_MM - 5.0), ("arm", _FOREARM_LENGTH_MM + _SLEEVE_LENGTH_MM), 3.2),  # sleeve
    ]
    parts += [PART_FINGER, PART_FINGERTIP] + [PART_PALM] * 11 + [PART_FOREARM, PART_SLEEVE]
    triangles = [
        (("anchor", _INDEX), ("joint", _INDEX), ("joint", _PINKY)),
        (("anchor", _INDEX), ("joint", _PINKY), ("anchor", _PINKY)),
    ]
    return capsules, parts, triangles


_CAPSULES, _CAPSULE_PARTS, _TRIANGLES = _build_layout()
NUM_CAPSULES = len(_CAPSULES)
"""Capsules ``M`` of a hand (primitive indices ``0 .. M-1``)."""
NUM_TRIANGLES = len(_TRIANGLES)
"""Rounded palm triangles of a hand (primitive indices ``M .. M+T-1``)."""
NUM_PRIMITIVES = NUM_CAPSULES + NUM_TRIANGLES
"""All primitives of a hand."""
PRIMITIVE_PART: tuple[int, ...] = tuple(_CAPSULE_PARTS) + (PART_PALM,) * NUM_TRIANGLES
"""Material (``PART_*``) of each primitive."""


@dataclass
class HandShape:
    """A batch of hands, one per image, in that image's camera frame (or any common frame).

    Attributes:
        start: ``(N, M, 3)`` first end point of each capsule axis, mm.
        end: ``(N, M, 3)`` second end point, mm (may equal ``start``: a sphere).
        radius: ``(N, M)`` capsule radii in mm (positive).
        triangles: ``(N, T, 3, 3)`` palm triangle corners, mm.
        triangle_radius: ``(N, T)`` half-thickness of each rounded triangle, mm.
        dorsal: ``(N, M + T, 3)`` unit vector towards the back of the hand at each primitive (the side of
            the nails), for the nail and palm colouring.
    """

    start: Tensor
    end: Tensor
    radius: Tensor
    triangles: Tensor
    triangle_radius: Tensor
    dorsal: Tensor

    @property
    def num_objects(self) -> int:
        """Held-object capsules appended after the hand's :data:`NUM_CAPSULES` capsules."""
        return self.radius.shape[1] - NUM_CAPSULES

    @property
    def part(self) -> Tensor:
        """``(M + T,)`` int64 material of each primitive (:data:`PRIMITIVE_PART`, objects after the capsules)."""
        parts = _CAPSULE_PARTS + [PART_OBJECT] * self.num_objects + [PART_PALM] * NUM_TRIANGLES
        return torch.tensor(parts, dtype=torch.long, device=self.radius.device)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> HandShape:
        """Cast the tensors to ``dtype`` and move them to ``device``."""
        return HandShape(**{k: v.to(device=device, dtype=dtype) for k, v in vars(self).items()})


def _normalize(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-9)


def hand_shape(
    joints: Tensor, finger_radius_mm: Tensor | float, held_object: Tensor | None = None
) -> HandShape:
    """Build the primitive hand (a right hand) of each joint set, in the joints' own frame.

    Fingertip joints are the centres of the distal caps (the finger surface extends one tip radius beyond
    them), so every joint lies inside the hand's volume.

    Args:
        joints: ``(N, 21, 3)`` canonical joints in mm (any frame, e.g. a camera's).
        finger_radius_mm: ``(N,)`` or scalar radius of the index finger's proximal phalanx, in mm; every
            other radius scales with it.
        held_object: Optional ``(N, 7)`` capsule ``(start xyz, end xyz, radius)`` in the joints' frame (mm),
            appended as primitive :data:`NUM_CAPSULES` with material :data:`PART_OBJECT`; it occludes the
            hand by depth like any other primitive.

    Returns:
        The :class:`HandShape` (same dtype and device as ``joints``).
    """
    if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3):
        raise ValueError(f"joints must be (N, {NUM_JOINTS}, 3), got {tuple(joints.shape)}")
    n = joints.shape[0]
    radius = torch.as_tensor(finger_radius_mm, dtype=joints.dtype, device=joints.device).expand(n)
    wrist, middle = joints[:, 0], joints[:, MIDDLE_MCP]
    forward = _normalize(middle - wrist)
    lateral = joints[:, _PINKY] - joints[:, _INDEX]
    lateral = _normalize(lateral - (lateral * forward).sum(-1, keepdim=True) * forward)
    # Right hand: (index -> pinky) x (wrist -> fingers) points out of the back of the hand.
    dorsal_palm = torch.cross(lateral, forward, dim=-1)
    thumb_side = _normalize(dorsal_palm - lateral)  # the thumb nail faces back and outwards
    thumb = set(FINGERS["thumb"])

    def point(spec: tuple) -> Tensor:
        kind, value = spec
        if kind == "joint":
            return joints[:, value]
        if kind == "arm":
            return wrist - value * forward
        anchor = wrist + _WRIST_WIDTH * (joints[:, value] - middle)
        return anchor if kind == "anchor" else 0.5 * (anchor + joints[:, value])

    starts, ends, scales, dorsals = [], [], [], []
    for (a_spec, b_spec, scale), part in zip(_CAPSULES, _CAPSULE_PARTS):
        a, b = point(a_spec), point(b_spec)
        dorsal = dorsal_palm
        if part in (PART_FINGER, PART_FINGERTIP):
            axis = _normalize(b - a)
            if a_spec[1] in thumb and b_spec[1] in thumb:
                dorsal = _normalize(thumb_side - (thumb_side * axis).sum(-1, keepdim=True) * axis)
            else:  # the flexion axis is ~lateral, so this follows the finger as it curls
                dorsal = _normalize(torch.cross(lateral, axis, dim=-1))
        starts.append(a)
        ends.append(b)
        scales.append(scale)
        dorsals.append(dorsal)
    radii = radius[:, None] * torch.tensor(scales, dtype=joints.dtype, device=joints.device)
    if held_object is not None:
        held_object = torch.as_tensor(held_object, dtype=joints.dtype, device=joints.device)
        if held_object.shape != (n, 7):
            raise ValueError(f"held_object must be ({n}, 7), got {tuple(held_object.shape)}")
        starts.append(held_object[:, 0:3])
        ends.append(held_object[:, 3:6])
        radii = torch.cat([radii, held_object[:, 6:7]], 1)
        dorsals.append(dorsal_palm)
    dorsals += [dorsal_palm] * NUM_TRIANGLES
    triangles = torch.stack([torch.stack([point(c) for c in corners], 1) for corners in _TRIANGLES], 1)
    return HandShape(
        start=torch.stack(starts, 1),
        end=torch.stack(ends, 1),
        radius=radii,
        triangles=triangles,
        triangle_radius=(radius * PALM_RADIUS)[:, None].expand(n, NUM_TRIANGLES).clone(),
        dorsal=torch.stack(dorsals, 1),
    )


@dataclass
class RayHits:
    """Result of :func:`raycast` for ``N`` images of ``S x S`` pixels.

    Attributes:
        depth: ``(N, S, S)`` float32 z-depth of the nearest surface in mm, ``inf`` on the background.
        primitive: ``(N, S, S)`` int64 primitive seen (``0 .. M+T-1``), :data:`BACKGROUND` (-1) if none.
        fg_index: ``(P,)`` int64 flat indices into ``N * S * S`` of the foreground pixels, ascending.
        fg_point: ``(P, 3)`` float32 camera-frame surface point of each foreground pixel, mm.
        fg_normal: ``(P, 3)`` float32 unit outward normal there.
        fg_axial: ``(P,)`` float32 position along a capsule's axis (0 at ``start``, 1 at ``end``; 0 on
            triangles).
        fg_primitive: ``(P,)`` int64 flat primitive index ``n * (M + T) + k`` of each foreground pixel.
    """

    depth: Tensor
    primitive: Tensor
    fg_index: Tensor
    fg_point: Tensor
    fg_normal: Tensor
    fg_axial: Tensor
    fg_primitive: Tensor

    @property
    def mask(self) -> Tensor:
        """``(N, S, S)`` bool foreground mask."""
        return self.primitive >= 0

    def normal_map(self) -> Tensor:
        """``(N, 3, S, S)`` dense normals (zero on the background)."""
        n, s, _ = self.depth.shape
        out = torch.zeros(n * s * s, 3, dtype=self.fg_normal.dtype, device=self.fg_normal.device)
        out[self.fg_index] = self.fg_normal
        return out.view(n, s, s, 3).permute(0, 3, 1, 2)


def _pixel_range(center: Tensor, coord: int, radius: Tensor, focal: Tensor, principal: Tensor) -> tuple:
    """Exact pixel interval covered by the projection of spheres along image axis ``coord`` (float64).

    The tangent planes ``x = k z`` of a sphere (centre ``c``, radius ``r``) satisfy
    ``k = (c_x c_z ± r sqrt(c_x² + c_z² - r²)) / (c_z² - r²)``. Returns ``(lo, hi, in_front)``.
    """
    cx, cz = center[..., coord], center[..., 2]
    denom = cz * cz - radius * radius
    in_front = cz > radius + _NEAR_MM
    root = torch.sqrt((cx * cx + denom).clamp_min(0.0))
    safe = torch.where(in_front, denom, torch.ones_like(denom))
    return (
        focal * (cx * cz - radius * root) / safe + principal,
        focal * (cx * cz + radius * root) / safe + principal,
        in_front,
    )


def _tile_boxes(centers: list[Tensor], radius: Tensor, K: Tensor, s: int, tile: int) -> tuple[Tensor, Tensor]:
    """Tiles touched by primitives that are convex hulls of spheres of a common radius.

    Args:
        centers: Sphere centres, each ``(N, P, 3)``.
        radius: ``(N, P)`` radii.
        K: ``(N, 3, 3)`` intrinsics.
        s: Image side in pixels.
        tile: Tile side in pixels.

    Returns:
        ``(3, N*P)`` rows (first tile column, first tile row, tile columns) and ``(N*P,)`` tile counts.
    """
    firsts, sizes = [], []
    for coord in (0, 1):
        focal, principal = K[:, coord, coord, None], K[:, coord, 2, None]
        ranges = [_pixel_range(c, coord, radius, focal, principal) for c in centers]
        lo = torch.stack([r[0] for r in ranges]).amin(0)
        hi = torch.stack([r[1] for r in ranges]).amax(0)
        in_front = torch.stack([r[2] for r in ranges]).all(0)
        lo = torch.where(in_front, lo, torch.zeros_like(lo))  # too close to the camera: whole image
        hi = torch.where(in_front, hi, torch.full_like(hi, s - 1.0))
        first = torch.ceil(lo - 1e-3).clamp(0, s).long()
        last = torch.floor(hi + 1e-3).clamp(-1, s - 1).long()
        empty = last < first
        first_tile = torch.div(first, tile, rounding_mode="floor")
        size = torch.div(last, tile, rounding_mode="floor") - first_tile + 1
        firsts.append(first_tile.reshape(-1))
        sizes.append(torch.where(empty, 0, size).reshape(-1))
    return torch.stack([firsts[0], firsts[1], sizes[0].clamp_min(1)]), sizes[0] * sizes[1]


def _capsule_footprints(shape: HandShape, K: Tensor) -> Tensor:
    """``(6, N*M)`` float64 conservative 2D footprints of the capsules: projected ends, radius, in-front flag.

    A sphere of radius ``r`` at ``c`` projects within ``r |c| / (c_z (c_z - r))`` (normalised units) of the
    projection of ``c``, and perspective maps the axis to a segment; so every pixel a capsule covers lies
    within ``f r max(|a|, |b|) / (z_min (z_min - r))`` pixels of its projected axis. Rows: ``u_a, v_a, u_b,
    v_b`` (pixels), that radius, and 1 where both ends are in front of the camera (else 0: no culling).
    """
    a, b = shape.start.to(torch.float64), shape.end.to(torch.float64)
    r = shape.radius.to(torch.float64)
    f = torch.maximum(K[:, 0, 0], K[:, 1, 1])[:, None]
    z_min = torch.minimum(a[..., 2], b[..., 2])
    in_front = z_min > r + _NEAR_MM
    safe = torch.where(in_front, z_min, r + 2.0 * _NEAR_MM)
    reach = f * r * torch.maximum(a.norm(dim=-1), b.norm(dim=-1)) / (safe * (safe - r))
    rows = []
    for end in (a, b):
        z = end[..., 2].clamp_min(1e-6)
        rows += [
            K[:, 0, 0, None] * end[..., 0] / z + K[:, 0, 2, None],
            K[:, 1, 1, None] * end[..., 1] / z + K[:, 1, 2, None],
        ]
    rows += [reach, in_front.to(torch.float64)]
    return torch.stack(rows).reshape(len(rows), -1)


def _near_axis(footprint: Tensor, pairs: Tensor, tile_u: Tensor, tile_v: Tensor, tile: int) -> Tensor:
    """Which (capsule, tile) candidates may hold a hit: the tile lies near the capsule's 2D footprint."""
    ua, va, ub, vb, reach, in_front = footprint.index_select(1, pairs)
    half = (tile - 1) / 2.0
    pu = tile_u.to(torch.float64) * tile + half - ua
    pv = tile_v.to(torch.float64) * tile + half - va
    du, dv = ub - ua, vb - va
    along = ((pu * du + pv * dv) / (du * du + dv * dv).clamp_min(1e-12)).clamp(0.0, 1.0)
    gap_u, gap_v = pu - along * du, pv - along * dv
    limit = reach + half * 1.4143 + 1.0
    return (in_front == 0) | (gap_u * gap_u + gap_v * gap_v <= limit * limit)


def _camera_rows(K: Tensor, p: int) -> list[Tensor]:
    """Pixel-to-ray coefficients ``1/fx, -px/fx, 1/fy, -py/fy`` per image, ``(N, p)`` float64 each.

    The ray through pixel ``(u, v)`` is ``(u / fx - px / fx, v / fy - py / fy, 1)``.
    """
    fx, fy, px, py = (K[:, i, j, None].expand(-1, p) for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))
    return [1.0 / fx, -px / fx, 1.0 / fy, -py / fy]


def _capsule_table(shape: HandShape, K: Tensor) -> Tensor:
    """``(16, N*M)`` float32 per-capsule constants: the ray-independent parts of the quadratics."""
    a = shape.start.to(torch.float64)
    ba = shape.end.to(torch.float64) - a
    b = a + ba
    r = shape.radius.to(torch.float64)
    baba = (ba * ba).sum(-1)
    ba_a = (ba * a).sum(-1)
    aa = (a * a).sum(-1)
    rr = r * r
    rows = [a[..., 0], a[..., 1], a[..., 2], ba[..., 0], ba[..., 1], ba[..., 2], baba, ba_a]
    rows += [baba * aa - ba_a * ba_a - rr * baba, aa - rr, (b * b).sum(-1) - rr, r]
    rows += _camera_rows(K, a.shape[1])
    return torch.stack(rows).reshape(len(rows), -1).to(torch.float32)


def _triangle_table(shape: HandShape, K: Tensor) -> Tensor:
    """``(21, N*T)`` float32 per-triangle constants: face normal, offsets, inward edge normals."""
    p = shape.triangles.to(torch.float64)
    r = shape.triangle_radius.to(torch.float64)
    normal = _normalize(torch.cross(p[:, :, 1] - p[:, :, 0], p[:, :, 2] - p[:, :, 0], dim=-1))
    rows = [normal[..., 0], normal[..., 1], normal[..., 2], (normal * p[:, :, 0]).sum(-1), r]
    for i, j in ((0, 1), (1, 2), (2, 0)):
        inward = _normalize(torch.cross(normal, p[:, :, j] - p[:, :, i], dim=-1))
        rows += [inward[..., 0], inward[..., 1], inward[..., 2], (inward * p[:, :, i]).sum(-1)]
    rows += _camera_rows(K, p.shape[1])
    return torch.stack(rows).reshape(len(rows), -1).to(torch.float32)


def _rays(u: Tensor, v: Tensor, ifx: Tensor, ox: Tensor, ify: Tensor, oy: Tensor) -> tuple[Tensor, Tensor]:
    """Ray direction ``(x, y, 1)`` through pixel centres (so the ray parameter is the z-depth)."""
    return u.to(torch.float32) * ifx + ox, v.to(torch.float32) * ify + oy


def _select(condition: Tensor, a: Tensor, b: Tensor | float) -> Tensor:
    """``torch.where(condition, a, b)`` for float32 ``a`` (and ``b``, or a float), bit for bit.

    On the CPU it runs as integer bit operations (``b ^ ((a ^ b) & -condition)``), which vectorise: torch's CPU
    ``where`` with a bool condition costs about twice as much per element, and the ray casting calls it on every
    (pixel, primitive) candidate. Elsewhere, or for other dtypes, it is ``torch.where``.
    """
    if condition.device.type != "cpu" or a.dtype != torch.float32:
        return torch.where(condition, a, b)
    other = b if isinstance(b, Tensor) else torch.tensor(b, dtype=torch.float32)
    if other.dtype != torch.float32:
        return torch.where(condition, a, b)
    a_bits, b_bits = a.view(torch.int32), other.view(torch.int32)
    mask = condition.to(torch.int32).neg_()
    return torch.bitwise_xor(b_bits, torch.bitwise_and(a_bits ^ b_bits, mask)).view(torch.float32)


def _hit_capsules(params: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Depth of the nearest hit of each (pixel, capsule) candidate, ``inf`` if none (after I. Quilez).

    Misses (negative discriminants) are masked explicitly; the square roots take ``|disc|`` because torch's CPU
    ``sqrt`` is 10-40x slower on inputs that are not positive, and a miss's root is never used.
    """
    ax, ay, az, bax, bay, baz, baba, ba_a, c_body, c_a, c_b, _, ifx, ox, ify, oy = params
    x, y = _rays(u, v, ifx, ox, ify, oy)
    rdrd = x * x + y * y + 1.0
    a_rd = ax * x + ay * y + az
    ba_rd = bax * x + bay * y + baz
    quad_a = baba * rdrd - ba_rd * ba_rd
    neg_quad_b = baba * a_rd - ba_a * ba_rd
    disc = neg_quad_b * neg_quad_b - quad_a * c_body
    hit = disc >= 0.0  # also False where disc is NaN
    t_body = (neg_quad_b - torch.sqrt(disc.abs())) / quad_a
    axial = t_body * ba_rd - ba_a
    body = hit & (axial > 0.0) & (axial < baba)
    # Otherwise the nearest hit, if any, is on the end sphere on the side where the body hit fell.
    below = axial <= 0.0
    cap_b = _select(below, a_rd, a_rd + ba_rd)  # minus the half-b of the sphere quadratic
    cap_disc = cap_b * cap_b - rdrd * _select(below, c_a, c_b)
    t_cap = (cap_b - torch.sqrt(cap_disc.abs())) / rdrd
    t = _select(body, t_body, _select(hit & (cap_disc > 0.0), t_cap, float("inf")))
    return _select(t > _NEAR_MM, t, float("inf"))


def _triangle_face(params: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Hit of the camera-facing face of rounded triangles.

    Returns:
        ``(t or inf, x, y, side)``: depth, ray direction and the face's side (its normal is ``side * normal``).
    """
    nx, ny, nz, offset, r = params[0], params[1], params[2], params[3], params[4]
    x, y = _rays(u, v, params[17], params[18], params[19], params[20])
    n_rd = nx * x + ny * y + nz
    side = (n_rd < 0.0).to(n_rd.dtype) * 2.0 - 1.0  # +1 or -1 exactly
    t = (offset + side * r) / n_rd
    qx, qy = t * x, t * y
    inside = n_rd != 0.0
    for k in range(3):
        ex, ey, ez, eo = params[5 + 4 * k], params[6 + 4 * k], params[7 + 4 * k], params[8 + 4 * k]
        inside = inside & (ex * qx + ey * qy + ez * t >= eo)
    t = _select(inside & (t > _NEAR_MM), t, float("inf"))
    return t, x, y, side


def _hit_triangles(params: Tensor, u: Tensor, v: Tensor) -> Tensor:
    return _triangle_face(params, u, v)[0]


def raycast(shape: HandShape, K: Tensor, image_size: int, max_candidates: int = 1 << 18) -> RayHits:
    """Ray-cast ``N`` hands through their pinhole cameras (one ray per pixel centre).

    Each primitive is tested against the pixels of the square tiles (4 or 8 pixels wide) that its exact
    projected bounding box touches.

    Args:
        shape: ``N`` hands in their cameras' frames (float64 recommended: the per-primitive set-up runs
            in float64, the per-pixel work in float32).
        K: ``(N, 3, 3)`` intrinsics (skew and distortion are not modelled).
        image_size: Side ``S`` of the square images in pixels.
        max_candidates: Work-group size: images are processed in groups of about this many
            (pixel, primitive) tests, which keeps the temporaries in cache. Results do not depend on it.

    Returns:
        The :class:`RayHits`.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    device = shape.start.device
    n, m = shape.radius.shape
    nt = shape.triangle_radius.shape[1]
    s = image_size
    tile = 4 if s <= 96 else 8
    K64 = torch.as_tensor(K, dtype=torch.float64, device=device)
    if K64.shape != (n, 3, 3):
        raise ValueError(f"K must be ({n}, 3, 3) for {n} hands, got {tuple(K64.shape)}")
    lanes = torch.arange(tile * tile, device=device)
    lane_u, lane_v = lanes % tile, torch.div(lanes, tile, rounding_mode="floor")
    kinds = []
    for table, centers, radius, count, offset, hit in (
        (_capsule_table(shape, K64), [shape.start, shape.end], shape.radius, m, 0, _hit_capsules),
        (
            _triangle_table(shape, K64),
            list(shape.triangles.unbind(2)),
            shape.triangle_radius,
            nt,
            m,
            _hit_triangles,
        ),
    ):
        centers64 = [c.to(torch.float64) for c in centers]
        boxes, counts = _tile_boxes(centers64, radius.to(torch.float64), K64, s, tile)
        footprint = _capsule_footprints(shape, K64) if hit is _hit_capsules else None
        kinds.append((table, boxes, counts, count, offset, hit, footprint))

    if m + nt > 255:
        raise ValueError(f"at most 255 primitives per hand are supported, got {m + nt}")
    # The z-buffer covers whole tiles (sp >= s pixels a side); the margin beyond s is cut off at the end.
    sp = -(-s // tile) * tile
    # One int64 z-buffer holds (depth bits << 8) | (255 - primitive): the bits of positive floats sort like
    # the floats, so a single scatter-min keeps the nearest hit and, on exact ties, the highest primitive.
    inf_bits = int(torch.tensor(float("inf"), dtype=torch.float32).view(torch.int32))
    zbuffer = torch.full((n * sp * sp,), (inf_bits << 8) | 255, dtype=torch.long, device=device)
    lane_offset = lane_v * sp + lane_u
    lane_u, lane_v = lane_u.to(torch.float32), lane_v.to(torch.float32)
    per_image = torch.stack([counts.view(n, count).sum(1) for _, _, counts, count, _, _, _ in kinds]).sum(0)
    per_image = per_image * (tile * tile)
    cumulative = torch.cumsum(per_image, 0).tolist()
    fg_parts: list[tuple[Tensor, ...]] = []
    start = 0
    while start < n:
        # The largest group of whole images whose candidate count stays within budget (at least one).
        budget = (cumulative[start - 1] if start else 0) + max_candidates
        stop = start + 1
        while stop < n and cumulative[stop] <= budget:
            stop += 1
        for table, boxes, counts, count, offset, hit, footprint in kinds:
            pairs, tile_u, tile_v = _blocks(boxes, counts, start * count, stop * count)
            if footprint is not None:  # drop the tiles of a slanted capsule's box that it cannot touch
                keep = torch.nonzero(_near_axis(footprint, pairs, tile_u, tile_v, tile)).squeeze(1)
                pairs, tile_u, tile_v = pairs[keep], tile_u[keep], tile_v[keep]
            u = (tile_u * tile).to(torch.float32)[:, None] + lane_u
            v = (tile_v * tile).to(torch.float32)[:, None] + lane_v
            t = hit(table.index_select(1, pairs)[:, :, None], u, v)
            image = torch.div(pairs, count, rounding_mode="floor")
            tag = (255 - offset - pairs + image * count)[:, None]
            pixel = (image * (sp * sp) + (tile_v * sp + tile_u) * tile)[:, None] + lane_offset
            key = (t.view(torch.int32).to(torch.long) << 8) | tag
            zbuffer.scatter_reduce_(0, pixel.reshape(-1), key.reshape(-1), reduce="amin")
        rows = slice(start * sp * sp, stop * sp * sp)
        group = zbuffer[rows].view(stop - start, sp, sp)[:, :s, :s].reshape(-1)
        fg_parts.append(_surface(kinds[0][0], kinds[1][0], group, start, m, nt, s))
        start = stop
    zbuffer = zbuffer.view(n, sp, sp)[:, :s, :s].reshape(-1)
    depth = (zbuffer >> 8).to(torch.int32).view(torch.float32)
    primitive = torch.where(torch.isinf(depth), BACKGROUND, 255 - (zbuffer & 255))
    if not fg_parts:  # no images
        fg_parts.append(_surface(kinds[0][0], kinds[1][0], zbuffer[:0], 0, m, nt, s))
    fg = [torch.cat(parts, 0) for parts in zip(*fg_parts)]
    return RayHits(
        depth=depth.view(n, s, s),
        primitive=primitive.view(n, s, s),
        fg_index=fg[0],
        fg_point=fg[1],
        fg_normal=fg[2],
        fg_axial=fg[3],
        fg_primitive=fg[4],
    )


def _blocks(boxes: Tensor, counts: Tensor, first: int, last: int) -> tuple[Tensor, Tensor, Tensor]:
    """Enumerate the tiles of primitives ``first:last``: ``(primitive, tile column, tile row)`` rows."""
    device = counts.device
    pair_counts = counts[first:last]
    total = int(pair_counts.sum())
    pairs = torch.repeat_interleave(torch.arange(first, last, device=device), pair_counts, output_size=total)
    offsets = torch.cumsum(pair_counts, 0) - pair_counts
    local = torch.arange(total, device=device) - offsets[pairs - first]
    u0, v0, width = boxes.index_select(1, pairs)
    return pairs, u0 + local % width, v0 + torch.div(local, width, rounding_mode="floor")


def _surface(
    capsules: Tensor, triangles: Tensor, zbuffer: Tensor, start: int, m: int, nt: int, s: int
) -> tuple[Tensor, ...]:
    """Surface point, normal, axial position and primitive of the foreground pixels of a group of images.

    ``zbuffer`` is the group's slice of the packed z-buffer; its first image is image ``start``.
    """
    depth_all = (zbuffer >> 8).to(torch.int32).view(torch.float32)
    index = torch.nonzero(~torch.isinf(depth_all)).squeeze(1)
    k = 255 - (zbuffer.index_select(0, index) & 255)
    t = depth_all.index_select(0, index)
    image = torch.div(index, s * s, rounding_mode="floor") + start
    rem = index % (s * s)
    v = torch.div(rem, s, rounding_mode="floor")
    u = rem % s
    index = index + start * s * s
    point = torch.empty(index.shape[0], 3, dtype=torch.float32, device=zbuffer.device)
    normal = torch.empty_like(point)
    axial = torch.zeros(index.shape[0], dtype=torch.float32, device=zbuffer.device)

    # index_select / index_copy_ rather than advanced indexing: the same values, several times faster on CPU.
    on_capsule = torch.nonzero(k < m).squeeze(1)
    image_c, k_c, u_c, v_c, tc = (column.index_select(0, on_capsule) for column in (image, k, u, v, t))
    ax, ay, az, bax, bay, baz, baba, _, _, _, _, _, ifx, ox, ify, oy = capsules.index_select(
        1, image_c * m + k_c
    )
    x, y = _rays(u_c, v_c, ifx, ox, ify, oy)
    cx, cy = tc * x, tc * y
    rel_x, rel_y, rel_z = cx - ax, cy - ay, tc - az
    along = ((rel_x * bax + rel_y * bay + rel_z * baz) / baba.clamp_min(1e-12)).clamp(0.0, 1.0)
    nx, ny, nz = rel_x - along * bax, rel_y - along * bay, rel_z - along * baz
    length = torch.sqrt(nx * nx + ny * ny + nz * nz).clamp_min(1e-6)
    point.index_copy_(0, on_capsule, torch.stack([cx, cy, tc], 1))
    normal.index_copy_(0, on_capsule, torch.stack([nx / length, ny / length, nz / length], 1))
    axial.index_copy_(0, on_capsule, along)

    on_triangle = torch.nonzero(k >= m).squeeze(1)
    image_t, k_t, u_t, v_t, tt = (column.index_select(0, on_triangle) for column in (image, k, u, v, t))
    params = triangles.index_select(1, image_t * nt + k_t - m)
    _, x, y, side = _triangle_face(params, u_t, v_t)
    point.index_copy_(0, on_triangle, torch.stack([tt * x, tt * y, tt], 1))
    normal.index_copy_(0, on_triangle, torch.stack([side * params[0], side * params[1], side * params[2]], 1))
    return index, point, normal, axial, image * (m + nt) + k
