"""The emoji world: classes, glyphs (pretraining and held-out), contexts, colours and captions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Glyph:
    """One emoji glyph of a class; ``subject`` is set for held-out personalization subjects."""

    name: str
    char: str
    noun: str
    subject: bool = False


GLYPHS: tuple[Glyph, ...] = (
    Glyph("dog", "\U0001f415", "dog"),
    Glyph("dog_face", "\U0001f436", "dog"),
    Glyph("guide_dog", "\U0001f9ae", "dog", subject=True),
    Glyph("service_dog", "\U0001f415\u200d\U0001f9ba", "dog"),
    Glyph("poodle", "\U0001f429", "dog"),
    Glyph("cat", "\U0001f408", "cat"),
    Glyph("cat_face", "\U0001f431", "cat"),
    Glyph("black_cat", "\U0001f408\u200d\u2b1b", "cat", subject=True),
    Glyph("teapot", "\U0001fad6", "teapot"),
    Glyph("backpack", "\U0001f392", "backpack"),
    Glyph("teddy_bear", "\U0001f9f8", "teddy bear"),
    Glyph("duck", "\U0001f986", "duck"),
    Glyph("chick", "\U0001f425", "duck"),
    Glyph("baby_chick", "\U0001f424", "duck"),
    Glyph("robot", "\U0001f916", "robot"),
    Glyph("car", "\U0001f697", "car"),
    Glyph("suv", "\U0001f699", "car"),
    Glyph("taxi", "\U0001f695", "car"),
    Glyph("police_car", "\U0001f693", "car"),
    Glyph("racing_car", "\U0001f3ce\ufe0f", "car", subject=True),
    Glyph("candle", "\U0001f56f\ufe0f", "candle"),
    Glyph("mantelpiece_clock", "\U0001f570\ufe0f", "clock", subject=True),
    Glyph("clock_face", "\U0001f550", "clock"),
    Glyph("alarm_clock", "\u23f0", "clock"),
    Glyph("hiking_boot", "\U0001f97e", "boot"),
    Glyph("fancy_boot", "\U0001f462", "boot", subject=True),
    Glyph("sneaker", "\U0001f45f", "sneaker"),
    Glyph("sunglasses", "\U0001f576\ufe0f", "sunglasses"),
    Glyph("glasses", "\U0001f453", "sunglasses"),
    Glyph("vase", "\U0001f3fa", "vase"),
    Glyph("bowl", "\U0001f963", "bowl"),
    Glyph("can", "\U0001f96b", "can"),
    Glyph("poop_emoji", "\U0001f4a9", "poop emoji"),
)

CLASSES: tuple[str, ...] = tuple(dict.fromkeys(g.noun for g in GLYPHS))
PRETRAIN_GLYPHS: tuple[Glyph, ...] = tuple(g for g in GLYPHS if not g.subject)
SUBJECTS: tuple[Glyph, ...] = tuple(g for g in GLYPHS if g.subject)
GLYPH_BY_NAME: dict[str, Glyph] = {g.name: g for g in GLYPHS}

# context name -> caption phrase ("" = plain studio backdrop, no phrase): DreamBench's 20 backgrounds, lower case
CONTEXTS: dict[str, str] = {
    "plain": "",
    "jungle": "in the jungle",
    "snow": "in the snow",
    "beach": "on the beach",
    "cobblestone": "on a cobblestone street",
    "pink_fabric": "on top of pink fabric",
    "wooden_floor": "on top of a wooden floor",
    "city": "with a city in the background",
    "water": "floating on top of water",
    "mountain": "with a mountain in the background",
    "blue_house": "with a blue house in the background",
    "purple_rug_forest": "on top of a purple rug in a forest",
    "wheat_field": "with a wheat field in the background",
    "autumn_tree": "with a tree and autumn leaves in the background",
    "eiffel_tower": "with the eiffel tower in the background",
    "milk": "floating in an ocean of milk",
    "sunflowers": "on top of green grass with sunflowers around it",
    "mirror": "on top of a mirror",
    "crowded_sidewalk": "on top of the sidewalk in a crowded street",
    "dirt_road": "on top of a dirt road",
    "white_rug": "on top of a white rug",
}

# colour word -> target hue in degrees (property changes: the glyph is hue-shifted)
COLOURS: dict[str, float] = {"red": 0.0, "purple": 280.0, "blue": 220.0, "green": 120.0, "yellow": 55.0}

IDENTIFIER = "sks"
# Identifier-like words: rare tokens that pretraining puts, for a fraction of captions, in the slot between colour
# and noun ("a red sks dog"), so that an unknown word there keeps the class (DreamBooth's starting point). Without
# them "a sks <class>" drew the right class 10% of the time against 89% for "a <class>"
# (benchmarks/zoo_v2_ablations.md, section 1.3).
IDENTIFIER_POOL: tuple[str, ...] = (IDENTIFIER, "zwx", "qlv", "vyk", "jxq", "phr", "bnz", "kty")

# Instance selectors: one rare word per pretraining glyph, put (for a fraction of captions) in the same slot, so that
# the slot can carry identity as a real text encoder's names do: "a gzo dog" is always the poodle, "a dog" any dog.
# A word of `IDENTIFIER_POOL` selects nothing. Used when a zoo stage's `selector_rate` > 0.
SELECTORS: dict[str, str] = dict(zip(
    (glyph.name for glyph in PRETRAIN_GLYPHS),
    ("wuv", "gzo", "fyx", "dov", "hik", "mux", "yez", "rqo", "tiv", "lox", "cuz", "nev", "pyb", "kej", "xad", "vom",
     "jig", "zul", "bix", "quf", "wab", "fen", "yod", "gux", "hov", "mib", "tez", "rux"),
    strict=True,
))


def caption(noun: str, context: str = "plain", colour: str | None = None, identifier: str | None = None) -> str:
    """Build a DreamBench-style caption, e.g. ``caption("dog", "snow", "red") == "a red dog in the snow"``."""
    words = ["a"] + ([colour] if colour else []) + ([identifier] if identifier else []) + [noun]
    phrase = CONTEXTS[context]
    return " ".join(words + ([phrase] if phrase else []))


def with_identifier(text: str, noun: str, identifier: str) -> str:
    """``text`` (a caption of ``noun``) with ``identifier`` in front of the noun:
    ``with_identifier("a red dog in the snow", "dog", "sks") == "a red sks dog in the snow"``."""
    head, sep, tail = text.partition(f" {noun}")
    if not sep:
        raise ValueError(f"caption {text!r} does not name {noun!r}")
    return f"{head} {identifier} {noun}{tail}"


def without_context(text: str) -> str:
    """A caption with its context phrase dropped: ``without_context("a red dog in the snow") == "a red dog"``."""
    phrase = CONTEXTS[prompt_context(text)]
    return text[: -len(phrase) - 1] if phrase else text


def prompt_context(prompt: str) -> str:
    """The context a zoo caption asks for (a key of `CONTEXTS`; ``"plain"`` when it names none):
    ``prompt_context("a dog in the snow") == "snow"``."""
    named = [name for name, phrase in CONTEXTS.items() if phrase and prompt.endswith(" " + phrase)]
    return named[0] if named else "plain"


def prompt_colour(prompt: str) -> str | None:
    """The colour a zoo caption gives its subject (a key of `COLOURS`), or ``None``:
    ``prompt_colour("a purple sks dog on the beach") == "purple"``."""
    named = [word for word in prompt.split() if word in COLOURS]
    return named[0] if named else None


def caption_corpus() -> list[str]:
    """Every caption the world can produce (plus subject-style prompts), for tokenizer training."""
    out = []
    for noun in CLASSES:
        for ctx in CONTEXTS:
            for col in (None, *COLOURS):
                out.append(caption(noun, ctx, col))
                out.extend(caption(noun, ctx, col, word) for word in IDENTIFIER_POOL)
    for glyph in PRETRAIN_GLYPHS:
        out.extend(caption(glyph.noun, ctx, col, SELECTORS[glyph.name]) for ctx in CONTEXTS for col in (None, *COLOURS))
    return out
