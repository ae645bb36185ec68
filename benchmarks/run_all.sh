#!/usr/bin/env bash
# All three speed benchmarks at the paper's sizes (meant for a GPU), as one markdown table on stdout;
# per-benchmark notes (exact per-step timings, FLOPs per PIN step) go to stderr.
#   bash benchmarks/run_all.sh [common flags passed to all three, e.g. --device cuda:1 or --iters 5]
set -euo pipefail
cd "$(dirname "$0")"
python bench_train.py "$@"                    # RN50 OS16, batch 8, 768x768, last-block freezing, famix mixing
python bench_inference.py --no-header "$@"    # RN50 OS16, batch 4, 1024x2048
python bench_mining.py --no-header "$@"       # RN50, 16 crops of 768, 3x3 grid, 100 PIN steps
