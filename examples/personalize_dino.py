"""Personalize a diffusion model with DPG + look-forward + DINO rewards, then plot before/after and the reward curve.

    python examples/personalize_dino.py                       # bundled emoji zoo, subject "guide_dog", CPU-sized
    accelerate launch --multi_gpu --num_processes 2 examples/personalize_dino.py   # 2 processes (gloo on CPU)
    python examples/personalize_dino.py --resume auto        # continue an interrupted run (or start one)
    python examples/personalize_dino.py --pretrained CompVis/stable-diffusion-v1-4 --instance-dir DIR \
        --instance-prompt "a photo of sks dog" --class-prompt "a photo of dog" --num-class-images 200 \
        --dino-weights dino_vits16.safetensors --max-steps 400 --output-dir runs/dog
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from diffrl.errors import run_reporting_user_errors  # noqa: E402
from diffrl.models import load_sd_components  # noqa: E402
from diffrl.sampling import generate  # noqa: E402
from diffrl.training import ConfigError, TrainConfig, Trainer  # noqa: E402
from diffrl.training.cli import add_train_arguments, config_from_args  # noqa: E402
from diffrl.training.history import read_history  # noqa: E402

DEFAULT_SUBJECT = "guide_dog"


def zoo_defaults(subject: str) -> dict:
    """The bundled emoji zoo and one of its subjects; without the zoo weights, a tiny RANDOM model (loudly)."""
    from diffrl.zoo import SUBJECTS
    from diffrl.zoo.registry import SUBJECTS_ROOT, load

    nouns = {glyph.name: glyph.noun for glyph in SUBJECTS}
    if subject not in nouns:
        raise ConfigError(f"--subject {subject!r} is not a zoo subject; choose from {sorted(nouns)}.")
    noun = nouns[subject]
    defaults = dict(instance_dir=str(SUBJECTS_ROOT / subject), instance_prompt=f"a sks {noun}", class_prompt=f"a {noun}")
    try:
        zoo = load("emoji")
        return dict(defaults, pretrained=str(zoo.sd), dino_weights=str(zoo.dino.file), dino_arch=zoo.dino.model_name, dino_kwargs=zoo.dino.kwargs)
    except (ImportError, FileNotFoundError) as err:
        from diffrl.models.tiny import build_tiny_dino, build_tiny_sd

        print(f"\n{'!' * 78}\n!! emoji zoo unavailable ({err}).\n!! Using a tiny RANDOM model: the results are MEANINGLESS "
              f"(a smoke run only).\n{'!' * 78}\n", flush=True)
        tmp = Path(tempfile.mkdtemp(prefix="diffrl-tiny-"))  # per process; seeded, so identical in every process
        dino, kwargs = build_tiny_dino(tmp / "dino.safetensors")
        return dict(defaults, pretrained=str(build_tiny_sd(tmp / "sd")), dino_weights=str(dino), dino_kwargs=kwargs)


def zoo_overrides(args: argparse.Namespace) -> dict:
    """What the zoo supplies: nothing with --pretrained; otherwise the model, and the subject, prompts and DINO that
    were not given (your --instance-dir with your --instance-prompt trains the zoo model on your images)."""
    if args.pretrained:
        flags = {"--instance-dir": args.instance_dir, "--instance-prompt": args.instance_prompt}
        missing = [flag for flag, value in flags.items() if not value]
        if missing:
            raise ConfigError(f"--pretrained needs {' and '.join(missing)} (the zoo's subjects go with the zoo model).")
        return {}
    if args.instance_dir and not args.instance_prompt:
        raise ConfigError("--instance-dir needs --instance-prompt naming your subject, e.g. 'a sks dog'.")
    if args.instance_dir and args.subject:
        raise ConfigError("--subject picks a zoo subject's images and --instance-dir your own: give one of them.")
    zoo = zoo_defaults(args.subject or DEFAULT_SUBJECT)
    given = {name for name in ("instance_dir", "instance_prompt", "class_prompt") if getattr(args, name)}
    if args.instance_dir:
        given.add("class_prompt")  # the zoo's class prompt describes the zoo's subject, not yours
    if args.dino_weights:
        given |= {"dino_weights", "dino_arch", "dino_kwargs"}
    return {name: value for name, value in zoo.items() if name not in given}


def build_config(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """The run's `TrainConfig` and the parsed flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser, pretrained_required=False)
    parser.add_argument("--subject", help=f"zoo subject when --pretrained is not given (default: {DEFAULT_SUBJECT})")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors")
    parser.set_defaults(max_steps=200, lr_actor=1e-4, output_dir="runs/personalize_dino", checkpoint_every=100)
    args = parser.parse_args(argv)
    return config_from_args(args, **zoo_overrides(args)), args


def base_samples(trainer: Trainer, prompts: list[str]) -> torch.Tensor:
    """Samples of the model before personalisation: the trainer's own, unless it resumed (then a fresh copy)."""
    config, components = trainer.config, trainer.components
    if trainer.run_dir.resume_from is not None:
        components = load_sd_components(config.pretrained, device=trainer.accelerator.device)
    return generate(components, prompts, num_inference_steps=config.sample_steps, seed=config.seed).float().cpu()


def plot_rewards(history: list[dict[str, float]], title: str, path: Path) -> None:
    """Per-step reward and its running mean over the whole run (each step's reward is at a random noise level)."""
    steps = [h["step"] for h in history]
    rewards = np.array([h.get("reward", np.nan) for h in history])
    window = max(1, len(rewards) // 10)
    running = np.convolve(rewards, np.ones(window) / window, mode="valid")
    plt.figure(figsize=(5, 3))
    plt.plot(steps, rewards, alpha=0.3, label="per step")
    plt.plot(steps[window - 1 :], running, label=f"running mean ({window} steps)")
    plt.xlabel("step"), plt.ylabel("reward (mean over batch)"), plt.title(title)
    plt.legend(), plt.tight_layout()
    plt.savefig(path, dpi=120)
    plt.close()


def main(argv: list[str] | None = None) -> int:
    config, _ = build_config(argv)
    trainer = Trainer(config)
    main_process = trainer.accelerator.is_main_process
    prompts = [config.instance_prompt] * 4
    before = base_samples(trainer, prompts) if main_process else None
    result = trainer.train()
    if not main_process:
        return 0
    after = generate(trainer.components, prompts, num_inference_steps=config.sample_steps, seed=config.seed)
    after = after.float().cpu()
    out = Path(config.output_dir)
    references = torch.nn.functional.interpolate(trainer.instances.stacked[:4], size=after.shape[-2:], mode="area")
    grid = make_grid(torch.cat([references, before, after]), nrow=4).permute(1, 2, 0)
    plt.imsave(out / "before_after.png", grid.clamp(0, 1).numpy())
    history = read_history(out)  # the whole run, across interruptions and resumes
    if history:
        plot_rewards(history, config.instance_prompt, out / "reward_curve.png")
        print(f"reward curve: steps {history[0]['step']:.0f}-{history[-1]['step']:.0f} -> {out}/reward_curve.png")
    else:
        print(f"no reward curve: '{out}/history.jsonl' records no step")
    print(f"rows: references / before / after -> {out}/before_after.png; model -> {result.model_dir}")
    return 0


if __name__ == "__main__":
    verbose = "-v" in sys.argv or "--verbose" in sys.argv  # known before parsing, which may itself fail
    sys.exit(run_reporting_user_errors(Path(sys.argv[0]).name, verbose, main))
