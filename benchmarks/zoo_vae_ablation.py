"""VAE variants of the emoji zoo: train both VAE stages with a changed `VAETrainConfig`, then score the subjects.

Trains ``train_vae`` + ``refine_decoder`` (the zoo build's two VAE stages, same world data and seeds) into
``--out/NAME`` and reports, per bundled subject, the VAE ceiling (zoo-DINO cosine of each reference's reconstruction
to the reference; also with the held-out ``dino_eval``) and the reconstructions' PSNR, plus the build's own PSNR on
512 world scenes. Nothing is written into the shipped weights.

    python benchmarks/zoo_vae_ablation.py --name lc16 --set latent_channels=16 --json runs/vae/lc16.json
    python benchmarks/zoo_vae_ablation.py --name shipped --measure diffrl/zoo/weights/emoji/sd/vae --json F
    python benchmarks/zoo_vae_ablation.py --name dino1 --stage1 runs/vae/base/vae_stage1 --set dino_weight=1 --json F
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

import torch  # noqa: E402
from diffusers import AutoencoderKL  # noqa: E402

from diffrl.evaluation import load_dreambench  # noqa: E402
from diffrl.io import atomic_write_text  # noqa: E402
from diffrl.models import DINOEncoder  # noqa: E402
from diffrl.zoo.registry import load  # noqa: E402
from diffrl.zoo.training.common import n_params, world_data  # noqa: E402
from diffrl.zoo.training.personalisation import blank_floor, vae_ceiling  # noqa: E402
from diffrl.zoo.training.vae import VAETrainConfig, recon_psnr, refine_decoder, train_vae  # noqa: E402

from zoo_personalisation import parse_overrides  # noqa: E402


def score(vae: AutoencoderKL) -> dict:
    """Per subject: ceiling with the zoo's DINO and with its held-out DINO, PSNR; and their means / minimum."""
    zoo = load("emoji")
    dino, held_out = (DINOEncoder.from_pretrained(s.model_name, weights=s.file, **s.kwargs)
                      for s in (zoo.dino, zoo.dino_eval))
    subjects = {}
    for subject in load_dreambench(zoo.subjects):
        row = vae_ceiling(vae, dino, subject)
        row["vae_dino_eval_ceiling"] = vae_ceiling(vae, held_out, subject)["vae_dino_ceiling"]
        row["dino_blank"] = blank_floor(dino, subject)
        subjects[subject.name] = row
    mean = lambda key: round(statistics.fmean(r[key] for r in subjects.values()), 4)  # noqa: E731
    return {"subjects": subjects, "mean_vae_dino_ceiling": mean("vae_dino_ceiling"),
            "min_vae_dino_ceiling": min(r["vae_dino_ceiling"] for r in subjects.values()),
            "mean_vae_dino_eval_ceiling": mean("vae_dino_eval_ceiling"), "mean_vae_psnr": mean("vae_psnr"),
            "params": n_params(vae), "latent_channels": vae.config.latent_channels}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/vae"), help="VAEs and the world cache go here")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="VAETrainConfig overrides")
    parser.add_argument("--measure", type=Path, help="only score this VAE folder (no training)")
    parser.add_argument("--stage1", type=Path, help="reuse this stage-1 VAE (train only the decoder stage)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("diffrl.zoo.build").setLevel(logging.INFO)
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in parse_overrides(args.set, parser, VAETrainConfig).items()}
    cfg = replace(VAETrainConfig(), **overrides)
    start = time.perf_counter()
    record: dict = {"name": args.name, "overrides": overrides}
    world = world_data(args.out / "cache")
    if args.measure:
        vae_dir = args.measure
    else:
        stage1, vae_dir = args.stage1 or args.out / args.name / "vae_stage1", args.out / args.name / "vae"
        record["config"] = asdict(cfg)
        record["stage1"] = {"reused": str(stage1)} if args.stage1 else train_vae(world, stage1, cfg)
        dino = load("emoji").dino.create() if cfg.dino_weight > 0 else None
        record["decoder"] = refine_decoder(world, stage1, vae_dir, cfg, dino=dino)
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    record["world_psnr"] = recon_psnr(vae, world)
    record.update(score(vae))
    record["wall_s"] = round(time.perf_counter() - start, 1)
    atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")
    for name, r in record["subjects"].items():
        print(f"{name}: ceiling {r['vae_dino_ceiling']:.3f} (dino_eval {r['vae_dino_eval_ceiling']:.3f}) "
              f"psnr {r['vae_psnr']:.1f}")
    print(f"{args.name}: mean ceiling {record['mean_vae_dino_ceiling']} min {record['min_vae_dino_ceiling']} "
          f"mean psnr {record['mean_vae_psnr']} world psnr {record['world_psnr']} in {record['wall_s']} s")
    return record


if __name__ == "__main__":
    main()
