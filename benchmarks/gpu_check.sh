#!/usr/bin/env bash
# The GPU check of diffrl's scaling work, in one run on one GPU, with no download: a random model with Stable
# Diffusion v1.5's architecture (its 860M-parameter U-Net, VAE and CLIP ViT-L/14 text encoder; a byte-level stand-in
# tokenizer) and a random DINO ViT-S/16 are written to a temporary folder, then three benchmarks print:
#   1. s/step of DPG (+ DINO) and one-step DPG vs DreamBooth, bf16 autocast, 512 px, batch 1 (benchmarks/train_step.py)
#   2. peak training memory and s/step of the SD v1.5-layout U-Net with and without gradient checkpointing,
#      64 x 64 latents, batch 4 (train_step.py --memory)
#   3. images/s of env.rollout vs StableDiffusionPipeline at 512 px, batch 8, 25 DDIM steps, eta 0 and eta 1
#      (benchmarks/rollout_vs_pipeline.py; eta 1 also records every step's log-probability)
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine (designed to finish in < 8 minutes on an H200)
#   bash benchmarks/gpu_check.sh --smoke     # narrow widths, 64 px: checks the script itself on a CPU
#
# Needs diffrl's requirements (pyproject.toml) importable by $PYTHON (default: python3) and no network: the repo root
# is put on PYTHONPATH, nothing is installed. Prints the wall time of every stage.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

if [[ "${1:-}" == "--smoke" ]]; then
  width=32 size=64 repeats=2 memory=(--width 16 --latent-size 16 --memory-batch 2) threads=(--threads 2)
elif [[ $# -eq 0 ]]; then
  width=320 size=512 repeats=5 memory=(--width 320 --latent-size 64 --memory-batch 4) threads=()
else
  echo "usage: bash benchmarks/gpu_check.sh [--smoke]" >&2
  exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
started=$SECONDS
stage() { echo; echo "== $1 (at $((SECONDS - started)) s)"; }

stage "0. random SD v1.5-architecture model (width $width, $size px) and DINO ViT-S/16"
"$PYTHON" - "$work" "$width" "$size" <<'EOF'
import json, sys
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from diffrl.models.tiny import TINY_DINO_KWARGS, build_sd15_shaped

work, width, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
print(f"torch {torch.__version__}, CUDA: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
build_sd15_shaped(work / "sd", width=width, image_size=size)
kwargs = {} if width == 320 else TINY_DINO_KWARGS  # ViT-S/16 itself on the GPU
torch.manual_seed(0)
dino = timm.create_model("vit_small_patch16_224.dino", pretrained=False, num_classes=0, **kwargs)
save_file({k: v.contiguous() for k, v in dino.state_dict().items()}, str(work / "dino.safetensors"))
(work / "dino_kwargs.json").write_text(json.dumps(kwargs))
(work / "instance").mkdir()
for index in range(4):
    pixels = np.random.default_rng(index).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(work / "instance" / f"{index}.png")
EOF

stage "1. DPG vs DreamBooth step time, bf16"
"$PYTHON" benchmarks/train_step.py --pretrained "$work/sd" --instance-dir "$work/instance" \
  --dino-weights "$work/dino.safetensors" --dino-kwargs "$(cat "$work/dino_kwargs.json")" \
  --mixed-precision bf16 --repeats "$repeats" --warmup 2 "${threads[@]}"

stage "2. U-Net gradient checkpointing: peak memory and step time"
"$PYTHON" benchmarks/train_step.py --memory "${memory[@]}" --repeats "$repeats" "${threads[@]}"

for eta in 0 1; do
  stage "3. env rollout vs pipeline, batch 8, 25 steps, eta $eta"
  "$PYTHON" benchmarks/rollout_vs_pipeline.py --pretrained "$work/sd" --batch-size 8 --steps 25 --eta "$eta" \
    --repeats "$repeats" "${threads[@]}"
done
stage "done"
