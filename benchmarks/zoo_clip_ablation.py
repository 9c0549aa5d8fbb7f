"""CLIP variants of the emoji zoo: retrain the zoo CLIP's second stage (its vision tower) with a changed
`CLIPTrainConfig`, then score it as the DreamBench evaluator (CLIP-T, CLIP class).

The second stage trains a fresh vision tower against the frozen stage-1 text tower (which is the SD pipeline's
text encoder, so the generator is unchanged); it reads the build cache (``build/zoo``: the rendered world and
``clip_joint``) and the shipped VAE. Reported:

- ``truth``: per subject, the CLIP-T of renders of the subject drawn exactly as its 8 new-context prompts ask (4 poses
  each), and the same for a pretraining glyph of its class; ``truth_class_acc``: the zero-shot class accuracy of
  those subject renders. CLIP-T cannot ask more of a personalised model than its ground truth scores;
- ``generations``: CLIP-T of the images a personalisation measurement saved (``--generations``), the base model's and
  the personalised model's, split by prompt kind (new contexts / recolouring), as the build's ``clip_t``;
- ``prompt_following``: the zoo's own target, the CLIP class accuracy of base generations ("a <class> <context>",
  136 prompts; target >= 0.80), generated here with the shipped pipeline.

    python benchmarks/zoo_clip_ablation.py --name shipped --measure diffrl/zoo/weights/emoji/clip --json runs/clip/shipped.json
    python benchmarks/zoo_clip_ablation.py --name subjects4000 --set subject_scenes=4000 --json runs/clip/subjects4000.json

Trained variants go to ``--out/NAME`` (default ``runs/clip``); nothing is written into the shipped weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402
from transformers import CLIPModel, CLIPTokenizer  # noqa: E402

from diffrl.evaluation import load_dreambench  # noqa: E402
from diffrl.evaluation.metrics import paired_similarity, remove_identifier  # noqa: E402
from diffrl.io import atomic_write_text  # noqa: E402
from diffrl.models import CLIPEncoder  # noqa: E402
from diffrl.zoo.registry import load  # noqa: E402
from diffrl.zoo.render import render, sample_spec  # noqa: E402
from diffrl.zoo.training.clip import CLIPTrainConfig, refine_clip_vision  # noqa: E402
from diffrl.zoo.training.common import world_data  # noqa: E402
from diffrl.zoo.training.evaluate import clip_zero_shot, prompt_following, to_tensor  # noqa: E402
from diffrl.zoo.training.personalisation import latest_eval, saved_by_prompt_kind  # noqa: E402
from diffrl.zoo.world import CONTEXTS, PRETRAIN_GLYPHS, SUBJECTS, caption  # noqa: E402

from zoo_personalisation import parse_overrides  # noqa: E402

CACHE = Path("build/zoo")


@torch.no_grad()
def truth(clip: CLIPEncoder, model: CLIPModel, tok: CLIPTokenizer, poses: int = 4, seed: int = 0) -> dict:
    """CLIP-T of ground-truth renders in the 8 new contexts, per subject and for a pretraining glyph of its class."""
    rng = np.random.default_rng(seed)
    contexts = [c for c in CONTEXTS if c != "plain"]

    def renders(glyph) -> tuple[torch.Tensor, list[str]]:
        specs = [sample_spec(rng, [glyph], [c], p_colour=0.0) for c in contexts for _ in range(poses)]
        return to_tensor([render(s) for s in specs]), [caption(glyph.noun, s.context) for s in specs]

    rows = {}
    for subject in SUBJECTS:
        classmate = next(g for g in PRETRAIN_GLYPHS if g.noun == subject.noun)
        images, texts = renders(subject)
        mates, mate_texts = renders(classmate)
        rows[subject.name] = {
            "clip_t": paired_similarity(clip.encode_images(images).float(), clip.encode_texts(texts).float()).mean().item(),
            f"clip_t_{classmate.name}": paired_similarity(clip.encode_images(mates).float(),
                                                          clip.encode_texts(mate_texts).float()).mean().item(),
            "class_acc": float(np.mean([p == subject.noun for p in clip_zero_shot(model, tok, images)])),
        }
    return {name: {k: round(v, 4) for k, v in row.items()} for name, row in rows.items()}


@torch.no_grad()
def generations(clip: CLIPEncoder, folder: Path) -> dict:
    """CLIP-T of saved generations of the base (``folder/base``) and personalised (``folder/runs/SUBJECT/eval_*``, the
    last) models, per subject and prompt kind."""
    rows = {}
    for subject in load_dreambench(load("emoji").subjects):
        row = {}
        for model, where in (("base", folder / "base"), ("tuned", latest_eval(folder / "runs" / subject.name))):
            everything = []
            for kind, (images, prompts) in saved_by_prompt_kind(where, subject).items():
                texts = [remove_identifier(prompt, subject.identifier) for prompt in prompts]
                scores = paired_similarity(clip.encode_images(images).float(), clip.encode_texts(texts).float()).tolist()
                row[f"{model}_clip_t_{kind}"] = round(statistics.fmean(scores), 4)
                everything += scores
            row[f"{model}_clip_t"] = round(statistics.fmean(everything), 4)
        rows[subject.name] = row
    keys = next(iter(rows.values())).keys()
    return {"subjects": rows, **{f"mean_{k}": round(statistics.fmean(r[k] for r in rows.values()), 4) for k in keys}}


def score(clip_dir: Path, folder: Path, with_prompt_following: bool) -> dict:
    clip = CLIPEncoder.from_pretrained(clip_dir)
    model, tok = CLIPModel.from_pretrained(clip_dir).eval(), CLIPTokenizer.from_pretrained(clip_dir)
    rows = truth(clip, model, tok)
    result = {"truth": rows, "mean_truth_clip_t": round(statistics.fmean(r["clip_t"] for r in rows.values()), 4),
              "mean_truth_class_acc": round(statistics.fmean(r["class_acc"] for r in rows.values()), 4),
              "generations": generations(clip, folder)}
    if with_prompt_following:
        pipe = StableDiffusionPipeline.from_pretrained(load("emoji").sd).to(torch.float32)
        pipe.set_progress_bar_config(disable=True)
        result["prompt_following"] = prompt_following(pipe, model, tok)[0]
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--json", type=Path, required=True, help="where the figures are written")
    parser.add_argument("--out", type=Path, default=Path("runs/clip"), help="trained variants go to OUT/NAME")
    parser.add_argument("--measure", type=Path, help="score this CLIP folder instead of training one")
    parser.add_argument("--generations", type=Path, default=CACHE / "personalisation",
                        help="a personalisation measurement's folder (base/ and runs/SUBJECT/eval_*)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="CLIPTrainConfig overrides")
    parser.add_argument("--no-prompt-following", action="store_true", help="skip the base-generation class check")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("diffrl.zoo.build").setLevel(logging.INFO)
    start = time.perf_counter()
    result: dict = {"name": args.name}
    if args.measure is not None:
        folder = args.measure
    else:
        if not (CACHE / "clip_joint").is_dir():
            parser.error(f"{CACHE / 'clip_joint'} is missing: run the zoo build's clip stage first "
                         "(python scripts/build_zoo.py --stage clip).")
        config = replace(CLIPTrainConfig(), **parse_overrides(args.set, parser, CLIPTrainConfig))
        folder = args.out / args.name
        record = refine_clip_vision(world_data(CACHE), CACHE / "clip_joint", load("emoji").sd / "vae", folder, config)
        result["train"] = {**record, "config": asdict(config)}
    result["train_seconds"] = round(time.perf_counter() - start, 1)
    result.update(score(folder, args.generations, not args.no_prompt_following))
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    summary = {k: v for k, v in result.items() if k.startswith("mean_")}
    summary.update({k: v for k, v in result["generations"].items() if k.startswith("mean_")})
    summary.update({k: v for k, v in result.get("prompt_following", {}).items() if k != "per_class"})
    print(json.dumps({"name": args.name, **summary}, indent=1))
    return result


if __name__ == "__main__":
    main()
