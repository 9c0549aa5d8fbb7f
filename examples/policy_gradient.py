"""DDPO, GRPO or DRaFT-K on the emoji zoo with a reward: turn the samples red without losing their class.

    python examples/policy_gradient.py                          # DDPO, 20 iterations, a few minutes on 2 CPU cores
    python examples/policy_gradient.py --method grpo --kl-weight 0.01 --iterations 40 --output-dir outputs/grpo
    python examples/policy_gradient.py --method draft --draft-k 1 --output-dir outputs/draft  # reward backprop
    python examples/policy_gradient.py --help                   # every trainer setting is a flag

The training is `diffrl.training.PolicyGradientTrainer` (also ``diffrl train``): each iteration samples P prompts x G
images with stochastic DDIM (eta = 1), scores the final images with a non-differentiable reward (closeness of the
mean colour to red), turns the scores into advantages relative to the other samples of the same prompt, and takes
PPO-clipped steps on the stored transitions (``--method draft`` instead backpropagates the same reward, which is
differentiable, through the last sampling steps). Training prompts are "a <class> <context>" for half of the zoo's
classes (`diffrl.zoo.tasks.class_split_task`); this script also scores the other half (held out) before and after,
with the zoo CLIP's zero-shot class accuracy showing whether the images still show what was asked for.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from diffrl.arguments import add_dataclass_arguments, dataclass_from_args
from diffrl.models import CLIPEncoder
from diffrl.training.policy_gradient import (
    PG_REWARDS,
    PolicyGradientConfig,
    PolicyGradientTrainer,
    pg_choices,
)
from diffrl.zoo import load
from diffrl.zoo.tasks import class_split_task, score_heldout


@dataclass
class ExampleArgs:
    """The example's own settings (the trainer's are `PolicyGradientConfig`'s flags).

    Attributes:
        heldout_images: held-out samples scored before and after (fixed seeds).
        threads: torch CPU threads.
    """

    heldout_images: int = 32
    threads: int = 2


def main(config: PolicyGradientConfig, args: ExampleArgs) -> dict:
    torch.set_num_threads(args.threads)
    task = class_split_task(config.reward)
    Path(config.prompts).parent.mkdir(parents=True, exist_ok=True)
    Path(config.prompts).write_text("\n".join(task.train_prompts) + "\n")
    trainer = PolicyGradientTrainer(config)
    clip, reward = CLIPEncoder.from_pretrained(load("emoji").clip), PG_REWARDS[config.reward]()

    def heldout() -> dict[str, float]:
        return score_heldout(trainer.components, task, reward, clip, images=args.heldout_images,
                             steps=config.inference_steps, guidance_scale=config.guidance_scale, seed=config.seed + 7)

    before = heldout()
    print(f"before: {before}", flush=True)
    model = trainer.train().model_dir
    after = heldout()
    summary = {"config": dataclasses.asdict(config), "example": dataclasses.asdict(args), "before": before,
               "after": after, "model": str(model)}
    output = Path(config.output_dir)
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"after: {after}\nsummary -> {output / 'summary.json'}; per-iteration log -> {output / 'history.jsonl'}")
    return summary


def parse_args(argv: list[str] | None = None) -> tuple[PolicyGradientConfig, ExampleArgs]:
    """Every `PolicyGradientConfig` field as a flag (the model defaults to the zoo's, the prompts are the task's
    training prompts, written into the run folder) and the example's own."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, PolicyGradientConfig, choices=pg_choices(), required=False)
    add_dataclass_arguments(parser, ExampleArgs)
    parser.set_defaults(output_dir="outputs/policy_gradient")
    flags = parser.parse_args(argv)
    if flags.prompts:
        parser.error("--prompts: this example trains on the zoo task's prompts; `diffrl train` takes your own.")
    config = dataclass_from_args(PolicyGradientConfig, flags, pretrained=flags.pretrained or str(load("emoji").sd),
                                 prompts=str(Path(flags.output_dir) / "train_prompts.txt"))
    return config, dataclass_from_args(ExampleArgs, flags)


if __name__ == "__main__":
    main(*parse_args())
