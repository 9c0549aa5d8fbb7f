"""Prompt following of the zoo's base model against classifier-free guidance (and sampling seed).

For each guidance scale and seed: generate "a <class> <context>" for every held-in class in every non-plain context
(136 prompts, DDIM), then score the tiny CLIP's zero-shot class (plain and prompt-ensembled) and the pixel-level
context, exactly as the model card's prompt-following figures (``diffrl.zoo.training.evaluate.prompt_following``).

    python benchmarks/zoo_guidance.py                          # guidance 3, 6, 7.5, 10, 14; seeds 0 and 1
    python benchmarks/zoo_guidance.py --guidance 6 --seeds 0 1 2
"""

from __future__ import annotations

import argparse

import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPModel, CLIPTokenizer

import diffrl.zoo as zoo
from diffrl.zoo.training.evaluate import prompt_following


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guidance", type=float, nargs="+", default=[3.0, 6.0, 7.5, 10.0, 14.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=25, help="DDIM steps")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = zoo.load("emoji")
    pipe = StableDiffusionPipeline.from_pretrained(paths.sd).to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    clip, tok = CLIPModel.from_pretrained(paths.clip).eval(), CLIPTokenizer.from_pretrained(paths.clip)
    print("| seed | guidance | CLIP class | CLIP class (ensembled) | context |\n| --- | --- | --- | --- | --- |")
    for seed in args.seeds:
        for guidance in args.guidance:
            figures, _ = prompt_following(pipe, clip, tok, seed, args.steps, guidance)
            print(f"| {seed} | {guidance} | {figures['clip_class_acc']:.3f} | {figures['clip_class_acc_ensemble']:.3f} "
                  f"| {figures['context_acc']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
