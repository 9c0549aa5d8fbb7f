"""Personalisability of a zoo: DreamBooth on each bundled subject, scored with the zoo's own DINO and CLIP.

Per subject (``eval.personalisation.subjects[NAME]`` of the build record):

- ``dino``: zoo-DINO cosine of the personalised model's generations (the subject's DreamBench prompts, fixed seeds)
  to the subject's references, the DreamBench protocol of `diffrl.evaluation.evaluate`;
- ``retrieval``: fraction of those generations whose nearest subject (highest mean zoo-DINO cosine to its
  references) among all bundled subjects is the right one;
- ``vae_dino_ceiling``: zoo-DINO cosine of each reference's VAE reconstruction to the reference (mean over
  references), i.e. the best ``dino`` any U-Net could reach through this VAE; ``vae_psnr``: PSNR (dB) of those
  reconstructions;
- ``clip_t`` / ``clip_t_base``: CLIP-T of the personalised and of the base model on the same prompts and seeds;
- ``dino_context`` / ``dino_colour`` (and CLIP-T): ``dino`` over the prompts in new contexts and over the prompts
  that recolour the subject (this DINO counts colour as identity: a recoloured subject drawn as asked scores ~0);
- ``dino_blank``: zoo-DINO cosine to the references of flat images in the references' backdrop colour, the score
  of an empty generation (on the v1 zoo 0.99 for the pale poodle, since replaced: its ``dino`` and ceiling meant little).

Training goes through `diffrl.training.Trainer` with the library's defaults (``method="dreambooth"``) unless
``PersonalisationConfig.train`` overrides them; scoring through `diffrl.evaluation.evaluate`.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from torch import Tensor

from diffrl.data.images import list_images, load_image_tensor
from diffrl.evaluation import EvaluationConfig, EvaluationEncoders, Subject, evaluate, load_dreambench
from diffrl.evaluation.metrics import mean_reference_similarity, paired_similarity
from diffrl.evaluation.protocol import ImageEncoder, PromptResult, SubjectResult
from diffrl.models import decode_latents, encode_images, load_sd_components
from diffrl.zoo.registry import ZooPaths
from diffrl.zoo.world import prompt_colour

log = logging.getLogger("diffrl.zoo.build")


def default_evaluation() -> EvaluationConfig:
    """All 25 prompts of a subject, 2 images each, DDIM 25 steps, guidance 7.5 (the library's default), seeds 0.."""
    return EvaluationConfig(images_per_prompt=2, num_inference_steps=25, guidance_scale=7.5, save_images=True)


@dataclass
class PersonalisationConfig:
    """How each subject is personalised and scored.

    Attributes:
        train: `TrainConfig` fields that differ from the library's defaults (``method`` is always "dreambooth");
            empty: the library's defaults, which is what the zoo target is about.
        milestones: training steps at which the model is also scored (DINO and eps-MSE against steps); the final
            step (``max_steps``) is always scored.
        evaluation: generation and scoring; ``save_images`` is forced on (retrieval reads the generations back).
        extra_guidance: further guidance scales at which the final model is scored (``dino_by_guidance``).
        subjects: names of the subjects to personalise (``None``: every bundled subject); retrieval always ranks
            among all bundled subjects.
    """

    train: dict[str, Any] = field(default_factory=dict)
    milestones: tuple[int, ...] = ()
    evaluation: EvaluationConfig = field(default_factory=default_evaluation)
    extra_guidance: tuple[float, ...] = ()
    subjects: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.train.get("method", "dreambooth") != "dreambooth":
            raise ValueError(f"the personalisation measurement is DreamBooth; drop method={self.train['method']!r}")
        self.evaluation = replace(self.evaluation, save_images=True)


def references(subject: Subject) -> Tensor:
    """The subject's reference images ``[M, 3, H, W]`` in [0, 1]."""
    return load_image_tensor(list(subject.image_paths))


@torch.no_grad()
def vae_ceiling(vae: AutoencoderKL, dino: ImageEncoder, subject: Subject) -> dict[str, float]:
    """``vae_dino_ceiling``: mean over references of the DINO cosine of reconstruction and original;
    ``vae_psnr``: mean PSNR (dB, images in [0, 1]) of the reconstructions (posterior mean, as training encodes)."""
    x = references(subject)
    rec = decode_latents(vae, encode_images(vae, x)).float()
    cos = paired_similarity(dino(rec).float(), dino(x).float())
    mse = ((rec - x) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    psnr = (10 * torch.log10(1 / mse)).mean().item()
    return {"vae_dino_ceiling": round(cos.mean().item(), 4), "vae_psnr": round(psnr, 2)}


@torch.no_grad()
def blank_floor(dino: ImageEncoder, subject: Subject, border: int = 4) -> float:
    """DINO cosine to the references of flat images in each reference's backdrop colour (the mean of its
    ``border``-pixel frame): what an empty generation scores. A ``dino`` or ceiling near it says nothing."""
    x = references(subject)
    frame = torch.cat([x[..., :border, :].flatten(2), x[..., -border:, :].flatten(2)], dim=2).mean(2)  # [M, 3]
    flat = frame[:, :, None, None].expand_as(x).contiguous()
    return round(mean_reference_similarity(dino(flat).float(), dino(x).float()).mean().item(), 4)


@torch.no_grad()
def retrieval(dino: ImageEncoder, generated: Tensor, galleries: dict[str, Tensor], target: str) -> float:
    """Fraction of ``generated`` images ``[N, 3, H, W]`` whose highest mean DINO cosine to a subject's reference
    embeddings (``galleries``: name -> ``[M, D]``) is ``target``'s."""
    features = dino(generated).float()
    scores = torch.stack([mean_reference_similarity(features, g) for g in galleries.values()], dim=1)  # [N, S]
    return (scores.argmax(1) == list(galleries).index(target)).double().mean().item()


def generated_images(eval_dir: Path, subject: Subject) -> Tensor:
    """The images `evaluate` saved for ``subject`` under ``eval_dir``: ``[N, 3, H, W]`` in [0, 1]."""
    return load_image_tensor(list_images(eval_dir / "images" / subject.name))


def prompt_kind(prompt: str) -> str:
    """``"colour"`` for a prompt that recolours the subject (`diffrl.zoo.world.prompt_colour`), else ``"context"``."""
    return "context" if prompt_colour(prompt) is None else "colour"


def latest_eval(run: Path) -> Path:
    """The last ``eval_NNNNNN`` folder of a personalisation run (its final model's scores)."""
    evals = sorted(run.glob("eval_[0-9]*"))
    if not evals:
        raise FileNotFoundError(f"No eval_NNNNNN folder under {run}.")
    return evals[-1]


def saved_by_prompt_kind(eval_dir: Path, subject: Subject) -> dict[str, tuple[Tensor, list[str]]]:
    """The images `evaluate` saved for ``subject`` under ``eval_dir`` with the prompt of each, split by prompt kind:
    ``{"context": (images [N, 3, H, W], prompts), "colour": ...}`` (kinds as `by_prompt_kind`; image ``PP_I.png``
    is sample I of prompt PP of ``report.json``). A kind without prompts is left out."""
    paths = list_images(eval_dir / "images" / subject.name) if (eval_dir / "images" / subject.name).is_dir() else []
    report = eval_dir / "report.json"
    reported = [s for s in json.loads(report.read_text())["subjects"] if s["name"] == subject.name] if report.is_file() else []
    if not paths or not reported:
        raise FileNotFoundError(f"No saved generations of {subject.name} under {eval_dir}: run a personalisation "
                                "measurement with save_images (the zoo build's eval stage does).")
    kinds: dict[str, tuple[list[Path], list[str]]] = {"context": ([], []), "colour": ([], [])}
    for path in paths:
        prompt = reported[0]["prompts"][int(path.stem.split("_")[0])]["prompt"]
        chosen = kinds[prompt_kind(prompt)]
        chosen[0].append(path)
        chosen[1].append(prompt)
    return {kind: (load_image_tensor(found), prompts) for kind, (found, prompts) in kinds.items() if found}


def _train_config(zoo: ZooPaths, subject: Subject, out: Path, overrides: dict[str, Any]):
    from diffrl.training import TrainConfig

    fields = dict(pretrained=str(zoo.sd), instance_dir=str(Path(subject.image_paths[0]).parent),
                  instance_prompt=subject.instance_prompt, class_prompt=f"a {subject.class_noun}",
                  identifier=subject.identifier, output_dir=str(out), overwrite=True)  # a measurement starts afresh
    return TrainConfig(**{**fields, **overrides, "method": "dreambooth"})


def personalise(zoo: ZooPaths, subject: Subject, encoders: EvaluationEncoders, galleries: dict[str, Tensor],
                cfg: PersonalisationConfig, out: Path) -> dict[str, Any]:
    """DreamBooth on ``subject``, scored at each milestone and at the end; the last curve point is the result.

    Returns ``{"dino", "dino_heldout", "clip_t", "retrieval", "eps_mse", "curve": [...]}`` (``eps_mse``: mean of
    the last 50 training steps), plus ``dino_by_guidance`` when ``cfg.extra_guidance`` is set."""
    from diffrl.training import Trainer

    trainer = Trainer(_train_config(zoo, subject, out, cfg.train))
    final = trainer.config.max_steps
    curve = []
    for step in sorted({m for m in cfg.milestones if 0 < m < final} | {final}):
        trainer.config.max_steps = step  # train() runs from the current step up to max_steps
        trainer.train()
        point = _score(trainer.components, subject, encoders, galleries, cfg.evaluation, out / f"eval_{step:06d}")
        recent = [h["eps_mse"] for h in trainer.history[-50:]]
        curve.append({"step": step, "eps_mse": round(statistics.fmean(recent), 5), **point})
        log.info("personalisation %s step %d: %s", subject.name, step, curve[-1])
    result = {**curve[-1], "curve": curve}
    result.pop("step")
    if cfg.extra_guidance:
        result["dino_by_guidance"] = {
            str(g): _score(trainer.components, subject, encoders, galleries, replace(cfg.evaluation, guidance_scale=g),
                           out / f"eval_guidance_{g}")["dino"] for g in cfg.extra_guidance}
    return result


def _score(components, subject: Subject, encoders: EvaluationEncoders, galleries: dict[str, Tensor],
           evaluation: EvaluationConfig, out: Path) -> dict[str, float]:
    """DreamBench scores and retrieval on the subject's prompts; ``dino_instance``: DINO of 4 generations of the
    training prompt itself (how well the subject was fitted, apart from new contexts); ``dino_context`` /
    ``clip_t_context`` and ``dino_colour`` / ``clip_t_colour``: the means over the prompts that keep the subject's
    colour (new contexts) and over those that recolour it (`by_prompt_kind`)."""
    report = evaluate(components, [subject], encoders, evaluation, out, overwrite=True)
    means = report.subjects[0].means
    hit = retrieval(encoders.dino, generated_images(out, subject), galleries, subject.name)
    instance = replace(subject, prompts=(subject.instance_prompt,))
    fit = evaluate(components, [instance], encoders, replace(evaluation, images_per_prompt=4, prompts_per_subject=None),
                   out / "instance", overwrite=True)
    return {"dino": round(means["DINO"], 4), "dino_heldout": round(means["DINO (held-out)"], 4),
            "clip_t": round(means["CLIP-T"], 4), "retrieval": round(hit, 4),
            "dino_instance": round(fit.subjects[0].means["DINO"], 4), **by_prompt_kind(report.subjects[0])}


def by_prompt_kind(result: SubjectResult) -> dict[str, float]:
    """``dino_KIND`` and ``clip_t_KIND`` of one subject's evaluation for KIND ``context`` (prompts naming no colour)
    and ``colour`` (prompts that recolour the subject; `prompt_kind`), when it has such prompts.
    The zoo's DINO counts a glyph's colour as part of its identity, so a recoloured subject scores near 0 even when it
    is drawn exactly as asked: the ``context`` figures are the ones that measure identity."""
    kinds: dict[str, list[PromptResult]] = {"context": [], "colour": []}
    for prompt in result.prompts:
        kinds[prompt_kind(prompt.prompt)].append(prompt)
    out = {}
    for kind, prompts in kinds.items():
        for metric, key in (("DINO", "dino"), ("CLIP-T", "clip_t")):
            if prompts:
                out[f"{key}_{kind}"] = round(statistics.fmean(v for p in prompts for v in p.scores[metric]), 4)
    return out


def measure_personalisation(zoo: ZooPaths, out: Path, cfg: PersonalisationConfig | None = None) -> dict[str, Any]:
    """``eval.personalisation`` of the build record for the zoo ``zoo``; runs and reports go to ``out``.

    Returns ``{"subjects": {NAME: {"dino", "retrieval", "vae_dino_ceiling", "vae_psnr", "clip_t", "clip_t_base",
    ...}}, "mean_dino", "mean_retrieval", "clip_t", "clip_t_base", "mean_vae_dino_ceiling", "min_vae_dino_ceiling",
    "mean_vae_psnr", "settings", "lr_actor"}`` (``lr_actor``: the DreamBooth learning rate used, after resolving the
    library default `TrainConfig.lr_actor=None` against the zoo's recommendation)."""
    cfg = cfg or PersonalisationConfig()
    everyone = load_dreambench(zoo.subjects, identifier=cfg.train.get("identifier", "sks"))
    chosen = [s for s in everyone if cfg.subjects is None or s.name in cfg.subjects]
    if not chosen:
        raise ValueError(f"no bundled subject among {cfg.subjects}; choose from {[s.name for s in everyone]}")
    encoders = zoo.encoders()
    with torch.no_grad():
        galleries = {s.name: encoders.dino(references(s)).float() for s in everyone}
    base = load_sd_components(str(zoo.sd))
    base_report = evaluate(base, chosen, encoders, cfg.evaluation, out / "base", overwrite=True)
    subjects = {}
    for subject in chosen:
        row = {**vae_ceiling(base.vae, encoders.dino, subject), "dino_blank": blank_floor(encoders.dino, subject)}
        row["clip_t_base"] = round(next(s for s in base_report.subjects if s.name == subject.name).means["CLIP-T"], 4)
        row.update(personalise(zoo, subject, encoders, galleries, cfg, out / "runs" / subject.name))
        subjects[subject.name] = row
    mean = lambda key: round(statistics.fmean(r[key] for r in subjects.values()), 4)  # noqa: E731
    kinds = {f"mean_{key}": mean(key) for key in ("dino_context", "dino_colour")
             if all(key in r for r in subjects.values())}
    return {"subjects": subjects, "mean_dino": mean("dino"), "mean_retrieval": mean("retrieval"), **kinds,
            "clip_t": mean("clip_t"), "clip_t_base": mean("clip_t_base"),
            "mean_vae_dino_ceiling": mean("vae_dino_ceiling"),
            "min_vae_dino_ceiling": min(r["vae_dino_ceiling"] for r in subjects.values()),
            "mean_vae_psnr": mean("vae_psnr"), "settings": settings(cfg),
            "lr_actor": _train_config(zoo, chosen[0], out, cfg.train).resolved_lr_actor()}


def settings(cfg: PersonalisationConfig) -> dict[str, Any]:
    """The configuration as JSON-ready values (written beside the figures)."""
    return {"train": dict(cfg.train) or "library defaults (TrainConfig, method='dreambooth')",
            "milestones": list(cfg.milestones), "evaluation": asdict(cfg.evaluation),
            "extra_guidance": list(cfg.extra_guidance)}
