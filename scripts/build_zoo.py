#!/usr/bin/env python
"""Rebuild every weight of the emoji zoo from scratch (seeded), stage by stage, and write the model card.

    python scripts/build_zoo.py                      # all stages
    python scripts/build_zoo.py --stage clip         # one stage: clip|vae|vae_decoder|clip_vision|unet|dino|dino_eval|subjects|eval|card
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffrl.zoo.training.common import STAGES, log, stage_timer, world_data  # noqa: E402

OUT = ROOT / "diffrl" / "zoo" / "weights" / "emoji"
CACHE = ROOT / "build" / "zoo"


def run_stage(stage: str, threads: int, budget_min: float | None = None) -> None:
    torch.set_num_threads(threads)
    record_path = CACHE / f"record_{stage}.json"
    record: dict = {}
    with stage_timer(stage, record):
        if stage == "clip":
            from diffrl.zoo.training.clip import train_clip

            record[stage].update(train_clip(world_data(CACHE), OUT / "clip"))
        elif stage == "clip_vision":
            from diffrl.zoo.training.clip import refine_clip_vision

            record[stage].update(refine_clip_vision(world_data(CACHE), OUT / "clip", OUT / "sd" / "vae"))
        elif stage == "vae":
            from diffrl.zoo.training.vae import train_vae

            record[stage].update(train_vae(world_data(CACHE), OUT / "sd"))
        elif stage == "vae_decoder":
            from diffrl.zoo.training.vae import refine_decoder

            record[stage].update(refine_decoder(world_data(CACHE), OUT / "sd"))
        elif stage == "unet":
            from diffrl.zoo.training.unet import UNetTrainConfig, train_unet

            cfg = UNetTrainConfig(time_budget_s=60 * budget_min if budget_min else None)
            record[stage].update(train_unet(world_data(CACHE), OUT / "sd", OUT / "clip", cfg))
        elif stage == "dino":
            from diffrl.zoo.training.dino import DINOTrainConfig, train_dino

            record[stage].update(train_dino(OUT / "dino", DINOTrainConfig(seed=0)))
        elif stage == "dino_eval":
            from diffrl.zoo.training.dino import DINOTrainConfig, train_dino

            record[stage].update(train_dino(OUT / "dino_eval", DINOTrainConfig(seed=1)))
        elif stage == "subjects":
            from diffrl.zoo.subjects import write_subjects

            record[stage].update(write_subjects(ROOT / "diffrl" / "zoo" / "subjects"))
        elif stage == "eval":
            from diffrl.zoo.training.evaluate import evaluate_zoo

            record[stage].update(evaluate_zoo(OUT, CACHE))
        elif stage == "card":
            from diffrl.zoo.training.card import write_card

            write_card(OUT, CACHE)
    if stage != "card":
        record_path.write_text(json.dumps(record, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=STAGES + ("all",), default="all")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--unet-budget-min", type=float, default=None,
                    help="stop UNet training after this many minutes (LR schedule follows elapsed time)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    for stage in STAGES if args.stage == "all" else (args.stage,):
        run_stage(stage, args.threads, args.unet_budget_min)


if __name__ == "__main__":
    main()
