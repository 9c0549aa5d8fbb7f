"""Acceptance figures of the zoo: prompt following (CLIP class, pixel context), DINO identity retrieval, no leak."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from PIL import Image
from transformers import CLIPModel, CLIPTokenizer

from diffrl.zoo.checker import classify_context
from diffrl.zoo.registry import DINOSpec
from diffrl.zoo.render import render, sample_spec
from diffrl.zoo.subjects import reference_specs
from diffrl.zoo.training.clip import normalize as clip_normalize
from diffrl.zoo.training.common import log
from diffrl.zoo.training.dino import normalize as dino_normalize
from diffrl.zoo.world import CLASSES, CONTEXTS, IDENTIFIER, PRETRAIN_GLYPHS, SUBJECTS, caption


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images -> float ``[N, 3, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.stack([np.asarray(i.convert("RGB")) for i in images])).permute(0, 3, 1, 2).float() / 255


@torch.no_grad()
def generate(pipe: StableDiffusionPipeline, prompts: list[str], seed: int, steps: int = 25, guidance: float = 6.0,
             batch: int = 64) -> torch.Tensor:
    """DDIM samples for ``prompts``: ``[N, 3, 64, 64]`` in [0, 1]."""
    out = []
    for i in range(0, len(prompts), batch):
        g = torch.Generator().manual_seed(seed + i)
        out.append(pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=g,
                        output_type="pt", height=64, width=64).images)
    return torch.cat(out)


def _pooled(x) -> torch.Tensor:
    return F.normalize(x if isinstance(x, torch.Tensor) else x.pooler_output, dim=-1)


@torch.no_grad()
def clip_zero_shot(clip: CLIPModel, tok: CLIPTokenizer, images: torch.Tensor, ensemble: bool = False) -> list[str]:
    """Zero-shot class of each image ``[N, 3, 64, 64]``: the class whose text embedding is most similar.

    Text per class: ``"a <class>"``, or with ``ensemble`` the mean embedding of ``"a <class> <context>"`` over all
    contexts (CLIP's prompt ensembling).
    """
    ctxs = list(CONTEXTS) if ensemble else ["plain"]
    t = torch.stack([
        F.normalize(_pooled(clip.get_text_features(**tok([caption(c, x) for x in ctxs], padding=True,
                                                          return_tensors="pt"))).mean(0), dim=-1)
        for c in CLASSES
    ])
    v = _pooled(clip.get_image_features(pixel_values=clip_normalize(images)))
    return [CLASSES[i] for i in (v @ t.T).argmax(-1).tolist()]


@torch.no_grad()
def dino_features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised CLS features ``[N, D]`` of images ``[N, 3, 64, 64]`` in [0, 1]."""
    return F.normalize(model(dino_normalize(images)), dim=-1)


def identity_retrieval(model: torch.nn.Module, contexts: list[str], seed: int = 7, per_subject: int = 16) -> dict:
    """NN retrieval of held-out subjects rendered in new scenes (new poses over ``contexts``) against their
    5 references (plain backdrop).

    ``acc``: gallery = subject references only; ``acc_with_distractors``: plus 5 renders of every same-class
    pretraining glyph (a hit needs the nearest gallery image to be one of the subject's own references).
    """
    rng = np.random.default_rng(seed)
    refs, ref_lab = [], []
    for k, g in enumerate(SUBJECTS):
        refs += [render(s) for s in reference_specs(g)]
        ref_lab += [k] * 5
    distract = [g for g in PRETRAIN_GLYPHS if g.noun in {s.noun for s in SUBJECTS}]
    dis = [render(s) for g in distract for s in reference_specs(g, seed=99)]
    queries, q_lab = [], []
    for k, g in enumerate(SUBJECTS):
        for _ in range(per_subject):
            queries.append(render(sample_spec(rng, [g], contexts, p_colour=0.0)))
            q_lab.append(k)
    fr, fd, fq = (dino_features(model, to_tensor(x)) for x in (refs, dis, queries))
    ref_lab_t, q_lab_t = torch.tensor(ref_lab), torch.tensor(q_lab)
    nn_ref = (fq @ fr.T).argmax(-1)
    acc = (ref_lab_t[nn_ref] == q_lab_t).float().mean().item()
    gallery = torch.cat([fr, fd])
    lab_all = torch.cat([ref_lab_t, torch.full((len(dis),), -1)])
    acc_d = (lab_all[(fq @ gallery.T).argmax(-1)] == q_lab_t).float().mean().item()
    return {"acc": round(acc, 4), "acc_with_distractors": round(acc_d, 4), "queries": len(queries)}


def no_leak(generations: dict[str, torch.Tensor], model: torch.nn.Module) -> dict:
    """DINO similarity of each subject's ``"a <class>"`` generations ``[n, 3, 64, 64]`` to the subject's
    references vs. the references' mean pairwise similarity among themselves."""
    out = {}
    for g in SUBJECTS:
        fr = dino_features(model, to_tensor([render(s) for s in reference_specs(g)]))
        fg = dino_features(model, generations[g.noun])
        rr = fr @ fr.T
        ref_ref = rr[~torch.eye(len(fr), dtype=torch.bool)].mean().item()
        out[g.name] = {"gen_to_ref": round((fg @ fr.T).mean().item(), 4), "ref_to_ref": round(ref_ref, 4)}
    return out


def save_grid(images: torch.Tensor, path: Path, cols: int = 8) -> None:
    """Save ``[N, 3, 64, 64]`` images as a grid PNG."""
    n = images.shape[0] // cols * cols
    x = (images[:n].clamp(0, 1) * 255).byte().permute(0, 2, 3, 1).numpy()
    rows = x.reshape(n // cols, cols, 64, 64, 3).transpose(0, 2, 1, 3, 4).reshape(n // cols * 64, cols * 64, 3)
    Image.fromarray(rows).save(path)


def held_in_prompts() -> list[tuple[str, str]]:
    """(class, context) pairs of the prompt-following check: every held-in class in every non-plain context."""
    return [(c, x) for c in CLASSES for x in CONTEXTS if x != "plain"]


def prompt_following(pipe: StableDiffusionPipeline, clip: CLIPModel, tok: CLIPTokenizer, seed: int = 0,
                     steps: int = 25, guidance: float = 6.0) -> tuple[dict, torch.Tensor]:
    """Generate "a <class> <context>" for :func:`held_in_prompts` and score it: the CLIP zero-shot class (plain and
    prompt-ensembled) and the pixel-level context against the prompt's; ``clip_class_acc_identifier``: the class
    accuracy of "a sks <class> <context>" on the same seeds (DreamBooth's starting point; it should stay close to
    ``clip_class_acc``). Returns the figures and the generations ``[N, 3, 64, 64]`` without identifier."""
    pairs = held_in_prompts()
    log.info("eval: generating %d images (DDIM %d steps, guidance %.1f)", len(pairs), steps, guidance)
    gen = generate(pipe, [caption(c, x) for c, x in pairs], seed, steps, guidance)
    pred_cls = clip_zero_shot(clip, tok, gen)
    pred_ens = clip_zero_shot(clip, tok, gen, ensemble=True)
    pred_ctx = [classify_context(im) for im in gen]
    tagged = generate(pipe, [caption(c, x, identifier=IDENTIFIER) for c, x in pairs], seed, steps, guidance)
    pred_tagged = clip_zero_shot(clip, tok, tagged)
    hit = lambda preds, i: [p == pair[i] for p, pair in zip(preds, pairs)]  # noqa: E731
    per_class = {c: round(float(np.mean([h for h, (cc, _) in zip(hit(pred_cls, 0), pairs) if cc == c])), 3)
                 for c in CLASSES}
    return {"clip_class_acc": round(float(np.mean(hit(pred_cls, 0))), 4),
            "clip_class_acc_ensemble": round(float(np.mean(hit(pred_ens, 0))), 4),
            "clip_class_acc_identifier": round(float(np.mean(hit(pred_tagged, 0))), 4),
            "context_acc": round(float(np.mean(hit(pred_ctx, 1))), 4), "per_class": per_class}, gen


def evaluate_zoo(weights: Path, cache: Path, seed: int = 0, steps: int = 25, guidance: float = 6.0) -> dict:
    """All acceptance figures; writes sample grids to ``weights``."""
    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline.from_pretrained(weights / "sd").to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    clip, tok = CLIPModel.from_pretrained(weights / "clip").eval(), CLIPTokenizer.from_pretrained(weights / "clip")
    contexts = [c for c in CONTEXTS if c != "plain"]
    following, gen = prompt_following(pipe, clip, tok, seed, steps, guidance)
    rng = np.random.default_rng(seed + 1)
    real_specs = [sample_spec(rng) for _ in range(256)]
    real = to_tensor([render(s) for s in real_specs])
    real_acc = float(np.mean([p == s.glyph.noun for p, s in zip(clip_zero_shot(clip, tok, real), real_specs)]))
    with torch.no_grad():
        rec = (pipe.vae.decode(pipe.vae.encode(real * 2 - 1).latent_dist.mode()).sample.clamp(-1, 1) + 1) / 2
    rec_acc = float(np.mean([p == s.glyph.noun for p, s in zip(clip_zero_shot(clip, tok, rec), real_specs)]))
    rec_ctx = float(np.mean([classify_context(im) == s.context for im, s in zip(rec, real_specs)]))
    idx = torch.tensor([i for i, (_, x) in enumerate(held_in_prompts()) if x in contexts[:4]][:64])
    save_grid(gen[idx], weights / "samples.png")
    record = {
        "sampler": {"scheduler": "DDIM", "steps": steps, "guidance": guidance, "n": len(gen)},
        "prompt_following": following,
        "references": {"clip_class_acc_real_renders": round(real_acc, 4),
                       "clip_class_acc_vae_reconstructions": round(rec_acc, 4),
                       "context_acc_vae_reconstructions": round(rec_ctx, 4), "n": len(real_specs)},
    }
    dinos = {"dino": DINOSpec.from_dir(weights / "dino"), "dino_eval": DINOSpec.from_dir(weights / "dino_eval")}
    models = {k: v.create() for k, v in dinos.items()}
    torch.manual_seed(0)
    models["random_init"] = timm.create_model("vit_small_patch16_224", pretrained=False, **dinos["dino"].kwargs).eval()
    record["identity"] = {k: identity_retrieval(m, contexts) for k, m in models.items()}
    record["identity_plain_backdrop"] = {k: identity_retrieval(m, ["plain"]) for k, m in models.items()}
    nouns = sorted({g.noun for g in SUBJECTS})
    gens = generate(pipe, [caption(c) for c in nouns for _ in range(8)], seed + 11, steps, guidance)
    per_noun = dict(zip(nouns, gens.split(8)))
    record["no_leak"] = {k: no_leak(per_noun, models[k]) for k in ("dino", "dino_eval")}
    log.info("eval: %s", record)
    return record
