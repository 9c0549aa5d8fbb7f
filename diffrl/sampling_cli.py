"""``diffrl sample``: images from a pipeline through `DenoisingEnv` + `UNetActor`."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
examples:
  diffrl sample --pretrained runs/dog/final --prompt "a sks dog on the beach" --num-images 4 --out samples/
  diffrl sample --pretrained CompVis/stable-diffusion-v1-4 --prompt "a photo of a dog" --steps 50 --guidance 7.5 --out sd/

Images are written as PNG files (NN.png) plus grid.png; an existing file is never replaced unless --overwrite.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``sample`` on the ``diffrl`` parser's subparsers."""
    parser = subparsers.add_parser(
        "sample",
        help="generate images with a (personalised) model",
        description="Sample images by rolling out the denoising environment with the U-Net actor (DDIM or DDPM).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--pretrained", required=True, metavar="MODEL", help="diffusers Stable Diffusion folder or hub id")
    add("--prompt", required=True, action="append", help="text prompt; repeat for several prompts")
    add("--num-images", type=int, default=4, metavar="N", help="images per prompt (default: %(default)s)")
    add("--steps", type=int, default=25, help="inference steps (default: %(default)s)")
    add("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default: %(default)s)")
    add("--eta", type=float, default=0.0, help="DDIM eta (default: %(default)s)")
    add("--scheduler", choices=("ddim", "ddpm"), default="ddim")
    add("--seed", type=int, default=0)
    add("--device", default="cpu")
    add("--out", type=Path, required=True, metavar="DIR", help="output folder")
    add("--overwrite", action="store_true", help="replace existing images in --out")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from torchvision.utils import make_grid, save_image

    from diffrl.io import atomic_write
    from diffrl.models import load_sd_components
    from diffrl.sampling import generate

    prompts = [prompt for prompt in args.prompt for _ in range(args.num_images)]
    targets = [args.out / f"{index:02d}.png" for index in range(len(prompts))] + [args.out / "grid.png"]
    existing = [path for path in targets if path.exists()]
    if existing and not args.overwrite:
        print(f"error: {existing[0]} already exists; pass --overwrite to replace the images in {args.out}.")
        return 2
    components = load_sd_components(args.pretrained, device=args.device, scheduler=args.scheduler)
    images = generate(
        components, prompts, num_inference_steps=args.steps, guidance_scale=args.guidance, eta=args.eta, seed=args.seed
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for path, image in zip(targets, [*images, make_grid(images, nrow=args.num_images)]):
        atomic_write(path, lambda handle: save_image(image, handle, format="png"))
    print(f"wrote {len(prompts)} images and grid.png to {args.out}")
    return 0
