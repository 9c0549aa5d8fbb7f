"""Personalize a diffusion model with DPG + look-forward + DINO rewards, then plot before/after and the reward curve.

    python examples/personalize_dino.py                       # bundled emoji zoo, subject "poodle", CPU-sized
    accelerate launch --multi_gpu --num_processes 2 examples/personalize_dino.py   # 2 processes (gloo on CPU)
    python examples/personalize_dino.py --pretrained CompVis/stable-diffusion-v1-4 --instance-dir DIR \
        --instance-prompt "a photo of sks dog" --class-prompt "a photo of dog" --num-class-images 200 \
        --dino-weights dino_vits16.safetensors --max-steps 400 --output-dir runs/dog
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from diffrl.sampling import generate  # noqa: E402
from diffrl.training import Trainer  # noqa: E402
from diffrl.training.cli import add_train_arguments, config_from_args  # noqa: E402


def zoo_defaults(subject: str) -> dict:
    """The bundled emoji zoo and one of its subjects; without the zoo weights, a tiny RANDOM model (loudly)."""
    from diffrl.zoo import SUBJECTS
    from diffrl.zoo.registry import SUBJECTS_ROOT, load

    noun = next(g.noun for g in SUBJECTS if g.name == subject)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser, pretrained_required=False)
    parser.add_argument("--subject", default="poodle", help="zoo subject when --pretrained is not given")
    parser.set_defaults(max_steps=200, lr_actor=1e-4, output_dir=Path("runs/personalize_dino"), checkpoint_every=100)
    args = parser.parse_args()
    overrides = {} if args.pretrained else zoo_defaults(args.subject)
    trainer = Trainer(config_from_args(args, **overrides))
    config, main_process = trainer.config, trainer.accelerator.is_main_process
    prompts = [config.instance_prompt] * 4

    def samples() -> torch.Tensor:
        return generate(trainer.components, prompts, num_inference_steps=config.sample_steps, seed=config.seed).float().cpu()

    before = samples() if main_process else None
    result = trainer.train()
    if not main_process:
        return
    after = samples()
    references = torch.nn.functional.interpolate(trainer.instances.stacked[:4], size=after.shape[-2:], mode="area")
    grid = make_grid(torch.cat([references, before, after]), nrow=4).permute(1, 2, 0)
    plt.imsave(Path(config.output_dir) / "before_after.png", grid.clamp(0, 1).numpy())
    steps = [h["step"] for h in result.history]
    rewards = np.array([h.get("reward", np.nan) for h in result.history])
    window = max(1, len(rewards) // 10)  # each step's reward is at a random noise level: show a running mean too
    running = np.convolve(rewards, np.ones(window) / window, mode="valid")
    plt.figure(figsize=(5, 3))
    plt.plot(steps, rewards, alpha=0.3, label="per step")
    plt.plot(steps[window - 1 :], running, label=f"running mean ({window} steps)")
    plt.xlabel("step"), plt.ylabel("reward (mean over batch)"), plt.title(config.instance_prompt)
    plt.legend(), plt.tight_layout()
    plt.savefig(Path(config.output_dir) / "reward_curve.png", dpi=120)
    print(f"rows: references / before / after -> {config.output_dir}/before_after.png; model -> {result.model_dir}")


if __name__ == "__main__":
    main()
