"""Measure how many images per second a training step of a model consumes (no data loading).

The SynthHands renderer must deliver at least 10x this rate (see experiments/tools/bench_render.py).

    python experiments/tools/bench_train.py --model supervised --size 64 --batch 64 --steps 30
"""

from __future__ import annotations

import argparse
import time

import torch

from handssl.models import SupervisedModule
from handssl.models.options import Optimization


def fake_batch(batch: int, size: int) -> dict:
    joints3d = torch.randn(batch, 21, 3) * 40 + torch.tensor([0.0, 0.0, 500.0])
    return {
        "image": torch.rand(batch, 3, size, size),
        "joints3d": joints3d,
        "joints2d": torch.rand(batch, 21, 2) * size,
        "valid": torch.ones(batch, 21, dtype=torch.bool),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = SupervisedModule(optimizer=Optimization(lr=2e-3, scheduler="none")).to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = {k: v.to(args.device) for k, v in fake_batch(args.batch, args.size).items()}
    model.log = lambda *a, **k: None  # no trainer attached

    def step() -> None:
        optimizer.zero_grad()
        loss = model.training_step(batch, 0)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    rate = args.steps * args.batch / elapsed
    print("| model | size | batch | threads | device | train images/s |\n|---|---|---|---|---|---|")
    print(f"| supervised | {args.size} | {args.batch} | {args.threads} | {args.device} | {rate:.0f} |")


if __name__ == "__main__":
    main()
