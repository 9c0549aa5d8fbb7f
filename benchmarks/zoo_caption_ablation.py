"""Caption schemes of the zoo's pretraining: retrain the text tower and the U-Net with other captions, then measure.

Issue 14's question: DreamBooth on the v2 zoo trades the subject's identity for the prompt's context along one
frontier (benchmarks/zoo_v3_ablations.md), and "a sks dog" is "a dog" to the v2 text encoder. Would a model whose
captions taught the identifier slot to carry identity (`diffrl.zoo.world.SELECTORS`: "a gzo dog" is always the
poodle) or whose captions may omit the background (``context_dropout``: "a dog" is a dog anywhere) personalise
better? A variant is trained like the build's ``clip`` and ``unet`` stages (the stage-1 CLIP, whose text tower is the
SD text encoder, then the U-Net for a fixed number of steps) on the build cache's world and VAE, with the caption
fields of `diffrl.zoo.training.common.CaptionSampler` set by ``--set``; its zoo folder (``OUT/NAME/zoo``) takes the
shipped VAE, DINOs and an evaluator CLIP, and the base model's prompt following is measured here (CLIP class with and
without "sks", pixel context). Personalisation is then measured on that folder:

    python benchmarks/zoo_caption_ablation.py --name control --unet-steps 3000 --json runs/captions/control.json
    python benchmarks/zoo_caption_ablation.py --name selectors --set selector_rate=0.3 identifier_rate=0.05 \
        --unet-steps 3000 --json runs/captions/selectors.json
    python benchmarks/zoo_personalisation.py --weights runs/captions/selectors/zoo --json runs/captions/selectors_db.json \
        --subjects black_cat guide_dog --prompts-per-subject 8 --set batch_size=4 max_steps=400 --milestones 100 200

Compare variants only with each other (same steps, seeds and world): 3,000 steps train a weaker U-Net than the
shipped one (8,889 steps). A finished stage is not retrained (delete its folder to redo it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402
from transformers import CLIPModel, CLIPTokenizer  # noqa: E402

from diffrl.io import atomic_write_text  # noqa: E402
from diffrl.zoo.registry import load  # noqa: E402
from diffrl.zoo.training.clip import CLIPTrainConfig, train_clip  # noqa: E402
from diffrl.zoo.training.common import world_data, world_path  # noqa: E402
from diffrl.zoo.training.evaluate import prompt_following  # noqa: E402
from diffrl.zoo.training.unet import UNetTrainConfig, train_unet  # noqa: E402

from zoo_personalisation import parse_overrides  # noqa: E402

CACHE = Path("build/zoo")
CAPTION_FIELDS = ("identifier_rate", "selector_rate", "context_dropout")
SUBJECT_AWARE_CLIP = Path("runs/clip/subjects4000")  # benchmarks/zoo_clip_ablation.py --name subjects4000


def zoo_folder(folder: Path, sd: Path, evaluator_clip: Path) -> Path:
    """``folder``: a zoo (``sd/`` the variant's pipeline, the shipped ``dino/`` and ``dino_eval/``, ``clip/`` the
    evaluator) as links, for `diffrl.zoo.registry.zoo_paths`."""
    shipped = load("emoji")
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in (("sd", sd), ("dino", shipped.dino.file.parent), ("dino_eval", shipped.dino_eval.file.parent),
                         ("clip", evaluator_clip)):
        link = folder / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.resolve(), target_is_directory=True)
    return folder


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--json", type=Path, required=True, help="where the figures are written")
    parser.add_argument("--out", type=Path, default=Path("runs/captions"), help="the variant goes to OUT/NAME")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help=f"caption fields ({', '.join(CAPTION_FIELDS)}) for both the text tower and the U-Net")
    parser.add_argument("--unet-steps", type=int, default=3000, help="the U-Net's steps (its LR schedule's length)")
    parser.add_argument("--evaluator-clip", type=Path,
                        default=SUBJECT_AWARE_CLIP if SUBJECT_AWARE_CLIP.is_dir() else load("emoji").clip)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    captions = parse_overrides(args.set, parser, UNetTrainConfig)
    if set(captions) - set(CAPTION_FIELDS):
        parser.error(f"--set takes caption fields only ({', '.join(CAPTION_FIELDS)}), got {sorted(captions)}")
    for path in (CACHE / "vae_stage1", world_path(CACHE)):
        if not path.exists():
            parser.error(f"{path} is missing: run the zoo build's vae stage first (python scripts/build_zoo.py --stage vae).")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("diffrl.zoo.build").setLevel(logging.INFO)
    clip_config = replace(CLIPTrainConfig(), **captions)
    unet_config = replace(UNetTrainConfig(), **captions, steps=args.unet_steps, time_budget_s=None)
    folder, start = args.out / args.name, time.perf_counter()
    result: dict = {"name": args.name, "captions": {k: getattr(unet_config, k) for k in CAPTION_FIELDS},
                    "evaluator_clip": str(args.evaluator_clip)}
    world = world_data(CACHE)
    joint, sd = folder / "clip_joint", folder / "sd"
    if not (joint / "config.json").exists():
        record = {**train_clip(world, joint, clip_config), "config": asdict(clip_config)}
        atomic_write_text(folder / "record_clip.json", json.dumps(record, indent=2))
    if not (sd / "unet").is_dir():
        record = {**train_unet(world, CACHE / "vae_stage1", joint, sd, unet_config), "config": asdict(unet_config)}
        shutil.copytree(load("emoji").sd / "vae", sd / "vae", dirs_exist_ok=True)
        atomic_write_text(folder / "record_unet.json", json.dumps(record, indent=2))
    for stage in ("clip", "unet"):  # this run's, or the finished stage's
        result[stage] = json.loads((folder / f"record_{stage}.json").read_text())
    result["train_seconds"] = round(time.perf_counter() - start, 1)
    zoo = zoo_folder(folder / "zoo", sd, args.evaluator_clip)
    pipe = StableDiffusionPipeline.from_pretrained(zoo / "sd").to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    clip, tok = CLIPModel.from_pretrained(zoo / "clip").eval(), CLIPTokenizer.from_pretrained(zoo / "clip")
    result["prompt_following"] = prompt_following(pipe, clip, tok)[0]
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result["prompt_following"].items() if k != "per_class"}), f"-> {zoo}")
    return result


if __name__ == "__main__":
    main()
