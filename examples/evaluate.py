"""Score a Stable Diffusion model with the DreamBench protocol through the library API.

    # real models (local folders/files; nothing is downloaded when they are local)
    python examples/evaluate.py --pretrained SD_FOLDER --dreambench ../shared/dreambench \
        --dino-weights dino_vits16.safetensors --clip CLIP_FOLDER --subject dog --out eval/dog

    # an offline smoke run on tiny random models (numbers are meaningless, the pipeline is the real one)
    python examples/evaluate.py --tiny --dreambench ../shared/dreambench --subject dog --out /tmp/eval-tiny

The command-line equivalent is `diffrl evaluate` (see `diffrl evaluate --help`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from diffrl.evaluation import EvaluationConfig, EvaluationEncoders, evaluate, load_dreambench
from diffrl.models import load_sd_components
from diffrl.models.encoders import CLIPEncoder, DINOEncoder
from diffrl.models.tiny import build_tiny_clip, build_tiny_dino, build_tiny_sd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="build tiny random models instead of loading real ones")
    parser.add_argument("--pretrained", help="Stable Diffusion folder or hub id")
    parser.add_argument("--dino-weights", type=Path, help="DINO ViT-S/16 weights (.safetensors/.pth)")
    parser.add_argument("--clip", default="openai/clip-vit-base-patch32", help="CLIP folder or hub id")
    parser.add_argument("--dreambench", type=Path, required=True, help="DreamBench folder")
    parser.add_argument("--subject", nargs="+", help="subjects to evaluate (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args()

    subjects = load_dreambench(args.dreambench, subjects=args.subject)
    if args.tiny:
        tmp = Path(tempfile.mkdtemp(prefix="diffrl-tiny-"))
        pretrained = build_tiny_sd(tmp / "sd")
        dino_weights, dino_kwargs = build_tiny_dino(tmp / "dino.safetensors")
        clip = build_tiny_clip(tmp / "clip")
        heldout_weights, _ = build_tiny_dino(tmp / "dino_seed1.safetensors", seed=1)  # a second DINO: held-out metric
        heldout = [DINOEncoder.from_pretrained(weights=heldout_weights, **dino_kwargs)]
        config = EvaluationConfig(images_per_prompt=2, num_inference_steps=5, prompts_per_subject=3)
    else:
        if args.pretrained is None:
            parser.error("--pretrained is required without --tiny")
        pretrained, dino_weights, dino_kwargs, clip, heldout = args.pretrained, args.dino_weights, {}, args.clip, []
        config = EvaluationConfig()  # the full protocol: 25 prompts x 4 images, 50 DDIM steps, guidance 7.5

    components = load_sd_components(pretrained)
    encoders = EvaluationEncoders(
        dino=DINOEncoder.from_pretrained(weights=dino_weights, **dino_kwargs),
        clip=CLIPEncoder.from_pretrained(clip),
        heldout_dino=heldout,
    )
    report = evaluate(components, subjects, encoders, config, args.out)
    print(report.to_markdown())
    print("overall:", report.overall)


if __name__ == "__main__":
    main()
