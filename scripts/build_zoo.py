#!/usr/bin/env python
"""Rebuild every weight of the emoji zoo from scratch (seeded), stage by stage, and write the model card.

    python scripts/build_zoo.py --jobs 2           # all stages, two at a time (one process and one thread each)
    python scripts/build_zoo.py                    # all stages, one after another
    python scripts/build_zoo.py --stage clip       # one stage (any of the --stage choices)

A stage starts once the stages it reads have finished (``STAGE_DEPENDS``); with ``--jobs`` each stage logs to
``build/zoo/logs/<stage>.log``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffrl.io import atomic_write_text  # noqa: E402
from diffrl.zoo.training.build import ZooBuildConfig, run_stage  # noqa: E402
from diffrl.zoo.training.common import STAGE_DEPENDS, STAGES, log  # noqa: E402
from diffrl.zoo.training.schedule import run_parallel  # noqa: E402

CONFIG = ZooBuildConfig(weights=ROOT / "diffrl" / "zoo" / "weights" / "emoji", cache=ROOT / "build" / "zoo",
                        subjects=ROOT / "diffrl" / "zoo" / "subjects")


def recorded_durations(cfg: ZooBuildConfig) -> dict[str, float]:
    """Stage times of the last build (``build_record.json``), to start the longest chains first."""
    path = cfg.weights / "build_record.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    return {s: float(record.get(s, {}).get("seconds", 1.0)) for s in STAGES}


def launch(stage: str, args: argparse.Namespace) -> subprocess.Popen:
    logs = args.cache / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--stage", stage, "--threads", str(args.threads), "--weights", str(args.weights),
           "--cache", str(args.cache), "--subjects", str(args.subjects)]
    if args.unet_budget_min:
        cmd += ["--unet-budget-min", str(args.unet_budget_min)]
    log.info("start %s (log: %s)", stage, logs / f"{stage}.log")
    with open(logs / f"{stage}.log", "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=STAGES + ("all",), default="all")
    ap.add_argument("--jobs", type=int, default=1, help="stages run at once, each in its own process (all stages)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads per stage (default: the cores divided among the jobs)")
    ap.add_argument("--weights", type=Path, default=CONFIG.weights,
                    help="folder of the models a build ships (default: the package's own zoo)")
    ap.add_argument("--cache", type=Path, default=CONFIG.cache, help="rendered world, stage-1 models, stage records")
    ap.add_argument("--subjects", type=Path, default=CONFIG.subjects, help="bundled subjects (DreamBench layout)")
    ap.add_argument("--unet-budget-min", type=float, default=None,
                    help="stop UNet training after this many minutes (LR schedule follows elapsed time)")
    args = ap.parse_args()
    if args.jobs < 1 or (args.jobs > 1 and args.stage != "all"):
        ap.error("--jobs must be >= 1 and applies to the whole build (--stage all)")
    args.threads = args.threads or max(1, torch.get_num_threads() // args.jobs)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    cfg = replace(CONFIG, weights=args.weights, cache=args.cache, subjects=args.subjects)
    if args.unet_budget_min:
        cfg = replace(cfg, unet=replace(cfg.unet, time_budget_s=60 * args.unet_budget_min))
    if args.stage not in ("eval", "card"):  # the last whole build's wall time no longer describes the weights
        cfg.record_path("build").unlink(missing_ok=True)
    if args.stage != "all":
        run_stage(args.stage, cfg)
        return
    t0 = time.time()
    stages = tuple(s for s in STAGES if s != "card")  # the card reports the wall time of all the others
    if args.jobs > 1:
        run_parallel(stages, STAGE_DEPENDS, recorded_durations(cfg), args.jobs, lambda s: launch(s, args))
    else:
        for stage in stages:
            run_stage(stage, cfg)
    record = {"build": {"jobs": args.jobs, "threads": args.threads, "wall_seconds": round(time.time() - t0, 1)}}
    atomic_write_text(cfg.record_path("build"), json.dumps(record, indent=2))
    run_stage("card", cfg)


if __name__ == "__main__":
    main()
