"""The offline demo (`make demo`): personalise two subjects of the bundled emoji zoo with DreamBooth and with DPG,
score both as they train, and draw what came out.

    python examples/demo.py                              # under 3 min on 2 CPU cores; a rerun re-plots
    python examples/demo.py --subjects black_cat racing_car --steps 300 --output-dir outputs/demo2

Every run (subject x method) trains from the same zoo model with the same seed, so DreamBooth and DPG see the same
images, timesteps and noise (DPG's critic draws from its own generator). Each run is scored at step 0, every
``--score-every`` steps and at the end with the DreamBench protocol on the subject's first three prompts, i.e. three
new contexts ("in the jungle", "in the snow", "on the beach"), fixed seeds, the zoo's DINO (`diffrl.training.Progress`).

Writes to ``--output-dir``:
- ``grid.png``: per subject, rows = references / base model / DreamBooth / DPG, columns = the three contexts;
- ``progress.png``: zoo-DINO of those generations against training steps, DreamBooth and DPG side by side;
- ``<subject>/<method>/``: each run folder (model, checkpoints, history, the scored images per step).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from diffrl.arguments import add_dataclass_arguments, dataclass_from_args  # noqa: E402
from diffrl.errors import run_reporting_user_errors  # noqa: E402
from diffrl.evaluation import EvaluationConfig, EvaluationEncoders, Subject, SubjectProgress, load_dreambench  # noqa: E402
from diffrl.training import ConfigError, Progress, TrainConfig, Trainer, progress_curve, read_history  # noqa: E402
from diffrl.zoo import ZooPaths, load  # noqa: E402

METHODS = ("dreambooth", "dpg")
CONTEXTS = 3  # the first prompts of a zoo subject: "a sks <class> in the jungle" / "in the snow" / "on the beach"


@dataclass
class DemoArgs:
    """Attributes:
    subjects: zoo subjects to personalise (of different classes).
    steps: training steps of every run.
    score_every: score the runs every this many steps.
    output_dir: where the runs and the figures go.
    dpg_critic_states, dpg_critic_updates: noised states and critic updates per step of DPG's critic (fewer than
        the library's defaults, `TrainConfig.critic_states` and `critic_updates`, keep the demo short).
    threads: torch CPU threads.
    """

    subjects: list[str] = field(default_factory=lambda: ["guide_dog", "fancy_boot"])
    steps: int = 80
    score_every: int = 20
    output_dir: Path = Path("outputs/demo")
    dpg_critic_states: int = 4
    dpg_critic_updates: int = 4
    threads: int = 2

    def __post_init__(self) -> None:
        for name in ("steps", "score_every", "dpg_critic_states", "dpg_critic_updates", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")
        if len(self.subjects) < 2:
            raise ConfigError(f"--subjects needs at least two zoo subjects (of different classes), got {self.subjects}.")


def run_config(args: DemoArgs, zoo: ZooPaths, subject: Subject, method: str) -> TrainConfig:
    """One run: the zoo model at its recommended learning rate, the subject's images, the DINO reward for DPG."""
    return TrainConfig(
        pretrained=str(zoo.sd), instance_dir=str(Path(subject.image_paths[0]).parent),
        instance_prompt=f"a {subject.identifier} {subject.class_noun}", method=method, rewards={"dino": 1.0},
        dino_weights=str(zoo.dino.file), dino_arch=zoo.dino.model_name, dino_kwargs=zoo.dino.kwargs,
        critic_states=args.dpg_critic_states, critic_updates=args.dpg_critic_updates, max_steps=args.steps,
        diagnose_every=0,
        output_dir=str(args.output_dir / subject.name / method), resume="auto",
    )


def personalise(args: DemoArgs, zoo: ZooPaths, subject: Subject, method: str, encoders: EvaluationEncoders) -> Path:
    """Train one run (or continue / re-read a finished one), scored on the subject's first `CONTEXTS` prompts (2
    images each, DDIM 25 steps) as it goes; returns its folder."""
    config = run_config(args, zoo, subject, method)
    print(f"{subject.name} / {method}: {config.max_steps} steps -> {config.output_dir}", flush=True)
    evaluation = EvaluationConfig(images_per_prompt=2, num_inference_steps=25, prompts_per_subject=CONTEXTS)
    score = SubjectProgress(subject, encoders, evaluation, Path(config.output_dir) / "progress")
    Trainer(config).train(Progress(score, every=args.score_every))
    return Path(config.output_dir)


def scored_images(run: Path, subject: Subject, step: int) -> list[Image.Image]:
    """The first image of each context prompt scored at ``step`` (fixed seeds: the same noise in every run)."""
    folder = run / "progress" / f"step_{step:06d}" / "images" / subject.name
    return [Image.open(folder / f"{p:02d}_0.png").convert("RGB") for p in range(CONTEXTS)]


def draw_grid(rows: list[tuple[str, list[Image.Image]]], contexts: list[str], path: Path, cell: int = 128) -> None:
    """Labelled rows of images, one figure; ``contexts`` labels the columns."""
    fig, axes = plt.subplots(len(rows), CONTEXTS, figsize=(CONTEXTS * cell / 80, len(rows) * cell / 80), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c, image in enumerate(images[:CONTEXTS]):
            axes[r, c].imshow(image.resize((cell, cell), Image.NEAREST))
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=8)
    for c, context in enumerate(contexts):
        axes[-1, c].set_xlabel(context, fontsize=8)  # the generated rows' prompts; a references row shows 3 of 5
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_progress(curves: dict[str, dict[str, tuple[list[int], list[float]]]], path: Path) -> None:
    """zoo-DINO against steps, one panel per subject, one line per method."""
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3), squeeze=False)
    for ax, (name, methods) in zip(axes[0], curves.items()):
        for method, (steps, values) in methods.items():
            ax.plot(steps, values, marker="o", label=method)
        ax.set_title(name), ax.set_xlabel("training step"), ax.set_ylabel("zoo-DINO to the references")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args: DemoArgs) -> int:
    torch.set_num_threads(args.threads)
    zoo = load("emoji")
    subjects = load_dreambench(zoo.subjects, subjects=args.subjects)
    if len({s.class_noun for s in subjects}) < len(subjects):
        raise ConfigError(f"--subjects {args.subjects}: pick subjects of different classes.")
    encoders = zoo.encoders()
    rows, curves = [], {}
    for subject in subjects:
        runs = {method: personalise(args, zoo, subject, method, encoders) for method in METHODS}
        references = [Image.open(path).convert("RGB") for path in subject.image_paths]
        rows += [(f"{subject.name}\nreferences", references), ("base model", scored_images(runs["dreambooth"], subject, 0))]
        rows += [(method, scored_images(run, subject, args.steps)) for method, run in runs.items()]
        curves[subject.name] = {m: progress_curve(read_history(run), "DINO") for m, run in runs.items()}
    contexts = [prompt.split(f" {subjects[0].class_noun} ", 1)[-1] for prompt in subjects[0].prompts[:CONTEXTS]]
    draw_grid(rows, contexts, args.output_dir / "grid.png")
    draw_progress(curves, args.output_dir / "progress.png")
    for name, methods in curves.items():
        print(f"{name}: zoo-DINO at step 0 -> {args.steps}: " + ", ".join(
            f"{m} {values[0]:.3f} -> {values[-1]:.3f}" for m, (_, values) in methods.items()))
    print(f"grid (references / base / DreamBooth / DPG in 3 new contexts) -> {args.output_dir / 'grid.png'}")
    print(f"progress (zoo-DINO vs steps) -> {args.output_dir / 'progress.png'}; runs under {args.output_dir}/")
    return 0


def parse_args(argv: list[str] | None = None) -> DemoArgs:
    """`DemoArgs` from the command line (one flag per field)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, DemoArgs)
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors")
    return dataclass_from_args(DemoArgs, parser.parse_args(argv))


if __name__ == "__main__":
    verbose = "-v" in sys.argv or "--verbose" in sys.argv  # known before parsing, which may itself fail
    sys.exit(run_reporting_user_errors(Path(sys.argv[0]).name, verbose, lambda: main(parse_args())))
