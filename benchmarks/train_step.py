"""Seconds per optimizer step and peak memory: DPG (look-forward), DPG + DINO, one-step DPG and DreamBooth.

All methods train the same loaded model on the same batch (step 0 of the same seeded data), interleaved round-robin
so that machine load affects them alike; medians are reported with ratios to DreamBooth.

    python benchmarks/train_step.py                                   # tiny random models (CPU smoke figures)
    python benchmarks/train_step.py --pretrained CompVis/stable-diffusion-v1-4 --instance-dir DIR \
        --dino-weights dino_vits16.safetensors --batch-size 1 --repeats 10
    python benchmarks/train_step.py --memory --repeats 3   # U-Net gradient checkpointing: peak memory, step time

``--memory`` trains a random U-Net with SD v1's layout (4 levels, 2 layers each, cross-attention in the first three,
self-attention over 64 x 64 latents at the top) but ``--width`` base channels, batch 4, eps-MSE + AdamW, with and
without gradient checkpointing (what ``TrainConfig.gradient_checkpointing`` switches on). Target: peak memory cut by
>= 40%; the step-time cost is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from diffrl.models import load_sd_components
from diffrl.models.tiny import build_tiny_dino, build_tiny_sd, sd15_unet_settings
from diffrl.training import TrainConfig, Trainer

VARIANTS = {
    "dreambooth": dict(method="dreambooth"),
    "dpg_lookforward": dict(method="dpg", rewards={"lookforward": 1.0}),
    "dpg_dino": dict(method="dpg", rewards={"lookforward": 1.0, "dino": 1.0}),
    "one_step_lookforward": dict(method="one_step", rewards={"lookforward": 1.0}),
}
TARGETS = {"dpg_lookforward": 1.10, "dpg_dino": 1.5}
CHECKPOINTING_MEMORY_CUT = 0.40


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the mode and still alive (CPU has no allocator statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and not tensor.is_meta:
                storage = tensor.untyped_storage()
                if storage.data_ptr() not in self.live and storage.nbytes():
                    self.live[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
        return out


def seconds(step: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_mib(step: Callable[[], object], device: torch.device) -> float:
    """Peak memory allocated during one step beyond what was allocated before it, in MiB (a separate, untimed run)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with PeakTensorMemory() as tracker:
        step()
    return tracker.peak / 2**20


def sd_shaped_unet(width: int, latent_size: int) -> torch.nn.Module:
    """A random U-Net with SD v1's block layout and ``width`` base channels (SD v1: 320), 64-d text tokens."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=latent_size, in_channels=4, out_channels=4, cross_attention_dim=64,
                                **sd15_unet_settings(width))


def checkpointing_memory(width: int, latent_size: int, batch: int, repeats: int, device: torch.device) -> None:
    """Peak memory and s/step of one U-Net training step with and without gradient checkpointing."""
    results = {}
    for checkpointing in (False, True):
        unet = sd_shaped_unet(width, latent_size).to(device).train()
        if checkpointing:
            unet.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
        generator = torch.Generator().manual_seed(0)
        latents = torch.randn(batch, 4, latent_size, latent_size, generator=generator).to(device)
        timesteps = torch.randint(0, 1000, (batch,), generator=generator).to(device)
        text = torch.randn(batch, 77, 64, generator=generator).to(device)
        noise = torch.randn(latents.shape, generator=generator).to(device)

        def step() -> None:
            prediction = unet(latents, timesteps, encoder_hidden_states=text).sample
            torch.nn.functional.mse_loss(prediction, noise).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()  # warm-up, allocates the optimizer state
        times = [seconds(step, device) for _ in range(repeats)]
        results[checkpointing] = (peak_mib(step, device), statistics.median(times))
        params = sum(p.numel() for p in unet.parameters())
    (plain_mib, plain_s), (ckpt_mib, ckpt_s) = results[False], results[True]
    cut = 1 - ckpt_mib / plain_mib
    print(f"SD-v1-shaped U-Net, width {width} ({params / 1e6:.1f}M parameters), {latent_size}x{latent_size} latents, "
          f"batch {batch}, device {device}, {torch.get_num_threads()} threads, {repeats} repeats (median)")
    print(f"{'gradient checkpointing':<24}{'peak MiB':>10}{'s/step':>10}")
    print(f"{'off':<24}{plain_mib:>10.1f}{plain_s:>10.3f}")
    print(f"{'on':<24}{ckpt_mib:>10.1f}{ckpt_s:>10.3f}")
    verdict = "met" if cut >= CHECKPOINTING_MEMORY_CUT else "MISSED"
    print(f"peak memory cut {cut:.0%} (target >= {CHECKPOINTING_MEMORY_CUT:.0%}: {verdict}); step time x{ckpt_s / plain_s:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", help="Stable Diffusion folder or hub id (default: a tiny random model)")
    parser.add_argument("--zoo", action="store_true", help="the embedded emoji zoo: its SD model, DINO and a bundled subject")
    parser.add_argument("--instance-dir", type=Path, help="subject images (default: 4 random images)")
    parser.add_argument("--dino-weights", help="DINO weights (default: a tiny random DINO)")
    parser.add_argument("--dino-kwargs", type=json.loads, default={}, metavar="JSON",
                        help="timm.create_model kwargs of --dino-weights' architecture (default: ViT-S/16's own)")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no",
                        help="Accelerate's autocast for every method (the critic stays fp32) (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=64, help="image size of the tiny model (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--prior", type=int, default=0, metavar="N",
                        help="prior preservation with N class images for every method, as DreamBooth is used (default: off)")
    parser.add_argument("--memory", action="store_true", help="gradient checkpointing on an SD-shaped U-Net (see above)")
    parser.add_argument("--width", type=int, default=16, help="--memory: base channels of the U-Net (default: %(default)s)")
    parser.add_argument("--latent-size", type=int, default=64, help="--memory: latent side (default: %(default)s)")
    parser.add_argument("--memory-batch", type=int, default=4, help="--memory: batch size (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        checkpointing_memory(args.width, args.latent_size, args.memory_batch, args.repeats, device)
        return
    tmp = Path(tempfile.mkdtemp(prefix="diffrl-bench-"))
    dino = dict(dino_weights=args.dino_weights, dino_kwargs=args.dino_kwargs)
    if args.zoo:
        from diffrl.zoo.registry import load

        zoo = load("emoji")
        args.pretrained, args.instance_dir = str(zoo.sd), zoo.subjects / "guide_dog"
        dino = dict(dino_weights=str(zoo.dino.file), dino_arch=zoo.dino.model_name, dino_kwargs=zoo.dino.kwargs)
    if args.pretrained is None:
        print("tiny random models: figures show framework overhead, not Stable Diffusion cost")
        args.pretrained = str(build_tiny_sd(tmp / "sd", image_size=args.image_size))
        weights, kwargs = build_tiny_dino(tmp / "dino.safetensors")
        dino = dict(dino_weights=str(weights), dino_kwargs=kwargs)
    if args.instance_dir is None:
        args.instance_dir = tmp / "instance"
        args.instance_dir.mkdir()
        for index in range(4):
            Image.fromarray(np.random.default_rng(index).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(args.instance_dir / f"{index}.png")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    components = load_sd_components(args.pretrained, device=device)
    prior = dict(num_class_images=args.prior, class_prompt="a photo of dog", class_dir=str(tmp / "class")) if args.prior else {}
    trainers = {
        name: Trainer(
            TrainConfig(pretrained=args.pretrained, instance_dir=str(args.instance_dir), instance_prompt="a photo of sks dog",
                        output_dir=str(tmp / name), batch_size=args.batch_size, max_steps=1,
                        mixed_precision=args.mixed_precision, **dino, **prior, **variant),
            components=components,
        )
        for name, variant in VARIANTS.items()
    }
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for repeat in range(args.warmup + args.repeats):
        for name, trainer in trainers.items():  # interleaved: every method sees the same machine state
            elapsed = seconds(trainer.train_step, device)
            if repeat >= args.warmup:
                times[name].append(elapsed)
    memory = {name: peak_mib(trainer.train_step, device) for name, trainer in trainers.items()}
    print(f"device: {device}, threads: {args.threads}, batch size: {args.batch_size}, repeats: {args.repeats} (median), "
          f"mixed precision: {args.mixed_precision}, "
          f"prior preservation: {f'{args.prior} class images' if args.prior else 'off'}")
    base = statistics.median(times["dreambooth"])
    print(f"{'method':<22}{'s/step':>10}{'peak MiB':>10}{'x DreamBooth':>14}{'mem x DB':>10}  target (time)")
    for name, values in times.items():
        median, target = statistics.median(values), TARGETS.get(name)
        verdict = f"<= {target:.2f} {'met' if median / base <= target else 'MISSED'}" if target else ""
        ratio = memory[name] / memory["dreambooth"]
        print(f"{name:<22}{median:>10.4f}{memory[name]:>10.1f}{median / base:>14.2f}{ratio:>10.2f}  {verdict}")


if __name__ == "__main__":
    main()
