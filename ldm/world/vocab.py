"""The shapes world's attributes and its two caption vocabularies.

Why two: the base model (stage 2) is trained on `base` captions only; the mission (stage 3) teaches the
text encoder `new` captions. Every attribute word of `new` is a CLIP token id that never occurs in a
`base` caption (checked in tests), so before stage 3 the base model has never trained those ids, and
whatever it draws for a new prompt is chance. A caption parses back to its attributes, so the judge and
the tests can read labels from the Flickr8k caption files alone.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ldm.data.synthetic import COLOURS, POSITIONS, SHAPES

ATTRIBUTES = ("shape", "colour", "position")
CAPTIONS_PER_IMAGE = 5  # as in Flickr8k
VALUES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": tuple(COLOURS), "position": tuple(POSITIONS)}


@dataclass(frozen=True)
class Vocabulary:
    """Words for each attribute value and sentence templates with `{shape} {colour} {position}` slots.

    Each image gets Flickr8k's five captions from `CAPTIONS_PER_IMAGE` of the `templates`, drawn per image:
    with only five fixed sentences a model learns where in the sentence a colour stands, and a held-out
    sentence moves it. `held_out` templates are never written to the world's caption files, only used for
    evaluation prompts.
    """

    name: str
    words: MappingProxyType  # attribute -> value -> phrase
    templates: tuple[str, ...]
    held_out: tuple[str, ...]

    def caption(self, attrs: dict[str, str], template: str) -> str:
        """Fill one template; a caption that starts with a phrase gets a capital, as people write."""
        text = template.format(**{a: self.words[a][attrs[a]] for a in ATTRIBUTES})
        return text[0].upper() + text[1:]

    def captions(self, attrs: dict[str, str], rng: random.Random) -> list[str]:
        """The five training captions of a scene: distinct templates drawn with `rng`."""
        return [self.caption(attrs, t) for t in rng.sample(self.templates, CAPTIONS_PER_IMAGE)]

    def parse(self, caption: str) -> dict[str, str] | None:
        """Attributes named in `caption`, or None when it does not name exactly one value of each."""
        text = caption.lower()
        found = {}
        for attr in ATTRIBUTES:
            hits = [v for v, phrase in self.words[attr].items() if re.search(rf"\b{re.escape(phrase)}\b", text)]
            if len(hits) != 1:
                return None
            found[attr] = hits[0]
        return found


def _vocabulary(name: str, words: dict, templates: tuple[str, ...], held_out: tuple[str, ...]) -> Vocabulary:
    for attr in ATTRIBUTES:
        assert set(words[attr]) == set(VALUES[attr]), f"{name}: {attr} words must cover {VALUES[attr]}"
    frozen = MappingProxyType({a: MappingProxyType(dict(w)) for a, w in words.items()})
    return Vocabulary(name, frozen, templates, held_out)


BASE = _vocabulary(
    "base",
    {
        "shape": {s: s for s in SHAPES},
        "colour": {c: c for c in COLOURS},
        "position": {p: POSITIONS[p][1] for p in POSITIONS},  # "on the left", "in the center", ...
    },
    templates=(
        "a {colour} {shape} {position}",
        "a {colour} {shape} {position} on a dark background",
        "{position}, a {colour} {shape}",
        "a drawing of a {colour} {shape} {position}",
        "there is a {colour} {shape} {position}",
        "an image of a {colour} {shape} {position}",
        "the {colour} {shape} is {position}",
        "a plain {colour} {shape} {position}",
        "we see a {colour} {shape} {position}",
        "{colour} {shape} {position}",
        "a simple {colour} {shape} shown {position}",
        "this shows a {colour} {shape} {position}",
    ),
    held_out=("a picture with a {colour} {shape} {position}",),
)

NEW = _vocabulary(
    "new",
    {
        "shape": {"circle": "disc", "square": "block", "triangle": "wedge", "diamond": "kite"},
        "colour": {
            "red": "crimson",
            "green": "emerald",
            "blue": "azure",
            "yellow": "golden",
            "purple": "violet",
            "white": "ivory",
        },
        "position": {
            "left": "toward the west",
            "right": "toward the east",
            "top": "toward the north",
            "bottom": "toward the south",
            "center": "at the core",
        },
    },
    templates=(
        "a {colour} {shape} sits {position}",
        "{position}, one {colour} {shape}",
        "one {colour} {shape} resting {position}",
        "sketch: {colour} {shape} {position}",
        "a lone {colour} {shape} lies {position}",
        "behold a {colour} {shape} {position}",
        "{colour} {shape}, placed {position}",
        "the {colour} {shape} waits {position}",
        "some {colour} {shape} drawn {position}",
        "here a {colour} {shape} rests {position}",
        "a single {colour} {shape} set {position}",
        "look: a {colour} {shape} {position}",
    ),
    held_out=("{position} lies a {colour} {shape}",),
)

VOCABULARIES: dict[str, Vocabulary] = {"base": BASE, "new": NEW}


def parse_caption(caption: str) -> tuple[str, dict[str, str]] | None:
    """(vocabulary name, attributes) of a caption in either vocabulary, or None."""
    for vocab in VOCABULARIES.values():
        attrs = vocab.parse(caption)
        if attrs is not None:
            return vocab.name, attrs
    return None


def caption_token_ids(vocab: Vocabulary, tokenizer: Any) -> set[int]:
    """Every token id a caption of `vocab` can hold: its templates (held-out ones too) and its words.

    CLIP's tokenizer lowercases and splits words before BPE, so tokenizing the pieces apart gives the ids
    of every filled-in caption (the tests compare it with the tokenized captions).
    """
    slots = {attr: " " for attr in ATTRIBUTES}
    texts = [t.format(**slots) for t in (*vocab.templates, *vocab.held_out)]
    texts += [phrase for words in vocab.words.values() for phrase in words.values()]
    return {i for text in texts for i in tokenizer(text, add_special_tokens=False).input_ids}
