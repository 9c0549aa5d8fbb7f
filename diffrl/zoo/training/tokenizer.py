"""Build a CLIP-format BPE tokenizer (vocab.json + merges.txt) on the caption corpus; every identifier word is one token."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPTokenizer

from diffrl.zoo.world import IDENTIFIER_POOL, SELECTORS, caption_corpus

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins for bytes used by GPT-2/CLIP byte-level BPE, in CLIP's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def build_tokenizer(out_dir: Path, model_max_length: int = 77) -> CLIPTokenizer:
    """Train BPE merges on the corpus (every word becomes one token) and save a ``CLIPTokenizer`` to ``out_dir``."""
    corpus = caption_corpus()
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=5000, min_frequency=1, end_of_word_suffix="</w>", show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    merges = [tuple(m) if isinstance(m, (list, tuple)) else tuple(m.split(" ")) for m in json.loads(bpe.to_str())["model"]["merges"]]
    chars = _bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(dict.fromkeys(vocab))}))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    tok = CLIPTokenizer(str(out_dir / "vocab.json"), str(out_dir / "merges.txt"), model_max_length=model_max_length)
    tok.save_pretrained(out_dir)
    for word in (*IDENTIFIER_POOL, *SELECTORS.values()):
        ids = tok(f"a {word} dog").input_ids
        assert len(ids) == 5, f"identifier {word!r} not a single token: {tok.convert_ids_to_tokens(ids)}"
    return tok
