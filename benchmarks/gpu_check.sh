#!/usr/bin/env bash
# Issue 9's four target rows, issue 12's ViT-B/16 and issue 20's EVA02 / ConvNeXt rows on a lent GPU machine, one prepared run (docs/gpu.md):
#   here:   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#             --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#             -d .whl open_clip_torch timm ftfy wcwidth safetensors
#   there:  bash benchmarks/gpu_check.sh        (the device tool's run, with carry [".whl"])
# Prints the step-only table (train / inference / mining at the paper's sizes), the input pipeline table
# (16 workers) and the end-to-end table (train and eval from PNGs on disk, validation share), in that order.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ! python3 -c "import open_clip" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl
fi
export PYTHONPATH="$PWD/.site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
bash benchmarks/run_all.sh --iters 20
python3 benchmarks/bench_loader.py --images 16 --workers 16 --batch 8
python3 benchmarks/bench_e2e.py --workers 16 --iters 80 --warmup 20
# Issue 12: the same three rows for CLIP ViT-B/16 (bf16, SDPA attention inside open_clip's blocks)
python3 benchmarks/bench_train.py --backbone ViT-B-16 --no-header --iters 20
python3 benchmarks/bench_inference.py --backbone ViT-B-16 --no-header --iters 20
python3 benchmarks/bench_mining.py --backbone ViT-B-16 --no-header
# Issue 19: evaluation throughput with test-time augmentation (RN50, 1024x2048, bf16): flip, 3 scales, both
python3 benchmarks/bench_inference.py --no-header --flip --iters 10
python3 benchmarks/bench_inference.py --no-header --scales 0.75 1 1.25 --iters 10
python3 benchmarks/bench_inference.py --no-header --flip --scales 0.75 1 1.25 --iters 10
# Issue 20: EVA02-CLIP-B/16 and ConvNeXt-B CLIP at the paper's sizes (bf16, batch 8, 768 crops; inference
# 1024x2048; mining batch 16 of 768 crops, 100 PIN steps), then the presets' FLOP / memory table
python3 benchmarks/bench_train.py --backbone EVA02-B-16 --no-header --iters 20
python3 benchmarks/bench_inference.py --backbone EVA02-B-16 --no-header --iters 20
python3 benchmarks/bench_mining.py --backbone EVA02-B-16 --no-header
python3 benchmarks/bench_train.py --backbone convnext_base_w --no-header --iters 20
python3 benchmarks/bench_inference.py --backbone convnext_base_w --no-header --iters 20
python3 benchmarks/bench_mining.py --backbone convnext_base_w --no-header
python3 benchmarks/bench_train.py --backbone EVA02-L-14 --size 756 --no-header --iters 10
python3 benchmarks/count_towers.py
# Issue 29: famix benchmark's CUDA rows: RN50 (random weights) at 1024x2048, batch 1: eager, torch.compile and
# TorchScript in fp32 / bf16 / fp16 autocast; ONNX Runtime (its CUDA provider, TensorRT's where installed)
# fp32 and int8; mIoU on synthetic scenes only checks that every variant computes the same classes
python3 - <<'PY'
from famix.config import ModelConfig
from famix.engine.checkpoint import save_checkpoint
from famix.models.build import build_segmenter
cfg = ModelConfig(backbone="RN50")
save_checkpoint("/tmp/famix-rn50.pt", model_state=build_segmenter(cfg, seed=0).state_dict(),
                config={"model": vars(cfg), "run": {"amp": "auto"}, "data": {"train": "synthetic:day:40:0:size=512"}},
                cur_itrs=0, best_score=0)
PY
python3 -m famix benchmark /tmp/famix-rn50.pt --device cuda --data synthetic:day:8:7:size=512 \
  --size 1024x2048 --batch 1 --precisions fp32 bf16 fp16 --calibration-images 8 --out /tmp/famix-rn50.benchmark --force
cat /tmp/famix-rn50.benchmark/benchmark.md
