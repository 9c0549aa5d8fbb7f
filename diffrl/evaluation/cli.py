"""``diffrl evaluate``: the DreamBench protocol from the command line (see `diffrl.evaluation.protocol`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG = """\
examples:
  # a model personalised on DreamBench's "dog": its 25 prompts x 4 images, 50 DDIM steps
  diffrl evaluate --pretrained runs/dog/final --dreambench ../shared/dreambench --subject dog \
      --dino-weights weights/dino_vits16.safetensors --clip weights/clip-vit-base-patch32 --out eval/dog

  # the same, quick: the first 5 prompts, 2 images each, 25 steps
  diffrl evaluate --pretrained runs/dog/final --dreambench ../shared/dreambench --subject dog \
      --prompts-per-subject 5 --images-per-prompt 2 --steps 25 --dino-weights weights/dino_vits16.safetensors \
      --clip weights/clip-vit-base-patch32 --out eval/dog-quick

  # the non-personalised baseline on all 30 subjects
  diffrl evaluate --pretrained SD_FOLDER --dreambench ../shared/dreambench \
      --dino-weights weights/dino_vits16.safetensors --clip weights/clip-vit-base-patch32 --out eval/base

  # a small custom DINO (timm kwargs as JSON) plus a held-out DINO trained with another seed
  diffrl evaluate --pretrained SD_FOLDER --subjects SUBJECTS_DIR --dino-weights dino.safetensors \\
      --dino-arch-json '{"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}' \\
      --heldout-dino-weights dino_seed1.safetensors --clip CLIP_FOLDER --out eval/run1

outputs in --out: report.json (all scores), report.md (table), grids/SUBJECT.png (references on top, one row of
generated images per prompt), images/SUBJECT/PP_K.png. Scores are raw cosine similarities in [-1, 1]. An existing
report is never replaced unless --overwrite is given. A personalised model is scored on its own subject: run once per
subject and model, then compare the report.json files. Offline, pass local files/folders for every model.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``evaluate`` on the ``diffrl`` parser's subparsers."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score a model with the DreamBench protocol (DINO, CLIP-I, CLIP-T)",
        description="Generate images for every DreamBench subject and prompt with fixed seeds and score them:\n"
        "DINO and CLIP-I (similarity to the subject's real images), CLIP-T (similarity to the prompt without the\n"
        "identifier), and optionally held-out DINO encoders that no reward saw.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--pretrained", required=True, metavar="MODEL", help="diffusers Stable Diffusion folder or hub id to evaluate")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dreambench", type=Path, metavar="DIR", help="DreamBench folder (with prompts_and_classes.txt)")
    source.add_argument("--subjects", type=Path, metavar="DIR", help="any subjects folder in the DreamBench layout")
    add("--subject", nargs="+", metavar="NAME", help="evaluate only these subjects (default: all)")
    add("--prompts-per-subject", type=int, metavar="N", help="only the first N prompts of each subject (default: all 25)")
    add("--identifier", default="sks", help="the subject's identifier token in the prompts (default: %(default)s)")

    add = parser.add_argument_group("metric encoders").add_argument
    add("--dino", default="vit_small_patch16_224.dino", metavar="TIMM_NAME", help="DINO's timm model (default: %(default)s)")
    add("--dino-weights", type=Path, metavar="FILE", help="DINO weights (.safetensors/.pth); default: the Hugging Face cache")
    add("--dino-arch-json", metavar="JSON", help="timm.create_model kwargs for DINO, as JSON text or a .json file")
    add("--heldout-dino-weights", type=Path, nargs="+", default=[], metavar="FILE", help="reported as 'DINO (held-out)'")
    add("--heldout-dino-arch-json", metavar="JSON", help="kwargs of the held-out DINOs (default: --dino-arch-json)")
    add("--clip", default="openai/clip-vit-base-patch32", metavar="MODEL", help="CLIP folder or hub id (default: %(default)s)")

    add = parser.add_argument_group("sampling").add_argument
    add("--images-per-prompt", type=int, default=4, metavar="N", help="default: %(default)s")
    add("--steps", type=int, default=50, help="DDIM steps (default: %(default)s)")
    add("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default: %(default)s)")
    add("--eta", type=float, default=0.0, help="DDIM eta (default: %(default)s)")
    add("--seed", type=int, default=0, help="base seed; prompt p uses seed + p * images-per-prompt (default: %(default)s)")

    add = parser.add_argument_group("output and hardware").add_argument
    add("--out", type=Path, required=True, metavar="DIR", help="output folder")
    add("--overwrite", action="store_true", help="replace an existing report in --out")
    add("--no-save-images", action="store_true", help="write only the report and the grids")
    add("--grid-cell", type=int, default=128, metavar="PIXELS", help="image size in the grids (default: %(default)s)")
    add("--device", help="torch device (default: cuda if available, else cpu)")
    add("--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="diffusion model precision")
    parser.set_defaults(func=run)
    return parser


def parse_arch_json(value: str | None) -> dict:
    """``timm.create_model`` kwargs from JSON text or a path to a JSON file; ``None`` -> ``{}``."""
    if value is None:
        return {}
    text = Path(value).read_text() if value.endswith(".json") and Path(value).is_file() else value
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--dino-arch-json: {value!r} is neither a JSON object nor a .json file ({err}).") from err
    if not isinstance(kwargs, dict):
        raise ValueError(f"--dino-arch-json must be a JSON object of timm.create_model kwargs, got {value!r}.")
    return kwargs


def run(args: argparse.Namespace) -> int:
    """Load the subjects, the model and the encoders, run `evaluate`, print the Markdown table."""
    import torch

    from diffrl.data.images import ImageLoadError
    from diffrl.errors import report_user_error
    from diffrl.evaluation.dreambench import DreamBenchError, load_dreambench
    from diffrl.evaluation.protocol import EvaluationConfig, EvaluationEncoders, check_out_dir, evaluate
    from diffrl.models.encoders import CLIPEncoder, DINOEncoder
    from diffrl.models.loading import ModelLoadError, load_sd_components

    try:  # cheap checks first: nothing is loaded if the data or the output folder is wrong
        config = EvaluationConfig(
            images_per_prompt=args.images_per_prompt,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            eta=args.eta,
            base_seed=args.seed,
            prompts_per_subject=args.prompts_per_subject,
            grid_cell=args.grid_cell,
            save_images=not args.no_save_images,
        )
        names = [name for value in args.subject or [] for name in value.split(",") if name] or None  # "a b" or "a,b"
        subjects = load_dreambench(args.dreambench or args.subjects, args.identifier, names)
        check_out_dir(args.out, args.overwrite)
        dino_kwargs = parse_arch_json(args.dino_arch_json)
        heldout_kwargs = parse_arch_json(args.heldout_dino_arch_json) if args.heldout_dino_arch_json else dino_kwargs
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        components = load_sd_components(args.pretrained, device=device, dtype=getattr(torch, args.dtype))
        encoders = EvaluationEncoders(
            dino=DINOEncoder.from_pretrained(args.dino, weights=args.dino_weights, **dino_kwargs).to(device),
            clip=CLIPEncoder.from_pretrained(args.clip).to(device),
            heldout_dino=[
                DINOEncoder.from_pretrained(args.dino, weights=weights, **heldout_kwargs).to(device)
                for weights in args.heldout_dino_weights
            ],
        )
        report = evaluate(components, subjects, encoders, config, args.out, overwrite=args.overwrite)
    except (DreamBenchError, ImageLoadError, ModelLoadError, FileExistsError, ValueError) as err:
        return report_user_error("diffrl evaluate", err, getattr(args, "verbose", False))
    print(report.to_markdown())
    print(f"Report written to {args.out}/report.json, report.md and grids/.")
    return 0
