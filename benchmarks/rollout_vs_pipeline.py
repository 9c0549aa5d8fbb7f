"""Images per second of `env.rollout` with `UNetActor` vs `StableDiffusionPipeline`, interleaved in one run.

    python benchmarks/rollout_vs_pipeline.py                 # the embedded zoo model (tiny random one if absent)
    python benchmarks/rollout_vs_pipeline.py --pretrained DIR --batch-size 8 --steps 25
    python benchmarks/rollout_vs_pipeline.py --eta 1   # stochastic DDIM: the env also records every log-probability

Both produce latents (no VAE decode) from the same prompts, seed, steps and guidance; they are timed alternately
(`--repeats` rounds, after a warm-up) and the ratio of medians (env time / pipeline time) is printed.
Target: <= 1.05 at batch 8, 25 steps, also with ``--eta 1`` (log pi of every step, as DDPO / GRPO collect it; the
env draws the step noise in the pipeline's order, so the final latents still agree).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from diffrl.models import load_sd_components
from diffrl.sampling import generate_latents


def default_model(tmp: Path) -> tuple[str, str]:
    """The zoo's SD folder, or a tiny random pipeline written to `tmp` when the zoo is unavailable."""
    try:
        from diffrl.zoo import load

        return str(load("emoji").sd), "embedded zoo (emoji)"
    except (ImportError, FileNotFoundError, AttributeError):
        from diffrl.models.tiny import build_tiny_sd

        return str(build_tiny_sd(tmp / "tiny_sd", image_size=64)), "tiny random SD-format model (zoo unavailable)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", default=None, help="hub id or local pipeline folder (default: the zoo)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (> 0: stochastic steps with log-probabilities)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: %(default)s")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                        help="weights and latents of both (default: %(default)s)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        pretrained, label = (args.pretrained, args.pretrained) if args.pretrained else default_model(Path(tmp))
        components = load_sd_components(pretrained, scheduler="ddim", device=args.device, dtype=getattr(torch, args.dtype))
        device = torch.device(args.device)
        pipe = components.pipeline()
        pipe.set_progress_bar_config(disable=True)
        prompts = [f"a photo of object {i}" for i in range(args.batch_size)]

        def run_env() -> torch.Tensor:
            return generate_latents(components, prompts, num_inference_steps=args.steps, guidance_scale=args.guidance,
                                    eta=args.eta, seed=0)

        @torch.no_grad()
        def run_pipeline() -> torch.Tensor:
            generator = torch.Generator(device).manual_seed(0)  # the env's generator lives on the device too
            return pipe(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance, eta=args.eta,
                        generator=generator, output_type="latent").images

        max_diff = (run_env() - run_pipeline()).abs().max().item()  # also the warm-up
        env_times, pipe_times = [], []
        for _ in range(args.repeats):
            for fn, times in ((run_env, env_times), (run_pipeline, pipe_times)):
                synchronize(device)
                start = time.perf_counter()
                fn()
                synchronize(device)
                times.append(time.perf_counter() - start)

    env_s, pipe_s = statistics.median(env_times), statistics.median(pipe_times)
    print(f"model: {label}")
    print(f"batch {args.batch_size}, {args.steps} steps, guidance {args.guidance}, eta {args.eta}, {args.repeats} interleaved repeats, "
          f"{torch.get_num_threads()} threads, device {components.device}, {args.dtype}")
    print(f"max |env - pipeline| on final latents: {max_diff:.2e}")
    print(f"env.rollout : {env_s:.3f} s/batch  {args.batch_size / env_s:8.2f} images/s")
    print(f"pipeline    : {pipe_s:.3f} s/batch  {args.batch_size / pipe_s:8.2f} images/s")
    print(f"ratio env/pipeline time: {env_s / pipe_s:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
