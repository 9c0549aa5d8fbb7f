"""``diffrl train``: fine-tuning over a prompt file on a reward: DDPO, GRPO, DPG (black-box) or DRaFT-K (differentiable)."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  diffrl train --method ddpo --pretrained PATH --prompts prompts.txt --reward jpeg --output-dir runs/ddpo
  diffrl train --method grpo --kl-weight 0.01 ... --output-dir runs/grpo --resume latest   # continue a run
  diffrl train --method draft --draft-k 1 --reward red ... --output-dir runs/draft
  diffrl train --method dpg --lam 1 --lr-critic 1e-3 --reward context ... --output-dir runs/dpg   # a critic of the reward

  diffrl train --method ddpo --lora-rank 4 --lr 3e-4 ... --output-dir runs/ddpo_lora   # a LoRA adapter only

outputs in --output-dir: model/ (StableDiffusionPipeline.from_pretrained(model/); with --lora-rank, LoRA weights:
StableDiffusionPipeline.from_pretrained(PRETRAINED) then pipe.load_lora_weights(model/)), checkpoints/ckpt-NNNNNN,
history.jsonl (one record per iteration: train_reward, loss, ratio, clip fraction, ...). One run at a time per
folder; a folder that holds a run is only continued (--resume latest / auto) or replaced (--overwrite), and a resume
refuses settings that change the result (--allow-changed NAME accepts one)."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from diffrl.arguments import add_dataclass_arguments
    from diffrl.training.cli import field_name
    from diffrl.training.policy_gradient import PolicyGradientConfig, pg_choices

    parser = subparsers.add_parser(
        "train", help="reward fine-tuning over prompts (DDPO, GRPO, DPG, DRaFT-K)",
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_dataclass_arguments(parser, PolicyGradientConfig, choices=pg_choices(), parsers={"allow_changed": field_name})
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from diffrl.arguments import dataclass_from_args
    from diffrl.training.policy_gradient import (
        PolicyGradientConfig,
        PolicyGradientTrainer,
    )

    result = PolicyGradientTrainer(dataclass_from_args(PolicyGradientConfig, args)).train()
    print(f"model: {result.model_dir}")
    return 0
