"""Small generated corpora with the inputs that break caption scorers, for differential tests against the reference
tools (tests/test_scoring_differential.py) and the larger sweep (`python -m bench.scoring_sweep`).

`make_corpus(seed)` is deterministic: the same seed gives the same corpus on every machine and Python version (only
`random.Random` with explicit choices), so a failing seed can be rerun and reported. Every corpus mixes samples of
these kinds (see KINDS): a prediction equal to one of its references (one, several or all samples), equal up to case,
punctuation or a stem, with no word in common, one word, punctuation only (empty after tokenization), a repeated word,
hundreds of words, digits, hyphens and apostrophes, non-ASCII letters, a line-final one-letter word and a period
(the tokenizer's look-ahead), empty; references with duplicates, different counts per sample, whole samples repeated,
and a corpus of a single sample. Texts are already normalised (single spaces, no line breaks), and nothing in them is
something scoring's prediction cleanup removes, so both sides score exactly the same strings.
"""

from __future__ import annotations

import random
from dataclasses import replace

from scoring_reference import Corpus

SUBJECTS = ["a dog", "two dogs", "the man", "a woman", "three children", "a red car", "the old building", "a cat",
            "people", "a small boat", "the tall tree", "a bus"]  # fmt: skip
VERBS = ["runs on", "sits near", "walks along", "stands in front of", "is parked by", "looks at", "plays in",
         "waits at", "rests under", "crosses"]  # fmt: skip
PLACES = ["the grass", "a beach", "the street", "a river", "the park", "a wooden bridge", "the snow", "a market",
          "the mountains", "a parking lot"]  # fmt: skip
EXTRAS = ["", "", "", "on a sunny day", "at night", "in the rain", "with blue sky", "near some trees"]
DISJOINT = ["zebra", "quantum", "violin", "saxophone", "nebula", "origami", "glacier", "pyramid", "lantern"]
NON_ASCII = ["café", "naïve", "Straße", "über", "façade", "jalapeño", "smörgåsbord", "São Paulo", "Zürich", "résumé"]
ODD_WORDS = ["well-known", "dog's", "isn't", "x-ray", "children's", "o'clock", "twenty-one", "don't", "rock'n'roll"]
PUNCTUATION_ONLY = ["...", "!", "?!", ". . .", "--", ",", "( )", "''", "; :"]
ONE_LETTER = ["the letter b.", "a sign with the letter x.", "grade a.", "a a a a.", "plan b."]

KINDS = (
    "copy", "copy", "case", "punctuation", "stem", "disjoint", "one_word", "punctuation_only", "repeated", "long",
    "digits", "odd_words", "non_ascii", "one_letter", "empty", "partial", "partial", "partial",
)  # fmt: skip


def _caption(rng: random.Random) -> str:
    parts = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(PLACES), rng.choice(EXTRAS)]
    text = " ".join(part for part in parts if part)
    text = text[0].upper() + text[1:]
    return text + rng.choice([".", ".", ".", "", "!"])


def _reference(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.08:
        return f"{rng.choice(SUBJECTS).capitalize()} with {rng.randint(2, 99)} {rng.choice(['flags', 'windows'])}."
    if roll < 0.14:
        return f"A {rng.choice(ODD_WORDS)} {rng.choice(['sign', 'toy', 'house'])} in {rng.choice(NON_ASCII)}."
    if roll < 0.18:
        return f"A wall shows {rng.choice(ONE_LETTER)}"
    return _caption(rng)


def _prediction(kind: str, references: list[str], rng: random.Random) -> str:
    reference = rng.choice(references)
    words = reference.rstrip(".!").split()
    if kind == "copy":
        return reference
    if kind == "case":
        return rng.choice([reference.upper(), reference.lower(), reference.title()])
    if kind == "punctuation":
        return " ".join(words) + rng.choice(["", " !", "?", ",", "..."])
    if kind == "stem":
        swaps = {"dog": "dogs", "dogs": "dog", "runs": "running", "sits": "sitting", "walks": "walking", "cat": "cats",
                 "tree": "trees", "car": "cars", "man": "men", "looks": "looking"}  # fmt: skip
        return " ".join(swaps.get(word, word) for word in words) + "."
    if kind == "disjoint":
        return " ".join(rng.choice(DISJOINT) for _ in range(rng.randint(2, 7)))
    if kind == "one_word":
        return rng.choice([rng.choice(words), rng.choice(DISJOINT), "Dog."])
    if kind == "punctuation_only":
        return rng.choice(PUNCTUATION_ONLY)
    if kind == "repeated":
        word = rng.choice(words)
        return " ".join([word] * rng.randint(3, 12))
    if kind == "long":
        pool = [word for ref in references for word in ref.rstrip(".!").split()] + DISJOINT
        return " ".join(rng.choice(pool) for _ in range(rng.randint(120, 400))) + "."
    if kind == "digits":
        return (
            f"{rng.randint(1, 12)} {rng.choice(['dogs', 'people', 'cars'])} and {rng.randint(13, 2000)} trees, 3.5 m."
        )
    if kind == "odd_words":
        return f"A {rng.choice(ODD_WORDS)} {' '.join(words[1:4])} isn't {rng.choice(ODD_WORDS)}."
    if kind == "non_ascii":
        return f"{rng.choice(NON_ASCII)} {' '.join(words[:3])} {rng.choice(NON_ASCII)}."
    if kind == "one_letter":
        return f"{' '.join(words[:3])} {rng.choice(ONE_LETTER)}"
    if kind == "empty":
        return ""
    # partial: the reference's words, some dropped, some replaced, some repeated, order mostly kept
    out = []
    for word in words:
        roll = rng.random()
        if roll < 0.2:
            continue
        out.append(rng.choice(DISJOINT) if roll < 0.3 else word)
        if roll > 0.93:
            out.append(word)
    return " ".join(out) + rng.choice([".", ""])


def make_corpus(seed: int) -> Corpus:
    """A corpus of 1-12 samples (1 in about one corpus of ten), images shared by several samples."""
    rng = random.Random(seed)
    size = 1 if rng.random() < 0.1 else rng.randint(2, 12)
    images = [f"pano_{seed}_{rng.randint(0, max(0, size // 2 - 1))}.jpg" for _ in range(size)]
    queries = [rng.choice(["location", "people", "weather", "objects"]) for _ in range(size)]
    everything_copied = rng.random() < 0.1  # all predictions equal to a reference
    predictions: list[str] = []
    references: list[list[str]] = []
    for index in range(size):
        if index and rng.random() < 0.1:  # an identical sample (same references, same prediction)
            predictions.append(predictions[-1])
            references.append(list(references[-1]))
            continue
        refs = [_reference(rng) for _ in range(rng.choice([1, 2, 3, 4, 5, 5, 6]))]
        if len(refs) > 1 and rng.random() < 0.2:
            refs[-1] = refs[0]  # a duplicate reference
        kind = "copy" if everything_copied else rng.choice(KINDS)
        predictions.append(_prediction(kind, refs, rng))
        references.append(refs)
    return Corpus(f"c{seed:04d}", predictions, references, images=images, queries=queries)


def shortened(corpus: Corpus, max_words: int) -> Corpus:
    """The corpus with every prediction cut to its first `max_words` words (SPICE's parser takes minutes per caption
    of a hundred words or more: measured 2 minutes for one of 150 words on a 2-core VM)."""
    predictions = [" ".join(p.split()[:max_words]) if len(p.split()) > max_words else p for p in corpus.predictions]
    return replace(corpus, predictions=predictions)
