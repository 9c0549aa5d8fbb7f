"""``diffrl personalize``: fine-tune a model on a subject's images (see `diffrl.training.TrainConfig`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffrl.training.config import METHODS, MIXED_PRECISION, TrainConfig

EPILOG = """\
examples:
  # DPG with the look-forward and DINO rewards on a real model (offline: pass local folders/files)
  diffrl personalize --pretrained CompVis/stable-diffusion-v1-4 --instance-dir data/dog \\
      --instance-prompt "a photo of sks dog" --class-prompt "a photo of dog" --num-class-images 200 \\
      --dino-weights weights/dino_vits16.safetensors --max-steps 400 --output-dir runs/dog

  # the DreamBooth baseline, LoRA rank 4, two processes (CPU: gloo; GPUs: NCCL)
  accelerate launch --multi_gpu --num_processes 2 -m diffrl.cli personalize --method dreambooth --lora-rank 4 ...

outputs in --output-dir: model/ (StableDiffusionPipeline.from_pretrained(model/), or LoRA weights for
pipe.load_lora_weights(model/)), checkpoints/ckpt-NNNNNN (resume with --resume latest), logs/ (TensorBoard).
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
    method.add_argument("--method", choices=METHODS, default="dpg", help="default: %(default)s")
    method.add_argument("--rewards", type=parse_rewards, default="lookforward=1,dino=1", help="NAME=WEIGHT,... (default: %(default)s)")
    method.add_argument("--dino-weights", type=Path, help="DINO weights file (.safetensors/.pth)")
    method.add_argument("--dino-arch", default="vit_small_patch16_224.dino", help="timm name (default: %(default)s)")
    method.add_argument("--gamma", type=float, default=0.9986)
    method.add_argument(
        "--lam", type=float, default=TrainConfig.lam, help="weight of the actor term: -Q (dpg), -w(t) r (direct_reward)"
    )
    method.add_argument(
        "--actor-weighting", default=TrainConfig.actor_weighting,
        help="w(t) of the actor term: none, gamma_t or snr, see diffrl.objectives.actor_weight (default: %(default)s)",
    )
    method.add_argument("--lora-rank", type=int, default=0, help="0: full fine-tuning (default: %(default)s)")
    method.add_argument("--train-text-encoder", action="store_true")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--lr-actor", type=float, default=5e-6)
    optim.add_argument("--lr-critic", type=float, default=1e-4)
    optim.add_argument("--batch-size", type=int, default=1)
    optim.add_argument("--max-steps", type=int, default=400)
    optim.add_argument("--grad-clip", type=float, default=1.0)
    optim.add_argument("--mixed-precision", choices=MIXED_PRECISION, default="no")
    optim.add_argument("--nonfinite", choices=("raise", "skip"), default="raise")
    optim.add_argument("--seed", type=int, default=0)

    run = parser.add_argument_group("output")
    run.add_argument("--output-dir", type=Path, required=pretrained_required)
    run.add_argument("--checkpoint-every", type=int, default=0, help="steps (0: only at the end)")
    run.add_argument("--sample-every", type=int, default=0, help="TensorBoard sample grids every N steps (0: never)")
    run.add_argument("--resume", help='"latest" or a checkpoint directory')


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
        batch_size=args.batch_size, max_steps=args.max_steps, grad_clip=args.grad_clip, mixed_precision=args.mixed_precision,
        nonfinite=args.nonfinite, seed=args.seed, checkpoint_every=args.checkpoint_every, sample_every=args.sample_every,
        resume=args.resume,
    )
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
