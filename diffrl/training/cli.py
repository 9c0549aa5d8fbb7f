"""``diffrl personalize``: fine-tune a model on a subject's images (see `diffrl.training.TrainConfig`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from diffrl.objectives.dpg import ACTOR_READS, CRITIC_FORMS, EXPLORATION_SPACES
from diffrl.objectives.weighting import ACTOR_WEIGHTINGS
from diffrl.training.config import DEFAULT_LR_ACTOR, MIXED_PRECISION, TRACKERS, TrainConfig
from diffrl.training.methods import METHODS, method_help

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


CRITIC_FIELDS = (
    "exploration_std", "exploration_space", "exploration_actions", "critic_states", "critic_updates",
    "critic_batch_size", "replay_size", "warmup_steps", "lam_ramp_steps", "actor_weighting", "pair_weight", "tau",
    "critic_form", "actor_reads", "reward_scale", "critic_grad_clip", "diagnose_every",
)
"""`TrainConfig` fields of DPG's critic learning, each a flag with the field's default."""


def field_name(flag: str) -> str:
    """argparse type: ``lr-actor`` or ``lr_actor`` -> the `TrainConfig` field ``lr_actor``."""
    return flag.removeprefix("--").replace("-", "_")


def add_train_arguments(parser: argparse.ArgumentParser, pretrained_required: bool = True) -> None:
    """The `TrainConfig` fields as command-line flags."""
    data = parser.add_argument_group("model and data")
    data.add_argument("--pretrained", required=pretrained_required, help="Stable Diffusion folder or hub id")
    data.add_argument("--instance-dir", required=pretrained_required, type=Path, help="folder of the subject's images")
    data.add_argument("--instance-prompt", required=pretrained_required, help='e.g. "a photo of sks dog"')
    data.add_argument("--class-prompt", help='e.g. "a photo of dog" (prior preservation)')
    data.add_argument("--class-dir", type=Path, help="class-image cache (default: OUTPUT_DIR/class_images)")
    data.add_argument("--num-class-images", type=int, default=0, help="0 disables prior preservation (default: %(default)s)")
    data.add_argument("--prior-weight", type=float, default=1.0)
    data.add_argument("--identifier", default="sks", help="the subject's token in the prompt (default: %(default)s)")
    data.add_argument("--resolution", type=int, help="training image size (default: the U-Net's)")

    method = parser.add_argument_group("method")
    method.add_argument("--method", choices=list(METHODS), default=TrainConfig.method,
                        help=f"{method_help()} (default: %(default)s)")
    method.add_argument("--rewards", type=parse_rewards, default="lookforward=1,dino=1", help="NAME=WEIGHT,... (default: %(default)s)")
    method.add_argument("--dino-weights", type=Path, help="DINO weights file (.safetensors/.pth)")
    method.add_argument("--dino-arch", default="vit_small_patch16_224.dino", help="timm name (default: %(default)s)")
    method.add_argument("--dino-kwargs", type=json_object, metavar="JSON",
                        help="timm.create_model kwargs of the DINO (e.g. a small ViT's img_size), JSON text or file")
    method.add_argument("--gamma", type=float, default=TrainConfig.gamma, help="DPG's discount (default: %(default)s)")
    method.add_argument("--lam", type=float, default=TrainConfig.lam, help="weight of the actor term: -Q (dpg), -w(t) r (direct_reward)")
    method.add_argument("--lora-rank", type=int, default=0, help="0: full fine-tuning (default: %(default)s)")
    method.add_argument("--train-text-encoder", action="store_true")

    critic = parser.add_argument_group("critic (DPG; see diffrl.objectives.DPGConfig)")
    for name in CRITIC_FIELDS:
        default = getattr(TrainConfig, name)
        choices = {"exploration_space": EXPLORATION_SPACES, "actor_weighting": ACTOR_WEIGHTINGS,
                   "critic_form": CRITIC_FORMS, "actor_reads": ACTOR_READS}.get(name)
        critic.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default, choices=choices,
                            help="default: %(default)s")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--lr-actor", type=float, default=TrainConfig.lr_actor,
                       help="default: the rate the --pretrained folder recommends in diffrl_finetuning.json (the "
                            f"bundled zoo does), else {DEFAULT_LR_ACTOR}")
    optim.add_argument("--lr-critic", type=float, default=TrainConfig.lr_critic)
    optim.add_argument("--batch-size", type=int, default=1, help="images per process per micro-batch")
    optim.add_argument("--gradient-accumulation-steps", type=int, default=1, help="micro-batches per optimizer step")
    optim.add_argument("--max-steps", type=int, default=400)
    optim.add_argument("--grad-clip", type=float, default=1.0)
    optim.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no")
    optim.add_argument("--use-ema", action="store_true", help="export an exponential moving average of the weights")
    optim.add_argument("--ema-decay", type=float, default=TrainConfig.ema_decay)
    optim.add_argument("--gradient-checkpointing", action="store_true",
                       help="recompute U-Net (and trained text encoder) activations in the backward pass: less memory")
    optim.add_argument("--nonfinite", choices=("raise", "skip"), default="raise")
    optim.add_argument("--seed", type=int, default=0)

    run = parser.add_argument_group("output")
    run.add_argument("--output-dir", type=Path, required=pretrained_required)
    run.add_argument("--checkpoint-every", type=int, default=0, help="steps (0: only at the end)")
    run.add_argument("--sample-every", type=int, default=0, help="validation grids to the trackers every N steps (0: never)")
    run.add_argument("--report-to", choices=list(TRACKERS), default=TrainConfig.report_to,
                     help="Accelerate trackers: tensorboard (OUTPUT_DIR/logs), wandb (pip install wandb; WANDB_MODE=offline "
                          "works without a network), all, none (default: %(default)s)")

    folder = parser.add_argument_group("run folder")
    folder.add_argument("--resume", metavar="latest|auto|CHECKPOINT",
                        help='continue from "latest", from a checkpoint folder, or "auto": latest if any, else start')
    folder.add_argument("--overwrite", action="store_true", help="replace the run already in --output-dir")
    folder.add_argument("--allow-changed", nargs="+", default=[], metavar="FIELD", type=field_name,
                        help="settings that may differ from the resumed checkpoint's (e.g. lr_actor)")


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    """A `TrainConfig` from parsed flags (``overrides`` win)."""
    fields = dict(
        pretrained=str(args.pretrained), instance_dir=str(args.instance_dir), instance_prompt=args.instance_prompt,
        output_dir=str(args.output_dir), class_prompt=args.class_prompt, class_dir=args.class_dir and str(args.class_dir),
        num_class_images=args.num_class_images, prior_weight=args.prior_weight, identifier=args.identifier,
        resolution=args.resolution, method=args.method, rewards=args.rewards,
        dino_weights=args.dino_weights and str(args.dino_weights), dino_arch=args.dino_arch, gamma=args.gamma, lam=args.lam,
        actor_weighting=args.actor_weighting,
        lora_rank=args.lora_rank, train_text_encoder=args.train_text_encoder, lr_actor=args.lr_actor, lr_critic=args.lr_critic,
        batch_size=args.batch_size, gradient_accumulation_steps=args.gradient_accumulation_steps,
        max_steps=args.max_steps, grad_clip=args.grad_clip, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, use_ema=args.use_ema, ema_decay=args.ema_decay,
        nonfinite=args.nonfinite, seed=args.seed, checkpoint_every=args.checkpoint_every, sample_every=args.sample_every,
        report_to=args.report_to,
        resume=args.resume,
    )
    fields.update(dino_kwargs=args.dino_kwargs or {}, overwrite=args.overwrite, allow_changed=tuple(args.allow_changed))
    fields.update({name: getattr(args, name) for name in CRITIC_FIELDS})
    return TrainConfig(**{**fields, **overrides})


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
