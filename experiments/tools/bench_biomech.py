"""Benchmark biomechanical correction and the kinematic layer: poses per second, in batches.

Examples::

    python experiments/tools/bench_biomech.py
    python experiments/tools/bench_biomech.py --batch 4096 --seconds 2 --dtype float32 float64
    python experiments/tools/bench_biomech.py --device cuda --batch 4096 65536

Inputs are noisy feasible poses (forward kinematics of random in-limit angles, random bone lengths and
orientations, plus 5 mm Gaussian noise per coordinate), so every correction has work to do. Rows:

* ``correct``: :func:`handssl.biomech.correct` (palm registration + re-aimed chains; the default);
* ``correct+template``: the same with a bone-length template;
* ``correct reaim=False``: forward kinematics of the clamped inverse-kinematics parameters;
* ``inverse_kinematics`` / ``forward_kinematics``: the kinematic layer alone;
* ``angle+length loss fwd+bwd``: the two hinge losses with their backward pass.

Wall-clock poses per second, and poses per CPU-second of this process (on a shared machine the latter
is the fairer number; with one thread it is what an idle core would do).
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from collections.abc import Callable

import torch

from handssl import biomech, kinematics
from handssl.geometry import axis_angle_to_matrix

TARGET_POSES_PER_SECOND = 1e5


def make_poses(
    batch: int, dtype: torch.dtype, device: str, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    limits = kinematics.limits_tensor(torch.float64)
    angles = limits[..., 0] + (limits[..., 1] - limits[..., 0]) * torch.rand(
        batch, 20, 3, generator=generator, dtype=torch.float64
    )
    scale = 0.85 + 0.3 * torch.rand(batch, 1, generator=generator, dtype=torch.float64)
    lengths = kinematics.template_bone_lengths(torch.float64) * scale
    rotations = axis_angle_to_matrix(torch.randn(batch, 3, generator=generator, dtype=torch.float64))
    joints = kinematics.forward_kinematics(angles, lengths, rotations)
    joints = joints + 5.0 * torch.randn(joints.shape, generator=generator, dtype=torch.float64)
    return joints.to(dtype=dtype, device=device), lengths.to(dtype=dtype, device=device)


def time_it(fn: Callable[[], object], batch: int, seconds: float, device: str) -> tuple[float, float]:
    """Poses per wall-second and per CPU-second of ``fn`` (one warm-up call first)."""
    fn()
    poses, wall, cpu = 0, 0.0, 0.0
    while wall < seconds or poses < 3 * batch:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        poses += batch
    return poses / wall, poses / cpu


def loss_step(joints: torch.Tensor) -> None:
    joints = joints.detach().requires_grad_(True)
    (biomech.joint_angle_loss(joints) + biomech.bone_length_loss(joints)).backward()


def cases(joints: torch.Tensor, lengths: torch.Tensor) -> dict[str, Callable[[], object]]:
    params = kinematics.inverse_kinematics(joints)
    return {
        "correct": lambda: biomech.correct(joints),
        "correct+template": lambda: biomech.correct(joints, template=lengths),
        "correct reaim=False": lambda: biomech.correct(joints, reaim=False),
        "inverse_kinematics": lambda: kinematics.inverse_kinematics(joints),
        "forward_kinematics": lambda: kinematics.forward_kinematics(
            params.angles, params.bone_lengths, params.global_rot, params.root_mm
        ),
        "angle+length loss fwd+bwd": lambda: loss_step(joints),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1024, 4096], help="poses per call")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float64"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum timing per row")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--csv", default=None, help="also write the table to this CSV file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    header = f"{'function':<26} {'dtype':<8} {'batch':>6} {'poses/s':>10} {'per cpu-s':>10}"
    print(
        f"device={args.device} threads={args.threads} cpus={os.cpu_count()} target={TARGET_POSES_PER_SECOND:.0e}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        for batch in args.batch:
            joints, lengths = make_poses(batch, dtype, args.device)
            for name, fn in cases(joints, lengths).items():
                wall_rate, cpu_rate = time_it(fn, batch, args.seconds, args.device)
                rows.append((name, dtype_name, batch, wall_rate, cpu_rate))
                print(
                    f"{name:<26} {dtype_name:<8} {batch:>6} {wall_rate:>10.0f} {cpu_rate:>10.0f}", flush=True
                )
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["function", "dtype", "batch", "poses_per_s", "poses_per_cpu_s"])
            writer.writerows(rows)


if __name__ == "__main__":
    main()
