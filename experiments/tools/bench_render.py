"""Benchmark the SynthHands renderer: images per second, alone in batches and through a DataLoader.

Examples::

    python experiments/tools/bench_render.py --size 64 --seconds 3
    python experiments/tools/bench_render.py --size 64 128 256 --device cuda --workers 0

The renderer rows time ``SynthHandsWorld.render`` on batches of random (subject, sequence, frame,
camera) views (motion precomputed, nothing cached). The DataLoader rows time a shuffled pass over a
``SynthHands`` dataset (first pass: every view rendered; second pass: served from the in-memory cache).
Wall-clock seconds; on a shared machine also look at the CPU seconds column.
"""

from __future__ import annotations

import argparse
import csv
import os
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from handssl.data.synthhands import STYLES, SynthHands, SynthHandsWorld


def bench_renderer(style: str, size: int, batch: int, device: str, seconds: float) -> tuple[float, float]:
    world = SynthHandsWorld(style=style, image_size=size, device=device)
    rng = np.random.default_rng(0)

    def keys() -> tuple[list[int], ...]:
        return tuple(rng.integers(0, hi, batch).tolist() for hi in (4, 4, 64, world.num_cameras))

    for a in range(4):  # motion and textures are set-up costs, not rendering
        for q in range(4):
            world.sequence(a, q, 64)
    world.render(*keys())
    images, wall, cpu = 0, 0.0, 0.0
    while wall < seconds or images < 2 * batch:
        args = keys()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        world.render(*args)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        images += batch
    return images / wall, images / cpu


def bench_loader(
    style: str, size: int, batch: int, device: str, workers: int, items: int, lean: bool
) -> tuple[float, float]:
    frames = 64
    subjects = max(1, items // (4 * frames))
    dataset = SynthHands(
        world=SynthHandsWorld(style=style, image_size=size, device=device),
        num_subjects=subjects,
        sequences_per_subject=4,
        frames_per_sequence=frames,
        cache_mb=4096,
        extra_keys=[] if lean else None,
    )
    loader = DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    rates = []
    for _ in range(2):
        t0, count = time.perf_counter(), 0
        for sample in loader:
            count += sample["image"].shape[0]
        rates.append(count / (time.perf_counter() - t0))
    return rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, nargs="+", default=[64, 128, 256], help="image sizes (pixels)")
    parser.add_argument("--batch", type=int, default=256, help="views per render call / DataLoader batch")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--style", nargs="+", default=list(STYLES), choices=STYLES)
    parser.add_argument("--seconds", type=float, default=3.0, help="minimum timing per renderer row")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (0 on cuda)")
    parser.add_argument("--items", type=int, default=4096, help="DataLoader dataset size (views)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    parser.add_argument("--no-loader", action="store_true", help="only time the renderer")
    parser.add_argument("--lean", action="store_true", help="loader samples without mask/depth/background")
    parser.add_argument("--csv", default=None, help="also write the table to this CSV file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workers = 0 if args.device.startswith("cuda") else args.workers

    rows = []
    header = f"{'style':<10} {'size':>5} {'render img/s':>13} {'per cpu-s':>10} {'loader 1st':>11} {'loader 2nd':>11}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"device={args.device} batch={args.batch} workers={workers} threads={args.threads} "
        f"cpus={os.cpu_count()} load={load:.1f} lean={args.lean}"
    )
    print(header)
    print("-" * len(header))
    for size in args.size:
        for style in args.style:
            render_rate, cpu_rate = bench_renderer(style, size, args.batch, args.device, args.seconds)
            first = second = float("nan")
            if not args.no_loader:
                first, second = bench_loader(
                    style, size, args.batch, args.device, workers, args.items, args.lean
                )
            rows.append((style, size, render_rate, cpu_rate, first, second))
            print(
                f"{style:<10} {size:>5} {render_rate:>13.0f} {cpu_rate:>10.0f} {first:>11.0f} {second:>11.0f}",
                flush=True,
            )
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(
                [
                    "style",
                    "size",
                    "render_img_s",
                    "render_img_per_cpu_s",
                    "loader_first_img_s",
                    "loader_cached_img_s",
                ]
            )
            writer.writerows(rows)


if __name__ == "__main__":
    main()
