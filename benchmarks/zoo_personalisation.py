"""Personalisability of the emoji zoo: DreamBooth per bundled subject, zoo-DINO / retrieval / CLIP-T / VAE ceiling.

The same measurement as the zoo build's eval stage (``eval.personalisation`` of ``build_record.json``), on the
shipped zoo or on another zoo folder, with optional `TrainConfig` overrides for ablations:

    python benchmarks/zoo_personalisation.py --json runs/pers/base.json                 # library defaults
    python benchmarks/zoo_personalisation.py --json runs/pers/lr1e-4.json --set lr_actor=1e-4 \
        --milestones 100 200 --subjects guide_dog racing_car --prompts-per-subject 8
    python benchmarks/zoo_personalisation.py --json F --weights DIR   # a zoo folder with sd/, dino/, dino_eval/, clip/
    python benchmarks/zoo_personalisation.py --json F --weights DIR --subjects-root SUBJECTS  # and its own subjects

Runs and DreamBench reports go to ``--out`` (default: beside the JSON file).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import fields, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported

import torch  # noqa: E402

from diffrl.io import atomic_write_text  # noqa: E402
from diffrl.training import TrainConfig  # noqa: E402
from diffrl.zoo.registry import SUBJECTS_ROOT, WEIGHTS_ROOT, zoo_paths  # noqa: E402
from diffrl.zoo.training.personalisation import (  # noqa: E402
    PersonalisationConfig,
    default_evaluation,
    measure_personalisation,
)


def parse_value(text: str):
    """``"1e-4"`` -> 1e-4, ``"true"`` -> True, ``"sks"`` -> "sks" (JSON if it parses, else the string)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(items: list[str], parser: argparse.ArgumentParser, config_type: type) -> dict:
    """``--set FIELD=VALUE ...`` as ``{FIELD: parse_value(VALUE)}`` for fields of the dataclass ``config_type``; an
    item without ``=`` or a field ``config_type`` lacks is a usage error (before any model loads)."""
    known = [field.name for field in fields(config_type)]
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes FIELD=VALUE, got {item!r}")
        if key not in known:
            parser.error(f"--set: {config_type.__name__} has no field {key!r}; its fields: {', '.join(known)}")
        overrides[key] = parse_value(value)
    return overrides


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, PersonalisationConfig]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True, help="where the figures are written")
    parser.add_argument("--out", type=Path, help="runs and reports (default: JSON path without suffix)")
    parser.add_argument("--weights", type=Path, default=WEIGHTS_ROOT / "emoji", help="zoo folder (default: shipped)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="TrainConfig overrides")
    parser.add_argument("--milestones", nargs="*", type=int, default=[], help="also score at these steps")
    parser.add_argument("--subjects", nargs="*", help="default: all bundled subjects")
    parser.add_argument("--subjects-root", type=Path, default=SUBJECTS_ROOT,
                        help="folder of the bundled subjects, DreamBench layout (default: shipped)")
    parser.add_argument("--prompts-per-subject", type=int, help="default: all 25")
    parser.add_argument("--images-per-prompt", type=int, default=default_evaluation().images_per_prompt)
    parser.add_argument("--guidance", type=float, default=default_evaluation().guidance_scale)
    parser.add_argument("--extra-guidance", nargs="*", type=float, default=[], help="also score the final model")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    train = parse_overrides(args.set, parser, TrainConfig)
    evaluation = replace(default_evaluation(), images_per_prompt=args.images_per_prompt,
                         guidance_scale=args.guidance, prompts_per_subject=args.prompts_per_subject)
    cfg = PersonalisationConfig(train=train, milestones=tuple(args.milestones), evaluation=evaluation,
                                extra_guidance=tuple(args.extra_guidance),
                                subjects=tuple(args.subjects) if args.subjects else None)
    return args, cfg


def main(argv: list[str] | None = None) -> dict:
    args, cfg = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("diffrl.zoo.build").setLevel(logging.INFO)
    start = time.perf_counter()
    out = args.out or args.json.with_suffix("")
    record = measure_personalisation(zoo_paths(args.weights, args.subjects_root), out, cfg)
    record["wall_s"] = round(time.perf_counter() - start, 1)
    record["weights"] = str(args.weights)
    atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")
    rows = [f"{n}: dino {r['dino']:.3f} retrieval {r['retrieval']:.2f} ceiling {r['vae_dino_ceiling']:.3f} "
            f"psnr {r['vae_psnr']:.1f} clip_t {r['clip_t']:.3f} (base {r['clip_t_base']:.3f})"
            for n, r in record["subjects"].items()]
    print("\n".join(rows))
    print(f"mean_dino {record['mean_dino']} mean_retrieval {record['mean_retrieval']} clip_t {record['clip_t']} "
          f"(base {record['clip_t_base']}) in {record['wall_s']} s -> {args.json}")
    return record


if __name__ == "__main__":
    main()
