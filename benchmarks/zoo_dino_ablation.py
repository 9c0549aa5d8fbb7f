"""DINO variants of the emoji zoo: train the zoo's DINO with a changed `DINOTrainConfig`, then score it as an evaluator.

The generations are not made again: the variant rescores the images that a personalisation measurement saved
(``--generations``: the zoo build's ``build/zoo/personalisation``, or the ``--out`` of
``benchmarks/zoo_personalisation.py``), so every variant judges the same pictures. Reported, per bundled subject
and as means:

- ``dino``: mean cosine of the personalised model's generations to the references (all prompts; the build's
  ``dino``), split into ``dino_context`` (prompts naming no colour: the subject in a new context) and ``dino_colour``
  (prompts that recolour it); ``retrieval`` / ``retrieval_context``: how often the nearest subject is the right one;
- ``base_dino_context`` / ``base_dino_colour``: the same for the base model's generations (what the prompts score
  without personalisation); ``dino_instance``: the training prompt's generations;
- ``dino_blank`` (a flat image in the references' backdrop colour) and ``vae_dino_ceiling`` (the references' VAE
  reconstructions), as in the build record;
- ``identity``: the build's identity retrieval of held-out subjects rendered in new scenes (new contexts, and the
  plain backdrop), the zoo's DINO target (>= 0.90).

    python benchmarks/zoo_dino_ablation.py --name shipped --measure diffrl/zoo/weights/emoji/dino --json runs/dino/shipped.json
    python benchmarks/zoo_dino_ablation.py --name recolour05 --set recolour=0.5 --json runs/dino/recolour05.json

Trained variants go to ``--out/NAME`` (default ``runs/dino``); nothing is written into the shipped weights.
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

from diffrl.evaluation import load_dreambench  # noqa: E402
from diffrl.evaluation.metrics import mean_reference_similarity  # noqa: E402
from diffrl.io import atomic_write_text  # noqa: E402
from diffrl.models import DINOEncoder, load_sd_components  # noqa: E402
from diffrl.zoo.registry import DINOSpec, load  # noqa: E402
from diffrl.zoo.training.dino import DINOTrainConfig, train_dino  # noqa: E402
from diffrl.zoo.training.evaluate import identity_retrieval  # noqa: E402
from diffrl.zoo.training.personalisation import (  # noqa: E402
    blank_floor,
    latest_eval,
    references,
    saved_by_prompt_kind,
    vae_ceiling,
)
from diffrl.zoo.world import CONTEXTS  # noqa: E402

from zoo_personalisation import parse_overrides  # noqa: E402


@torch.no_grad()
def score(dino_dir: Path, generations: Path) -> dict:
    """Every figure of the module docstring for the DINO in ``dino_dir`` (a ``timm.json`` + safetensors folder)."""
    zoo = load("emoji")
    spec = DINOSpec.from_dir(dino_dir)
    dino = DINOEncoder.from_pretrained(spec.model_name, weights=spec.file, **spec.kwargs)
    subjects = load_dreambench(zoo.subjects)
    galleries = {s.name: dino(references(s)).float() for s in subjects}
    vae = load_sd_components(str(zoo.sd)).vae

    def similarity(images: torch.Tensor, name: str) -> float:
        return mean_reference_similarity(dino(images).float(), galleries[name]).mean().item()

    def hits(images: torch.Tensor, name: str) -> float:
        features = dino(images).float()
        scores = torch.stack([mean_reference_similarity(features, g) for g in galleries.values()], dim=1)
        return (scores.argmax(1) == list(galleries).index(name)).double().mean().item()

    rows = {}
    for subject in subjects:
        final = latest_eval(generations / "runs" / subject.name)
        tuned = {kind: images for kind, (images, _) in saved_by_prompt_kind(final, subject).items()}
        base = {kind: images for kind, (images, _) in saved_by_prompt_kind(generations / "base", subject).items()}
        everything = torch.cat(list(tuned.values()))
        row = {"dino": similarity(everything, subject.name), "retrieval": hits(everything, subject.name),
               "dino_context": similarity(tuned["context"], subject.name),
               "retrieval_context": hits(tuned["context"], subject.name),
               "dino_colour": similarity(tuned["colour"], subject.name),
               "base_dino_context": similarity(base["context"], subject.name),
               "base_dino_colour": similarity(base["colour"], subject.name),
               "dino_instance": similarity(saved_by_prompt_kind(final / "instance", subject)["context"][0], subject.name),
               "dino_blank": blank_floor(dino, subject),
               "vae_dino_ceiling": vae_ceiling(vae, dino, subject)["vae_dino_ceiling"]}
        rows[subject.name] = {key: round(value, 4) for key, value in row.items()}
    means = {f"mean_{key}": round(statistics.fmean(r[key] for r in rows.values()), 4) for key in next(iter(rows.values()))}
    model = spec.create()
    contexts = [c for c in CONTEXTS if c != "plain"]
    identity = {"new_contexts": identity_retrieval(model, contexts), "plain_backdrop": identity_retrieval(model, ["plain"])}
    return {"subjects": rows, **means, "min_vae_dino_ceiling": min(r["vae_dino_ceiling"] for r in rows.values()),
            "identity": identity}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--json", type=Path, required=True, help="where the figures are written")
    parser.add_argument("--out", type=Path, default=Path("runs/dino"), help="trained variants go to OUT/NAME")
    parser.add_argument("--measure", type=Path, help="score this DINO folder instead of training one")
    parser.add_argument("--generations", type=Path, default=Path("build/zoo/personalisation"),
                        help="a personalisation measurement's folder (base/ and runs/SUBJECT/eval_*)")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="DINOTrainConfig overrides")
    parser.add_argument("--seed", type=int, default=0, help="the DINO's training seed (the shipped 'dino' is 0)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("diffrl.zoo.build").setLevel(logging.INFO)
    if not (args.generations / "base").is_dir():
        parser.error(f"--generations {args.generations} has no base/ folder: give the folder of a personalisation "
                     "measurement (the zoo build's build/zoo/personalisation, or zoo_personalisation.py's --out).")
    start = time.perf_counter()
    result: dict = {"name": args.name}
    if args.measure is not None:
        folder = args.measure
    else:
        config = replace(DINOTrainConfig(seed=args.seed), **parse_overrides(args.set, parser, DINOTrainConfig))
        folder = args.out / args.name
        result["train"] = {**train_dino(folder, config), "config": asdict(config)}
    result["train_seconds"] = round(time.perf_counter() - start, 1)
    result.update(score(folder, args.generations))
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    summary = {k: v for k, v in result.items() if k.startswith(("mean_", "min_"))}
    print(json.dumps({"name": args.name, **summary, "identity": result["identity"]}, indent=1))
    return result


if __name__ == "__main__":
    main()
