"""The DreamBench table of the DPG paper on the embedded emoji zoo: every method, several seeds, one budget.

Personalises the zoo's Stable-Diffusion-format model on each subject with DreamBooth, DPG + DINO, DPG + look-forward,
the one-step regressor (DPG without bootstrapping, look-forward + DINO rewards), direct reward backprop (DINO) and
three controls: DPG + DINO with lambda = 0 (the critic trained, not used), DreamBooth + the exact differentiable DINO
reward of the look-forward (no critic: the ceiling of what a perfect critic could add) and DreamBooth + the exact
look-forward reward -||x0_hat - x0||^2 (what the authors' released critic reduces to); all with the same steps,
learning rate and seeds. Scores every model with the DreamBench protocol (`diffrl.evaluation.evaluate`) with the zoo's
DINO (the training reward's encoder), its CLIP and the held-out DINO (another seed, seen by no reward); then writes
``table.md``, ``table.json`` and ``table.png`` to ``--out``: mean ± std over seeds, the change vs DreamBooth, and the
paired per-seed differences vs DreamBooth and vs DPG with lambda = 0 (mean ± standard error over seeds).

    python benchmarks/paper_table.py --quick --out runs/paper_quick      # a few-minute smoke configuration
    python benchmarks/paper_table.py --out runs/paper_table              # the default (full) configuration
    python benchmarks/paper_table.py --tiny --quick --out /tmp/pt        # tiny RANDOM models: meaningless numbers

Runs live in ``OUT/runs/<method>/<subject>/seed<k>`` (the model in ``model/``, its evaluation in ``eval/``); a run
whose model and report exist is skipped, so an interrupted benchmark resumes where it stopped. Several processes may
share one ``--out`` with disjoint ``--methods`` (start the second once the base model's evaluation exists); then
``--finished-only`` with every method writes the table of the seeds whose runs have all finished, training nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported

import torch  # noqa: E402

from diffrl.evaluation import EvaluationConfig, EvaluationEncoders, Subject, evaluate, load_dreambench  # noqa: E402
from diffrl.io import atomic_write, atomic_write_text  # noqa: E402
from diffrl.objectives.weighting import ACTOR_WEIGHTINGS  # noqa: E402
from diffrl.training.config import TrainConfig  # noqa: E402
from diffrl.zoo.registry import SUBJECTS_ROOT  # noqa: E402

METRICS = ("DINO", "CLIP-I", "CLIP-T", "DINO (held-out)")
BASE = "base"
REFERENCE = "dreambooth"
PAIRED = (REFERENCE, "dpg_lambda0")  # the rows every method is compared with seed by seed
SeedScores = dict[int, dict[str, dict[str, float]]]  # one method's results: seed -> subject -> metric -> score
PAPER = {"DINO": "+6.3%", "CLIP-I": "+4.6%", "CLIP-T": "-0.013"}  # DPG vs DreamBooth in the paper (arXiv 2407.06642)


def method_settings(weight: float, lam: float) -> dict[str, dict]:
    """Table row -> the `TrainConfig` fields that define it (everything else is shared); ``lam`` weighs the actor term
    (-Q for DPG, -w(t) r for the direct rows)."""
    return {
        "dreambooth": dict(method="dreambooth"),
        "dpg_lambda0": dict(method="dpg", rewards={"dino": weight}, lam=0.0),
        "dpg_dino": dict(method="dpg", rewards={"dino": weight}, lam=lam),
        "dpg_lookforward": dict(method="dpg", rewards={"lookforward": weight}, lam=lam),
        "one_step": dict(method="one_step", rewards={"lookforward": weight, "dino": weight}, lam=lam),
        "oracle_dino": dict(method="direct_reward", rewards={"dino": weight}, lam=lam),
        "lookforward_direct": dict(method="direct_reward", rewards={"lookforward": weight}, lam=lam),
        "reward_backprop": dict(method="reward_backprop", rewards={"dino": weight}),
    }


@dataclass
class PaperTableConfig:
    """One benchmark: which subjects, seeds and methods, the shared training budget and the evaluation subset.

    The defaults are 200 training runs + 201 evaluations (5 subjects x 5 seeds x 8 methods, and the base model).
    """

    out: Path
    subjects: int = 5
    seeds: int = 5
    steps: int = 100
    methods: tuple[str, ...] = tuple(method_settings(1.0, 1.0))
    reward_weight: float = 1.0
    lam: float = TrainConfig.lam
    actor_weighting: str = TrainConfig.actor_weighting
    lr_actor: float = 1e-4
    lr_critic: float = TrainConfig.lr_critic
    batch_size: int = 1
    num_class_images: int = 0
    # Training schedule of the reference env: 999, the longest SD's steps_offset=1 allows (1000 would hold timestep
    # 1000, which `BatchedScheduler` rejects).
    train_schedule_steps: int = 999
    prompts_per_subject: int = 10
    images_per_prompt: int = 4
    eval_steps: int = 25
    guidance_scale: float = 7.5
    threads: int = 1  # more threads than free cores is very slow on a shared CPU (spin-waiting)
    tiny: bool = False
    finished_only: bool = False  # table of the seeds whose runs all finished: train and evaluate nothing
    models: dict[str, str] = field(default_factory=dict)  # filled by `prepare_models`: sd, dino, dino_eval, clip, ...

    def evaluation(self) -> EvaluationConfig:
        return EvaluationConfig(
            images_per_prompt=self.images_per_prompt,
            num_inference_steps=self.eval_steps,
            guidance_scale=self.guidance_scale,
            prompts_per_subject=self.prompts_per_subject,
        )

    def budget(self) -> dict:
        """The settings that define the numbers (stated in the table's header and JSON)."""
        skip = {"out", "threads", "models", "finished_only"}
        budget = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        return {**budget, "methods": list(self.methods)}


# ---------------------------------------------------------------------------------------------------- models


def prepare_models(config: PaperTableConfig) -> None:
    """Fill ``config.models`` with the zoo's paths or, with ``tiny``, freshly written tiny random models."""
    if config.tiny:
        from diffrl.models.tiny import build_tiny_clip, build_tiny_dino, build_tiny_sd

        print("!! --tiny: tiny RANDOM models; the numbers below are MEANINGLESS (a smoke run of the script only).")
        root = config.out / "tiny_models"
        dino, kwargs = build_tiny_dino(root / "dino.safetensors", seed=0)
        dino_eval, _ = build_tiny_dino(root / "dino_eval.safetensors", seed=1)
        config.models = dict(
            sd=str(build_tiny_sd(root / "sd")), clip=str(build_tiny_clip(root / "clip")), dino=str(dino),
            dino_eval=str(dino_eval), dino_arch="vit_small_patch16_224.dino", dino_kwargs=json.dumps(kwargs),
        )
        return
    from diffrl.zoo.registry import load

    zoo = load("emoji")
    kwargs = {k: v for k, v in zoo.dino.kwargs.items() if k != "num_classes"}  # DINOEncoder sets num_classes=0
    config.models = dict(
        sd=str(zoo.sd), clip=str(zoo.clip), dino=str(zoo.dino.file), dino_eval=str(zoo.dino_eval.file),
        dino_arch=zoo.dino.model_name, dino_kwargs=json.dumps(kwargs),
    )


def make_encoders(config: PaperTableConfig) -> EvaluationEncoders:
    """The training reward's DINO, CLIP and the held-out DINO (built like the trainer builds its DINO reward)."""
    from diffrl.models.encoders import CLIPEncoder, DINOEncoder

    m = config.models
    kwargs = json.loads(m["dino_kwargs"])
    return EvaluationEncoders(
        dino=DINOEncoder.from_pretrained(m["dino_arch"], weights=m["dino"], **kwargs),
        clip=CLIPEncoder.from_pretrained(m["clip"]),
        heldout_dino=[DINOEncoder.from_pretrained(m["dino_arch"], weights=m["dino_eval"], **kwargs)],
    )


# ---------------------------------------------------------------------------------------------------- runs


def run_dir(config: PaperTableConfig, method: str, subject: Subject | None, seed: int) -> Path:
    if method == BASE:
        return config.out / "runs" / BASE
    return config.out / "runs" / method / subject.name / f"seed{seed}"


def train_one(config: PaperTableConfig, method: str, subject: Subject, seed: int) -> Path:
    """Personalise on ``subject`` with ``method`` and ``seed``; return the model folder (reused when it exists)."""
    from diffrl.training import train

    out = run_dir(config, method, subject, seed)
    model_dir = out / "model"
    if (model_dir / "model_index.json").is_file():
        return model_dir
    m = config.models
    train_config = TrainConfig(
        pretrained=m["sd"],
        instance_dir=str(Path(subject.image_paths[0]).parent),
        instance_prompt=subject.instance_prompt,
        class_prompt=f"a {subject.class_noun}",
        class_dir=str(config.out / "class_images" / subject.name),
        num_class_images=config.num_class_images,
        identifier=subject.identifier,
        output_dir=str(out),
        dino_weights=m["dino"],
        dino_arch=m["dino_arch"],
        dino_kwargs=json.loads(m["dino_kwargs"]),
        max_steps=config.steps,
        num_inference_steps=config.train_schedule_steps,
        lr_actor=config.lr_actor,
        lr_critic=config.lr_critic,
        batch_size=config.batch_size,
        guidance_scale=config.guidance_scale,
        actor_weighting=config.actor_weighting,
        seed=seed,
        resume="auto",  # a run killed earlier continues from its last checkpoint
        **method_settings(config.reward_weight, config.lam)[method],
    )
    result = train(train_config)
    return Path(result.model_dir)


def evaluate_one(
    config: PaperTableConfig, model: str | Path, subjects: list[Subject], out: Path, encoders: EvaluationEncoders
) -> dict[str, dict[str, float]]:
    """DreamBench scores of ``model``: subject -> metric -> mean over its images; read back when the report exists."""
    from diffrl.models import load_sd_components

    report = out / "report.json"
    if not report.is_file():
        evaluate(load_sd_components(model), subjects, encoders, config.evaluation(), out, overwrite=True)
    return {s["name"]: s["means"] for s in json.loads(report.read_text())["subjects"]}


# ---------------------------------------------------------------------------------------------------- table


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(results: dict[str, SeedScores]) -> dict:
    """``results[method][seed][subject] -> scores`` -> per method: each seed's subject mean, then mean/std over seeds,
    the change of the means vs DreamBooth (relative % for image metrics, absolute for CLIP-T, as in the paper) and,
    under ``"paired"``, the paired per-seed differences vs each row of `PAIRED` present (see `paired_difference`)."""
    rows: dict[str, dict] = {}
    for method, by_seed in results.items():
        per_seed = {m: [statistics.fmean(s[m] for s in subj.values()) for subj in by_seed.values()] for m in METRICS}
        rows[method] = {"runs": sum(len(subj) for subj in by_seed.values()), "seeds": len(by_seed),
                        **{m: mean_std(v) for m, v in per_seed.items()}}
    reference = rows.get(REFERENCE)
    for method, row in rows.items():
        if reference is not None:
            row["vs_dreambooth"] = {m: change(m, row[m]["mean"], reference[m]["mean"]) for m in METRICS}
        if method == BASE:  # one untrained model, not a seeded run: nothing to pair with
            continue
        references = [ref for ref in PAIRED if ref in results and ref != method]
        paired = {ref: paired_difference(results[method], results[ref]) for ref in references}
        row["paired"] = {ref: diff for ref, diff in paired.items() if diff is not None}
    return rows


def paired_difference(by_seed: SeedScores, reference: SeedScores) -> dict[str, dict] | None:
    """Per metric, the paired per-seed difference of a method vs a reference row (``None`` when no seed pairs).

    For each seed both rows have, d_seed = (method's mean over the subjects both have) - (reference's mean over the
    same subjects); pairing by seed cancels the variance both runs share (the same seeded draws of instance images,
    crops, t and eps where the methods draw them alike). Over the n paired seeds:
    ``mean`` of d, ``se`` = std(d) / sqrt(n) (sample std; ``None`` for n = 1), ``beyond_2se`` = |mean| > 2 se, and
    ``per_seed`` {seed: d}. Units: the metric's (absolute differences, also for the image metrics).
    """
    per_seed: dict[str, dict[int, float]] = {m: {} for m in METRICS}
    for seed, scores in by_seed.items():
        common = [subject for subject in scores if subject in reference.get(seed, {})]
        if not common:
            continue
        for m in METRICS:
            method_mean = statistics.fmean(scores[subject][m] for subject in common)
            per_seed[m][seed] = method_mean - statistics.fmean(reference[seed][subject][m] for subject in common)
    if not per_seed[METRICS[0]]:
        return None
    return {m: paired_stats(values) for m, values in per_seed.items()}


def paired_stats(per_seed: dict[int, float]) -> dict:
    """Mean, standard error and the 2-SE test of paired differences ``{seed: d}`` (see `paired_difference`)."""
    values = list(per_seed.values())
    n = len(values)
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(n) if n > 1 else None
    return {"n": n, "mean": mean, "se": se, "beyond_2se": se is not None and abs(mean) > 2 * se, "per_seed": per_seed}


def change(metric: str, value: float, reference: float) -> float:
    """CLIP-T: absolute difference; image metrics: relative change in percent."""
    if metric == "CLIP-T":
        return value - reference
    return 100.0 * (value - reference) / abs(reference) if reference else math.nan


def format_change(metric: str, value: float) -> str:
    return f"{value:+.4f}" if metric == "CLIP-T" else f"{value:+.1f}%"


def to_markdown(config: PaperTableConfig, rows: dict, subjects: list[Subject]) -> str:
    b = config.budget()
    lines = [
        "# DreamBench table on the emoji zoo" + (" (TINY RANDOM MODELS: MEANINGLESS NUMBERS)" if config.tiny else ""),
        "",
        f"- subjects ({len(subjects)}): {', '.join(s.name for s in subjects)}",
        f"- seeds: {config.seeds} (0..{config.seeds - 1}); mean ± std over seeds of the per-seed subject mean",
        f"- training: {b['steps']} steps, batch {b['batch_size']}, lr {b['lr_actor']} (critic {b['lr_critic']}), "
        f"reward weight {b['reward_weight']}, lambda {b['lam']}, actor weighting {b['actor_weighting']}, "
        f"class images {b['num_class_images']}, {b['train_schedule_steps']}-step training schedule",
        f"- evaluation: {b['prompts_per_subject']} prompts/subject x {b['images_per_prompt']} images/prompt, "
        f"{b['eval_steps']} DDIM steps, guidance {b['guidance_scale']}; DINO = the training reward's encoder, "
        "DINO (held-out) = the zoo's second DINO (seed 1)",
        "- methods: dreambooth; dpg_dino = DPG {dino}; dpg_lookforward = DPG {lookforward}; one_step = DPG without "
        "bootstrap {lookforward, dino}; reward_backprop = direct backprop of {dino} (last step, no DreamBooth term); "
        "base = the zoo model, not personalised; controls: dpg_lambda0 = DPG {dino} with lambda = 0 (critic trained, "
        "not used); oracle_dino = DreamBooth + lambda w(t) times the exact {dino} of decode(x0_hat(mu(s))) "
        "(no critic); lookforward_direct = the same with -||x0_hat - x0||^2",
        f"- change vs DreamBooth: relative for DINO / CLIP-I / held-out DINO, absolute for CLIP-T "
        f"(paper, DPG vs DreamBooth: DINO {PAPER['DINO']}, CLIP-I {PAPER['CLIP-I']}, CLIP-T {PAPER['CLIP-T']})",
        "",
        "| method | runs | " + " | ".join(METRICS) + " | " + " | ".join(f"Δ {m}" for m in METRICS) + " |",
        "| --- " * (2 + 2 * len(METRICS)) + "|",
    ]
    for method, row in rows.items():
        scores = [f"{row[m]['mean']:.4f} ± {row[m]['std']:.4f}" for m in METRICS]
        deltas = [format_change(m, row["vs_dreambooth"][m]) if "vs_dreambooth" in row else "" for m in METRICS]
        lines.append(f"| {method} | {row['runs']} | " + " | ".join(scores + deltas) + " |")
    return "\n".join(lines + paired_markdown(rows)) + "\n"


def paired_markdown(rows: dict) -> list[str]:
    """The second table: paired per-seed differences vs each row of `PAIRED` (mean ± SE, * beyond 2 SE)."""
    references = [ref for ref in PAIRED if ref in rows]
    paired = {method: row["paired"] for method, row in rows.items() if row.get("paired")}
    if not paired:
        return []
    lines = [
        "",
        "## Paired differences (mean ± SE over seeds)",
        "",
        "Per seed: the method's subject mean minus the reference's (same seed, same subjects), absolute units; "
        "mean ± standard error (std / sqrt(n)) over the n paired seeds; * = beyond 2 standard errors.",
        "",
        f"| method | n (seeds vs {' / '.join(references)}) | "
        + " | ".join(f"{m} vs {ref}" for m in METRICS for ref in references) + " |",
        "| --- " * (2 + len(METRICS) * len(references)) + "|",
    ]
    for method, by_reference in paired.items():
        counts = " / ".join(str(by_reference[ref][METRICS[0]]["n"]) if ref in by_reference else "-"
                            for ref in references)
        cells = [format_paired(by_reference[ref][m]) if ref in by_reference else ""
                 for m in METRICS for ref in references]
        lines.append(f"| {method} | {counts} | " + " | ".join(cells) + " |")
    return lines


def format_paired(stats: dict) -> str:
    se = "n/a" if stats["se"] is None else f"{stats['se']:.4f}"
    return f"{stats['mean']:+.4f} ± {se}" + (" *" if stats["beyond_2se"] else "")


def plot(rows: dict, path: Path) -> None:
    """One panel per metric, one bar per method, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(rows)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.6))
    for ax, metric in zip(axes, METRICS):
        means = [rows[m][metric]["mean"] for m in methods]
        ax.bar(range(len(methods)), means, yerr=[rows[m][metric]["std"] for m in methods], capsize=3,
               color=[f"C{i}" for i in range(len(methods))])
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right")
        low, high = min(means), max(means)
        ax.set_ylim(low - 0.5 * (high - low + 1e-3), high + 0.5 * (high - low + 1e-3))
        ax.set_title(metric)
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, dpi=120, format="png"))
    plt.close(fig)


def write_table(config: PaperTableConfig, results: dict, subjects: list[Subject]) -> dict:
    """``table.json``, ``table.md`` and ``table.png`` in ``config.out`` (each atomically); returns the rows."""
    rows = summarise(results)
    payload = {"budget": config.budget(), "subjects": [s.name for s in subjects], "paper_dpg_vs_dreambooth": PAPER,
               "rows": rows, "runs": results}
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    atomic_write_text(config.out / "table.json", text)
    atomic_write_text(config.out / "table.md", to_markdown(config, rows, subjects))
    plot(rows, config.out / "table.png")
    return rows


# ---------------------------------------------------------------------------------------------------- main


class Clock:
    """Seconds per finished job (by kind) and an ETA for the jobs left (unknown kinds: the mean of all jobs)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, list[float]] = {}

    def add(self, kind: str, seconds: float) -> None:
        self.seconds.setdefault(kind, []).append(seconds)

    def eta(self, pending: list[str]) -> float:
        every = [s for values in self.seconds.values() for s in values]
        default = statistics.fmean(every) if every else math.nan
        return sum(statistics.fmean(self.seconds[k]) if k in self.seconds else default for k in pending)

    def summary(self) -> dict:
        phases = {k: {"jobs": len(v), "total_s": round(sum(v), 1), "mean_s": round(statistics.fmean(v), 1)}
                  for k, v in self.seconds.items()}
        return {"wall_s": round(time.perf_counter() - self.start, 1), "phases": phases}


def timed(clock: Clock, kind: str, job: Callable[[], object], skipped: bool) -> object:
    """Run ``job``; record its time under ``kind`` unless it only reads existing results."""
    start = time.perf_counter()
    value = job()
    if not skipped:
        clock.add(kind, time.perf_counter() - start)
    return value


def run(config: PaperTableConfig) -> dict:
    """Train and evaluate every (seed, subject, method), writing the table after each; returns the final rows."""
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    config.out.mkdir(parents=True, exist_ok=True)
    prepare_models(config)
    subjects = load_dreambench(SUBJECTS_ROOT)[: config.subjects]
    encoders = make_encoders(config)
    clock = Clock()
    jobs = [(m, s, k) for k in range(config.seeds) for s in subjects for m in config.methods]
    if config.finished_only:  # whole seeds only: a seed's subject mean over some subjects would bias the rows
        finished = {job for job in jobs if (run_dir(config, *job) / "eval" / "report.json").is_file()}
        complete = {k for k in range(config.seeds) if all(job in finished for job in jobs if job[2] == k)}
        jobs = [job for job in jobs if job[2] in complete]
        if not (run_dir(config, BASE, None, 0) / "eval" / "report.json").is_file():
            raise SystemExit(f"--finished-only: '{config.out}' has no evaluated base model yet; run the benchmark first.")
    pending = [f"train {m}" for m, _, _ in jobs] + ["evaluate"] * len(jobs)
    results: dict = {BASE: {0: {}}}
    base_out = run_dir(config, BASE, None, 0) / "eval"
    skipped = (base_out / "report.json").is_file()
    results[BASE][0] = timed(
        clock, "evaluate base", lambda: evaluate_one(config, config.models["sd"], subjects, base_out, encoders), skipped
    )
    for index, (method, subject, seed) in enumerate(jobs, start=1):
        out = run_dir(config, method, subject, seed)
        done = (out / "model" / "model_index.json").is_file()
        model = timed(clock, f"train {method}", lambda: train_one(config, method, subject, seed), done)
        pending.remove(f"train {method}")
        done = (out / "eval" / "report.json").is_file()
        scores = timed(clock, "evaluate", lambda: evaluate_one(config, model, [subject], out / "eval", encoders), done)
        pending.remove("evaluate")
        scores = scores[subject.name]
        results.setdefault(method, {}).setdefault(seed, {})[subject.name] = scores
        write_table(config, results, subjects)
        elapsed = time.perf_counter() - clock.start
        eta = clock.eta(pending)
        print(f"[{index}/{len(jobs)}] {method} {subject.name} seed{seed}: DINO {scores['DINO']:.4f} | elapsed "
              f"{elapsed / 60:.1f} min, ETA {'?' if math.isnan(eta) else f'{eta / 60:.1f}'} min", flush=True)
    rows = write_table(config, results, subjects)
    timings = json.dumps(clock.summary(), indent=2) + "\n"
    atomic_write_text(config.out / "timings.json", timings)
    print(to_markdown(config, rows, subjects))
    print(f"timings: {timings}table: {config.out / 'table.md'}, {config.out / 'table.json'}, {config.out / 'table.png'}")
    return rows


QUICK = dict(subjects=2, seeds=2, steps=20, prompts_per_subject=3, images_per_prompt=2, eval_steps=25)


def parse_args(argv: list[str] | None = None) -> PaperTableConfig:
    defaults = PaperTableConfig(out=Path("runs/paper_table"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=defaults.out, help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help=f"a few-minute smoke configuration: {QUICK}")
    parser.add_argument("--tiny", action="store_true", help="tiny RANDOM models instead of the zoo (meaningless numbers)")
    for name in ("subjects", "seeds", "steps", "prompts_per_subject", "images_per_prompt", "eval_steps", "threads",
                 "num_class_images", "batch_size"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"default: {getattr(defaults, name)}")
    parser.add_argument("--lr-actor", type=float, help=f"default: {defaults.lr_actor}")
    parser.add_argument("--lr-critic", type=float, help=f"DPG's critic (default: {defaults.lr_critic})")
    parser.add_argument("--reward-weight", type=float, help=f"default: {defaults.reward_weight}")
    parser.add_argument("--lam", type=float, help=f"weight of the DPG / direct actor term (default: {defaults.lam})")
    parser.add_argument("--actor-weighting", choices=ACTOR_WEIGHTINGS,
                        help=f"w(t) of the actor term (default: {defaults.actor_weighting})")
    parser.add_argument("--methods", nargs="+", choices=defaults.methods, help="default: all")
    parser.add_argument("--finished-only", action="store_true",
                        help="write the table of the seeds whose runs have all finished (e.g. by parallel processes); "
                             "train nothing")
    args = vars(parser.parse_args(argv))
    values = {**(QUICK if args.pop("quick") else {}), **{k: v for k, v in args.items() if v is not None}}
    if "methods" in values:
        values["methods"] = tuple(values["methods"])
    return PaperTableConfig(**values)


if __name__ == "__main__":
    run(parse_args())
