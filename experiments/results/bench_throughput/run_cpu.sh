#!/usr/bin/env bash
# The README's CPU throughput table: one CSV per task and size (a finished one is skipped, so a rerun
# continues). Run on idle cores: bash experiments/results/bench_throughput/run_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=experiments/results/bench_throughput
for task in supervised nvs semihand; do
  frames=256; [ "$task" = supervised ] && frames=1024
  for size in 64 128; do
    csv=$out/cpu_${task}_${size}.csv
    [ -s "$csv" ] && continue
    python experiments/tools/bench_throughput.py --device cpu --tasks $task --sizes $size --frames $frames \
      --epochs 3 --steps 20 --warmup 3 --out "$csv.part" > "$out/cpu_${task}_${size}.log" 2>&1
    mv "$csv.part" "$csv"
  done
done
