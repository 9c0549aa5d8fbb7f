"""``diffrl personalize``: fine-tune a model on a subject's images (see `diffrl.training.TrainConfig`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffrl.arguments import add_dataclass_arguments, dataclass_from_args
from diffrl.objectives.dpg import ACTOR_READS, CRITIC_FORMS, EXPLORATION_SPACES
from diffrl.objectives.weighting import ACTOR_WEIGHTINGS
from diffrl.training.config import MIXED_PRECISION, NONFINITE, TRACKERS, TrainConfig
from diffrl.training.methods import METHODS

EPILOG = """\
examples:
  # DPG with the look-forward and DINO rewards on a real model (offline: pass local folders/files)
  diffrl personalize --pretrained CompVis/stable-diffusion-v1-4 --instance-dir data/dog \\
      --instance-prompt "a photo of sks dog" --class-prompt "a photo of dog" --num-class-images 200 \\
      --dino-weights weights/dino_vits16.safetensors --max-steps 400 --output-dir runs/dog

  # the DreamBooth baseline, LoRA rank 4, two processes (CPU: gloo; GPUs: NCCL)
  accelerate launch --multi_gpu --num_processes 2 -m diffrl.cli personalize --method dreambooth --lora-rank 4 ...

  # continue an interrupted run (or start it, if the folder is empty); allow a higher learning rate from now on
  diffrl personalize ... --output-dir runs/dog --resume auto --allow-changed lr_actor

outputs in --output-dir: model/ (StableDiffusionPipeline.from_pretrained(model/), or LoRA weights for
pipe.load_lora_weights(model/)), checkpoints/ckpt-NNNNNN (resume with --resume latest), logs/ (TensorBoard),
history.jsonl (every step's losses and rewards). One run at a time per folder; a folder that holds a run is only
continued (--resume) or replaced (--overwrite), and a resume refuses settings that change the result.
"""


def parse_rewards(text: str) -> dict[str, float]:
    """``"lookforward=1,dino=0.5"`` -> ``{"lookforward": 1.0, "dino": 0.5}`` (a bare name has weight 1)."""
    rewards = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, weight = item.partition("=")
        try:
            rewards[name.strip()] = float(weight) if weight else 1.0
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"reward weight of {name!r} must be a number, got {weight!r}") from err
    return rewards


def json_object(value: str) -> dict:
    """argparse type: a JSON object, as text or as the path of a .json file."""
    text = Path(value).read_text() if value.endswith(".json") and Path(value).is_file() else value
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a JSON object nor a .json file ({err})") from err
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object of keyword arguments, got {value!r}")
    return parsed


def field_name(flag: str) -> str:
    """argparse type: ``lr-actor`` or ``lr_actor`` -> the `TrainConfig` field ``lr_actor``."""
    return flag.removeprefix("--").replace("-", "_")


CHOICES = {
    "method": tuple(METHODS), "mixed_precision": MIXED_PRECISION, "nonfinite": NONFINITE, "report_to": tuple(TRACKERS),
    "exploration_space": EXPLORATION_SPACES, "actor_weighting": ACTOR_WEIGHTINGS, "critic_form": CRITIC_FORMS,
    "actor_reads": ACTOR_READS,
}
PARSERS = {"rewards": parse_rewards, "dino_kwargs": json_object, "allow_changed": field_name}


def add_train_arguments(parser: argparse.ArgumentParser, pretrained_required: bool = True) -> None:
    """Every `TrainConfig` field as a flag (`diffrl.arguments`: typed, documented and defaulted by the field);
    ``pretrained_required=False`` makes the fields without a default optional (a caller fills them in)."""
    add_dataclass_arguments(parser, TrainConfig, choices=CHOICES, parsers=PARSERS, required=pretrained_required)


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    """A `TrainConfig` from parsed flags (``overrides`` win)."""
    return dataclass_from_args(TrainConfig, args, **overrides)


def run(args: argparse.Namespace) -> int:
    from diffrl.training.trainer import train

    result = train(config_from_args(args))
    print(f"trained {result.step} steps; model: {result.model_dir}; checkpoint: {result.checkpoint}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``personalize`` on the ``diffrl`` parser's subparsers."""
    parser = subparsers.add_parser(
        "personalize",
        help="fine-tune a model on a subject (DPG, DreamBooth, reward backprop)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(parser)
    parser.set_defaults(func=run)
    return parser
