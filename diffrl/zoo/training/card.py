"""Write the model card ``weights/emoji/README.md`` (and ``build_record.json``) from the stage records."""

from __future__ import annotations

import json
from pathlib import Path

from diffrl.zoo.world import CLASSES, CONTEXTS, PRETRAIN_GLYPHS, SUBJECTS


def _mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def write_card(weights: Path, cache: Path) -> None:
    """Collect ``cache/record_<stage>.json`` into ``weights/build_record.json`` and render the model card."""
    rec: dict = {}
    for f in sorted(cache.glob("record_*.json")):
        rec.update(json.loads(f.read_text()))
    (weights / "build_record.json").write_text(json.dumps(rec, indent=2))
    g = lambda *ks: _get(rec, ks)  # noqa: E731
    rows = [
        ("CLIP (text + vision towers)", "clip", g("clip", "params"), _mb(weights / "clip"), g("clip", "seconds"),
         f"contrastive loss {g('clip', 'final_loss')} after {g('clip', 'steps')} steps"),
        ("VAE (AutoencoderKL, 64x64x3 -> 8x8x4)", "sd/vae", g("vae", "params"), _mb(weights / "sd" / "vae"),
         g("vae", "seconds"), f"L1 {g('vae', 'final_l1')}, PSNR {g('vae', 'recon_psnr_db')} dB, "
         f"scaling_factor {g('vae', 'scaling_factor')}"),
        ("UNet2DConditionModel (sample_size 8)", "sd/unet", g("unet", "params"), _mb(weights / "sd" / "unet"),
         g("unet", "seconds"), f"eps-MSE {g('unet', 'final_loss')} after {g('unet', 'steps')} steps (EMA weights)"),
        ("DINO ViT (seed 0)", "dino", g("dino", "params"), _mb(weights / "dino"), g("dino", "seconds"),
         f"DINO loss {g('dino', 'final_loss')} after {g('dino', 'steps')} steps"),
        ("DINO ViT (seed 1, held-out evaluator)", "dino_eval", g("dino_eval", "params"), _mb(weights / "dino_eval"),
         g("dino_eval", "seconds"), f"DINO loss {g('dino_eval', 'final_loss')}"),
    ]
    table = "\n".join(f"| {a} | `{b}` | {c:,} | {d:.2f} | {e} | {f} |" if isinstance(c, int) else
                      f"| {a} | `{b}` | {c} | {d:.2f} | {e} | {f} |" for a, b, c, d, e, f in rows)
    pf, ident, leak = rec.get("eval", {}).get("prompt_following", {}), rec.get("eval", {}).get("identity", {}), \
        rec.get("eval", {}).get("no_leak", {})
    ident_rows = "\n".join(f"| {k} | {v['acc']:.3f} | {v['acc_with_distractors']:.3f} | {v['queries']} |"
                           for k, v in ident.items())
    leak_rows = "\n".join(f"| {m} | {s} | {v['gen_to_ref']:.3f} | {v['ref_to_ref']:.3f} |"
                          for m, d in leak.items() for s, v in d.items())
    total_mb = _mb(weights)
    text = f"""# diffrl emoji zoo (`diffrl.zoo.load("emoji")`)

Tiny stand-ins, in the real formats, for Stable Diffusion v1.4, DINO ViT-S/16 and CLIP ViT-B/32, trained from
scratch on CPU by `python scripts/build_zoo.py` (seeded; every stage can be rerun with `--stage NAME`).
Total size on disk: {total_mb:.1f} MB (fp32 safetensors).

## Training data

Procedural 64x64 scenes of Noto Color Emoji glyphs (font: Debian `fonts-noto-color-emoji`, SIL OFL) rendered by
`diffrl.zoo.render` (24,000 scenes, seed 0): {len(PRETRAIN_GLYPHS)} pretraining glyphs of {len(CLASSES)} classes
({", ".join(CLASSES)}) over {len(CONTEXTS)} contexts ({", ".join(CONTEXTS)}), 20% hue-shifted
("a red/purple/blue/green ..."), random position, scale and rotation (+-15 deg). Captions mirror DreamBench
prompts, e.g. "a red dog in the snow". Held out of all pretraining (the personalization subjects, bundled under
`diffrl/zoo/subjects/` in DreamBench layout): {", ".join(f"{g.name} ({g.noun})" for g in SUBJECTS)}.

## Models

| model | folder | params | MB | train time (s) | final figures |
| --- | --- | --- | --- | --- | --- |
{table}

Text encoder and tokenizer of `sd/` are the CLIP text tower (frozen while training the UNet) and its BPE
tokenizer (vocabulary built on the caption corpus; the identifier `sks` is one token). The UNet was trained with
10% empty captions (classifier-free guidance). Scheduler: DDIM with the SD v1 config. Time is wall-clock on a
shared 2-core CPU (other jobs were running), so it overstates the compute needed.

## Quality

Prompt following (held-in classes, {pf and rec['eval']['sampler']['n']} prompts "a <class> <context>", every class x
non-plain context; DDIM {g('eval', 'sampler', 'steps')} steps, guidance {g('eval', 'sampler', 'guidance')}):

- CLIP zero-shot class of generations = prompt class: **{pf.get('clip_class_acc')}** (target >= 0.70);
  same CLIP on real renders: {pf.get('clip_class_acc_on_real_renders')}
- pixel-level context checker (`diffrl.zoo.classify_context`) = prompt context: **{pf.get('context_acc')}**
  (target >= 0.80)
- per-class CLIP accuracy: {pf.get('per_class')}

Identity: nearest-neighbour retrieval (DINO CLS, cosine) of held-out subjects rendered in new scenes
(non-plain contexts, new poses) against their 5 references; "with distractors" adds 5 renders of each same-class
pretraining glyph to the gallery.

| ViT | acc | acc with distractors | queries |
| --- | --- | --- | --- |
{ident_rows}

No leak: the base model prompted with "a <class>" does not reproduce a held-out subject (mean DINO cosine of 8
generations to the subject's references vs. mean cosine among the references):

| ViT | subject | generations-to-references | references-to-references |
| --- | --- | --- | --- |
{leak_rows}

`samples.png`: generations of the base model (rows of "a <class> <context>"), DDIM {g('eval', 'sampler', 'steps')} steps.
"""
    (weights / "README.md").write_text(text)


def _get(rec: dict, keys: tuple[str, ...]):
    for k in keys:
        if not isinstance(rec, dict) or k not in rec:
            return "n/a"
        rec = rec[k]
    return rec
