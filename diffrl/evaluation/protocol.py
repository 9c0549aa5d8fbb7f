"""The DreamBench evaluation protocol: fixed-seed generation per subject and prompt, DINO / CLIP-I / CLIP-T.

Outputs in ``out_dir`` (each written atomically: temp file + rename; ``report.json`` is written last):

- ``report.json``: configuration, per-image / per-prompt / per-subject scores, overall means.
- ``report.md``: a Markdown table, one row per subject plus the overall mean.
- ``grids/<subject>.png``: the reference images in the first row, then one row of generated images per prompt.
- ``images/<subject>/<prompt index>_<k>.png``: every generated image (``save_images=True``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image, ImageOps
from torch import Tensor

from diffrl.data.images import load_image_tensor
from diffrl.evaluation.dreambench import Subject
from diffrl.evaluation.metrics import mean_reference_similarity, paired_similarity, remove_identifier
from diffrl.io import atomic_save_png, atomic_write_text
from diffrl.models.loading import SDComponents
from diffrl.sampling import generate

logger = logging.getLogger(__name__)

REPORT_FILES = ("report.json", "report.md")


class ImageEncoder(Protocol):
    """Images ``[B, 3, H, W]`` in ``[0, 1]`` -> embeddings ``[B, D]`` (e.g. `DINOEncoder`)."""

    def __call__(self, images: Tensor) -> Tensor: ...


class ImageTextEncoder(Protocol):
    """A joint image/text embedder (e.g. `CLIPEncoder`)."""

    def encode_images(self, images: Tensor) -> Tensor: ...

    def encode_texts(self, texts: list[str]) -> Tensor: ...


@dataclass
class EvaluationEncoders:
    """The embedders behind the metrics; any object with the same call signature can be swapped in.

    ``heldout_dino`` are extra DINO-like encoders (e.g. trained with another seed) that no reward was computed
    with; they are reported as "DINO (held-out)" so that hacking the training encoder shows as a gap.
    """

    dino: ImageEncoder | None = None
    clip: ImageTextEncoder | None = None
    heldout_dino: Sequence[ImageEncoder] = ()

    def image_metrics(self) -> dict[str, Callable[[Tensor], Tensor]]:
        """Metric name -> image encoder, for the metrics that compare generated with reference images."""
        metrics: dict[str, Callable[[Tensor], Tensor]] = {}
        if self.dino is not None:
            metrics["DINO"] = self.dino
        if self.clip is not None:
            metrics["CLIP-I"] = self.clip.encode_images
        for index, encoder in enumerate(self.heldout_dino, start=1):
            metrics["DINO (held-out)" if len(self.heldout_dino) == 1 else f"DINO (held-out {index})"] = encoder
        return metrics

    def metric_names(self) -> list[str]:
        names = list(self.image_metrics())
        return names + ["CLIP-T"] if self.clip is not None else names


@dataclass
class EvaluationConfig:
    """How images are generated and scored.

    The images of prompt ``p`` (0-based, in the subject's prompt order) are one `diffrl.sampling.generate` batch of
    ``images_per_prompt`` samples seeded with ``base_seed + p * images_per_prompt``: every method and every subset of
    subjects or prompts starts image ``k`` of prompt ``p`` from the same noise, so runs are comparable.
    """

    images_per_prompt: int = 4
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    eta: float = 0.0
    base_seed: int = 0
    prompts_per_subject: int | None = None  # the first n prompts only (quick runs); None: all 25
    grid_cell: int = 128  # pixels per image in the grids
    save_images: bool = True

    def __post_init__(self) -> None:
        for name in ("images_per_prompt", "num_inference_steps", "grid_cell"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvaluationConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.prompts_per_subject is not None and self.prompts_per_subject < 1:
            raise ValueError(f"EvaluationConfig.prompts_per_subject must be >= 1 or None, got {self.prompts_per_subject}.")

    def seed(self, prompt_index: int) -> int:
        """The seed of the generation batch of prompt ``prompt_index``."""
        return self.base_seed + prompt_index * self.images_per_prompt


@dataclass
class PromptResult:
    """Scores of the generated images of one prompt; ``scores[metric][k]`` is image k's raw cosine."""

    prompt: str
    text: str  # the prompt without the identifier, as scored by CLIP-T
    seed: int  # of the batch; image k is its sample k
    scores: dict[str, list[float]]


@dataclass
class SubjectResult:
    """Scores of one subject; ``grid`` is relative to the output folder."""

    name: str
    class_noun: str
    identifier: str
    live: bool
    num_references: int
    prompts: list[PromptResult]
    grid: str

    @property
    def means(self) -> dict[str, float]:
        """Metric -> mean over all generated images of this subject."""
        metrics = self.prompts[0].scores.keys()
        return {m: _mean([s for p in self.prompts for s in p.scores[m]]) for m in metrics}


@dataclass
class EvaluationReport:
    source: str  # the evaluated model
    config: EvaluationConfig
    metrics: list[str]
    subjects: list[SubjectResult]

    @property
    def overall(self) -> dict[str, float]:
        """Metric -> mean over subjects of the subject means (each subject weighs the same)."""
        return {m: _mean([s.means[m] for s in self.subjects]) for m in self.metrics}

    def to_dict(self) -> dict:
        subjects = [{**asdict(s), "means": s.means} for s in self.subjects]
        return {
            "source": self.source,
            "config": asdict(self.config),
            "metrics": self.metrics,
            "overall": self.overall,
            "subjects": subjects,
        }

    def to_markdown(self) -> str:
        header = ["subject", "class", "images", *self.metrics]
        rows = [header, ["---"] * len(header)]
        for s in self.subjects:
            count = sum(len(p.scores[self.metrics[0]]) for p in s.prompts)
            rows.append([s.name, s.class_noun, str(count), *(f"{s.means[m]:.4f}" for m in self.metrics)])
        total = sum(len(p.scores[self.metrics[0]]) for s in self.subjects for p in s.prompts)
        rows.append(["**overall**", "", str(total), *(f"**{self.overall[m]:.4f}**" for m in self.metrics)])
        table = "\n".join("| " + " | ".join(row) + " |" for row in rows)
        c = self.config
        return (
            f"# DreamBench evaluation of `{self.source}`\n\n"
            f"{len(self.subjects)} subject(s), {c.images_per_prompt} image(s) per prompt, {c.num_inference_steps} steps, "
            f"guidance {c.guidance_scale}, eta {c.eta}, seeds from {c.base_seed}. Raw cosine similarities in [-1, 1]; "
            "the overall row averages the subject means.\n\n"
            f"{table}\n"
        )


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


def _to_pil(image: Tensor) -> Image.Image:
    """``[3, H, W]`` in ``[0, 1]`` -> RGB image."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def make_grid(references: Sequence[Image.Image], rows: Sequence[Sequence[Image.Image]], cell: int) -> Image.Image:
    """The references in the first row, then one row per entry of ``rows``; each image fit (resize + center crop)
    to ``cell`` x ``cell`` pixels."""
    all_rows = [list(references), *map(list, rows)]
    columns = max(len(row) for row in all_rows)
    grid = Image.new("RGB", (columns * cell, len(all_rows) * cell), "white")
    for r, row in enumerate(all_rows):
        for c, image in enumerate(row):
            grid.paste(ImageOps.fit(image, (cell, cell), Image.Resampling.BICUBIC), (c * cell, r * cell))
    return grid


@torch.no_grad()
def _embed(encode: Callable[[Tensor], Tensor], images: Sequence[Tensor]) -> Tensor:
    """Embed each batch ``[n, 3, H, W]`` of ``images`` -> ``[sum n, D]`` float on the CPU."""
    return torch.cat([encode(batch).float().cpu() for batch in images])


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Raise `FileExistsError` if ``out_dir`` holds a report and ``overwrite`` is False."""
    existing = [name for name in REPORT_FILES if (out_dir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"'{out_dir}' already holds an evaluation report ({', '.join(existing)}); "
            "choose another output folder or pass overwrite=True (CLI: --overwrite)."
        )


def evaluate_subject(
    components: SDComponents, subject: Subject, encoders: EvaluationEncoders, config: EvaluationConfig, out_dir: Path
) -> SubjectResult:
    """Generate ``images_per_prompt`` images for each of the subject's prompts, score them, write its grid."""
    prompts = list(subject.prompts[: config.prompts_per_subject])
    generated = [
        generate(
            components,
            [prompt] * config.images_per_prompt,
            num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale,
            eta=config.eta,
            seed=config.seed(p),
        ).cpu()
        for p, prompt in enumerate(prompts)
    ]  # one [n, 3, H, W] batch per prompt
    return score_subject(subject, prompts, generated, encoders, config, out_dir)


def score_subject(
    subject: Subject,
    prompts: Sequence[str],
    generated: Sequence[Tensor],
    encoders: EvaluationEncoders,
    config: EvaluationConfig,
    out_dir: Path,
) -> SubjectResult:
    """Score the generations of ``subject`` (``generated[p]``: the ``[n, 3, H, W]`` images of ``prompts[p]``, in
    ``[0, 1]``) against its references, save them (``save_images``) and its grid under ``out_dir``."""
    n = config.images_per_prompt
    references = [load_image_tensor([path]) for path in subject.image_paths]  # native sizes: one at a time
    scores: dict[str, Tensor] = {}
    embeddings: dict[str, Tensor] = {}
    for name, encode in encoders.image_metrics().items():
        embeddings[name] = _embed(encode, generated)
        scores[name] = mean_reference_similarity(embeddings[name], _embed(encode, references))
    texts = [remove_identifier(prompt, subject.identifier) for prompt in prompts]
    if encoders.clip is not None:
        with torch.no_grad():
            text_embeddings = encoders.clip.encode_texts(texts).float().cpu()
        scores["CLIP-T"] = paired_similarity(embeddings["CLIP-I"], text_embeddings.repeat_interleave(n, dim=0))

    results = [
        PromptResult(
            prompt=prompts[p],
            text=texts[p],
            seed=config.seed(p),
            scores={name: values[p * n : (p + 1) * n].tolist() for name, values in scores.items()},
        )
        for p in range(len(prompts))
    ]
    rows = [[_to_pil(image) for image in batch] for batch in generated]
    if config.save_images:
        folder = out_dir / "images" / subject.name
        for stale in folder.glob("[0-9][0-9]_*.png"):  # from an earlier (overwritten or interrupted) run
            stale.unlink()
        for p, row in enumerate(rows):
            for k, image in enumerate(row):
                atomic_save_png(image, folder / f"{p:02d}_{k}.png")
    grid = Path("grids") / f"{subject.name}.png"
    reference_images = [_to_pil(reference[0]) for reference in references]
    atomic_save_png(make_grid(reference_images, rows, config.grid_cell), out_dir / grid)
    return SubjectResult(
        name=subject.name,
        class_noun=subject.class_noun,
        identifier=subject.identifier,
        live=subject.live,
        num_references=len(references),
        prompts=results,
        grid=grid.as_posix(),
    )


def evaluate(
    components: SDComponents,
    subjects: Sequence[Subject],
    encoders: EvaluationEncoders,
    config: EvaluationConfig | None = None,
    out_dir: str | os.PathLike = "evaluation",
    *,
    overwrite: bool = False,
) -> EvaluationReport:
    """Run the DreamBench protocol on ``subjects`` and write the report to ``out_dir``.

    Raises:
        FileExistsError: ``out_dir`` already holds a report and ``overwrite`` is False (checked before any work).
    """
    config = config or EvaluationConfig()
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    if not subjects:
        raise ValueError("evaluate needs at least one subject.")
    if not encoders.metric_names():
        raise ValueError("evaluate needs at least one encoder (dino, clip or heldout_dino).")
    results = []
    for index, subject in enumerate(subjects, start=1):
        logger.info("Evaluating subject %d/%d: %s", index, len(subjects), subject.name)
        results.append(evaluate_subject(components, subject, encoders, config, out_dir))
    report = EvaluationReport(components.source, config, encoders.metric_names(), results)
    atomic_write_text(out_dir / "report.md", report.to_markdown())
    atomic_write_text(out_dir / "report.json", json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def rescore(
    evaluation_dir: str | os.PathLike,
    subjects: Sequence[Subject],
    encoders: EvaluationEncoders,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> EvaluationReport:
    """Score the images an earlier `evaluate` saved in ``evaluation_dir`` with other ``encoders`` (e.g. a new CLIP or
    DINO), without generating again; the report (same prompts, seeds and configuration, the new metrics) and grids
    go to ``out_dir`` (another folder). The images are read back from their 8-bit PNGs, so with the same encoders the
    scores match the original report's to the PNG quantisation (about 1e-3), not bit for bit.

    Raises:
        FileNotFoundError: ``evaluation_dir`` has no ``report.json``, lacks one of ``subjects``, or lacks one of its
            saved images (evaluations made with ``save_images=False`` cannot be rescored).
        FileExistsError: ``out_dir`` already holds a report and ``overwrite`` is False.
    """
    evaluation_dir, out_dir = Path(evaluation_dir), Path(out_dir)
    if evaluation_dir.resolve() == out_dir.resolve():
        raise ValueError(f"rescore writes a new report: choose an out_dir other than '{evaluation_dir}'.")
    report_file = evaluation_dir / "report.json"
    if not report_file.is_file():
        raise FileNotFoundError(f"'{evaluation_dir}' holds no report.json: give the folder of an earlier evaluate().")
    check_out_dir(out_dir, overwrite)
    saved = json.loads(report_file.read_text())
    config = EvaluationConfig(**{**saved["config"], "save_images": False})
    by_name = {entry["name"]: entry for entry in saved["subjects"]}
    results = []
    for subject in subjects:
        if subject.name not in by_name:
            raise FileNotFoundError(f"'{report_file}' has no subject {subject.name!r} (it has {sorted(by_name)}).")
        prompts = [entry["prompt"] for entry in by_name[subject.name]["prompts"]]
        paths = [[evaluation_dir / "images" / subject.name / f"{p:02d}_{k}.png" for k in range(config.images_per_prompt)]
                 for p in range(len(prompts))]
        missing = [str(path) for row in paths for path in row if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} saved image(s) of {subject.name} are missing, e.g. {missing[0]}: "
                                    "only an evaluation made with save_images=True can be rescored.")
        generated = [load_image_tensor(row) for row in paths]
        results.append(score_subject(subject, prompts, generated, encoders, config, out_dir))
    report = EvaluationReport(saved["source"], config, encoders.metric_names(), results)
    atomic_write_text(out_dir / "report.md", report.to_markdown())
    atomic_write_text(out_dir / "report.json", json.dumps(report.to_dict(), indent=2) + "\n")
    return report
