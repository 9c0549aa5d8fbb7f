"""Cost of each reward per batch, relative to one U-Net forward pass on the same batch.

Time: every item is timed once per round, rounds repeated with the items in a fresh random order each round
(interleaved, so drifting machine load hits all items alike); we report the median over rounds.
Forward-only items (under ``no_grad``) are compared with a U-Net forward; forward+backward items (differentiable
rewards, gradient w.r.t. the action) with a U-Net forward+backward (gradient w.r.t. its parameters).
Image rewards include their one VAE decode of x0_hat (shown separately as ``vae_decode``).

Memory: each item runs in its own fresh subprocess (same models, same batch): after one warm-up call, freed heap is
returned to the OS (``malloc_trim``), the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``), the item runs
once, and we report peak RSS (``VmHWM``) minus the RSS just before the call: the extra resident memory the call
needed at its peak, page-granular, CPU only (Linux).

    python benchmarks/reward_cost.py                # tiny random models (offline, seconds)
    python benchmarks/reward_cost.py --zoo          # the bundled emoji zoo (diffrl.zoo.load("emoji"))
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from diffrl.models import SDComponents, encode_prompts, load_sd_components
from diffrl.models.encoders import CLIPEncoder, DINOEncoder
from diffrl.models.tiny import TINY_DINO_KWARGS, build_tiny_clip, build_tiny_dino, build_tiny_sd
from diffrl.rewards import (
    CallableReward,
    CLIPImageReward,
    CLIPTextReward,
    ColorTargetReward,
    DINOReward,
    JPEGCompressibilityReward,
    LookForwardReward,
    Reward,
    RewardInputs,
    make_decoder,
)

PROMPT = "a photo of sks dog on the beach"


def load_models(zoo: bool, workdir: Path) -> tuple[SDComponents, DINOEncoder, CLIPEncoder]:
    """Tiny random models written to (or already in) ``workdir``, or the emoji zoo."""
    if zoo:
        try:
            from diffrl.zoo import load  # the bundled pretrained zoo

            paths = load("emoji")
        except (ImportError, FileNotFoundError) as err:
            raise SystemExit(f"--zoo: the emoji zoo is not available ({err}); run without --zoo for tiny models.") from err
        return load_sd_components(paths.sd), DINOEncoder(paths.dino.create()), CLIPEncoder.from_pretrained(paths.clip)
    if not (workdir / "sd").exists():
        build_tiny_sd(workdir / "sd")
        build_tiny_dino(workdir / "dino.safetensors")
        build_tiny_clip(workdir / "clip")
    dino = DINOEncoder.from_pretrained(weights=workdir / "dino.safetensors", **TINY_DINO_KWARGS)
    return load_sd_components(workdir / "sd"), dino, CLIPEncoder.from_pretrained(workdir / "clip")


def make_items(sd: SDComponents, dino: DINOEncoder, clip: CLIPEncoder, batch: int) -> dict[str, Callable[[], None]]:
    """Name -> a call to time. ``*_fwd`` run under no_grad; ``*_grad`` run forward+backward."""
    gen = torch.Generator().manual_seed(0)
    channels, h, w = sd.latent_shape
    image_size = h * sd.vae_scale_factor
    x0 = torch.randn(batch, channels, h, w, generator=gen)
    t = torch.randint(0, sd.scheduler.config.num_train_timesteps, (batch,), generator=gen)
    x_t = sd.scheduler.add_noise(x0, torch.randn(x0.shape, generator=gen), t)
    with torch.no_grad():
        embeds = encode_prompts(sd.tokenizer, sd.text_encoder, [PROMPT] * batch)
        action = sd.unet(x_t, t, encoder_hidden_states=embeds).sample
    decode = make_decoder(sd.vae)
    references = torch.rand(4, 3, image_size, image_size, generator=gen)
    rewards: dict[str, Reward] = {
        "lookforward": LookForwardReward(),
        "dino": DINOReward(dino, references),
        "clip_image": CLIPImageReward(clip, references),
        "clip_text": CLIPTextReward(clip),
        "jpeg": JPEGCompressibilityReward(),
        "color": ColorTargetReward(target_rgb=(1.0, 0.5, 0.0)),
        "callable_numpy": CallableReward(lambda images: images.mean(axis=(1, 2, 3)), name="mean", input="numpy"),
    }
    sd.unet.requires_grad_(True)
    sd.vae.requires_grad_(False)

    def inputs(requires_grad: bool) -> RewardInputs:
        a = action.clone().requires_grad_(requires_grad)
        return RewardInputs(x_t, t, a, sd.scheduler.alphas_cumprod[t], x0=x0, prompts=[PROMPT] * batch, decode=decode)

    def unet_forward() -> None:
        with torch.no_grad():
            sd.unet(x_t, t, encoder_hidden_states=embeds)

    def unet_forward_backward() -> None:
        sd.unet(x_t, t, encoder_hidden_states=embeds).sample.square().mean().backward()
        sd.unet.zero_grad(set_to_none=True)

    def vae_decode() -> None:
        with torch.no_grad():
            decode(x0)

    items: dict[str, Callable[[], None]] = {"unet_fwd": unet_forward, "unet_grad": unet_forward_backward, "vae_decode_fwd": vae_decode}
    for name, reward in rewards.items():
        items[f"{name}_fwd"] = lambda reward=reward: _no_grad_call(reward, inputs(False))
        if reward.differentiable:
            items[f"{name}_grad"] = lambda reward=reward: reward(inputs(True)).sum().backward()
    return items


def _no_grad_call(reward: Reward, inputs: RewardInputs) -> None:
    with torch.no_grad():
        reward(inputs)


def time_items(items: dict[str, Callable[[], None]], rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call, items interleaved in a random order each round."""
    order, times = list(items), {name: [] for name in items}
    rng = random.Random(0)
    for round_index in range(warmup + rounds):
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            items[name]()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_mb(call: Callable[[], None]) -> float:
    """Peak RSS during ``call`` minus the RSS before it, in MB (Linux)."""
    call()  # warm-up: one-time allocations (thread pools, caches) are not the item's cost
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    call()
    return (_status_kb("VmHWM") - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", action="store_true", help="use diffrl.zoo.load('emoji') instead of tiny random models")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (after 2 warm-up rounds)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-item memory subprocesses")
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--memory-item", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        items = make_items(*load_models(args.zoo, workdir), batch=args.batch)
        if args.memory_item:  # child process: one memory measurement
            print(json.dumps({"peak_mb": peak_memory_mb(items[args.memory_item])}))
            return
        seconds = time_items(items, args.rounds)
        memory = {} if args.no_memory else {name: _measure_in_subprocess(name, args, workdir) for name in items}
    report(seconds, memory, args)


def _measure_in_subprocess(name: str, args: argparse.Namespace, workdir: Path) -> float:
    command = [sys.executable, __file__, "--memory-item", name, "--workdir", str(workdir), "--batch", str(args.batch)]
    command += ["--threads", str(args.threads), *(["--zoo"] if args.zoo else [])]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])["peak_mb"]


def report(seconds: dict[str, float], memory: dict[str, float], args: argparse.Namespace) -> None:
    models = "emoji zoo" if args.zoo else "tiny random models"
    print(f"# reward cost per batch of {args.batch}, {models}, {args.threads} CPU thread(s), median of {args.rounds} rounds")
    print(f"{'item':<20}{'ms':>10}{'x U-Net':>10}{'peak MB':>10}{'x U-Net':>10}")
    for name in sorted(seconds, key=lambda n: (n.endswith("_grad"), n)):
        base = "unet_grad" if name.endswith("_grad") else "unet_fwd"
        row = f"{name:<20}{seconds[name] * 1e3:>10.2f}{seconds[name] / seconds[base]:>10.2f}"
        if memory:
            ratio = memory[name] / memory[base] if memory[base] > 0 else np.nan
            row += f"{memory[name]:>10.2f}{ratio:>10.2f}"
        print(row)
    print("(_fwd: no_grad, vs U-Net forward; _grad: forward+backward to the action, vs U-Net forward+backward)")


if __name__ == "__main__":
    main()
