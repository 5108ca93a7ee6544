"""Python-side metrics and resampling against pycocoevalcap/sacrebleu on edge cases (no Java needed)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import sacrebleu
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge, my_lcs

from scoring.meteor import meteor_from_stats
from scoring.ngram import ReferenceSet, _lcs_length, _lcs_masks, coco_bleu_from_stats, sacrebleu_from_stats
from scoring.resample import SampleMatrix, bootstrap_weights, corpus_metrics, paired_p_value

# Already PTB-style (lower case, single spaces): pycocoevalcap's scorers take tokenized text.
REFERENCES = [
    ["a man rides a horse on the beach", "a person riding a horse", "horse and rider near the sea"],
    ["the sky is blue", "a clear blue sky with no clouds"],
    ["two dogs play in the snow", "dogs running in snow", "snow covered park with two dogs", "dogs"],
    ["a red car parked on the street"],
    ["people walk in a busy market", "a crowded market street"],
]
HYPOTHESES = [
    "a man riding a horse on a beach",
    "",  # empty prediction
    "dogs dogs dogs in the snow snow",  # repeated tokens (clipping)
    "a red car parked on the street",  # identical to its only reference
    "market",  # one word
]


def test_lcs_matches_pycocoevalcap_on_random_token_lists() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        a = [rng.choice("abcdef") for _ in range(rng.randint(1, 18))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(1, 18))]
        masks, full, length = _lcs_masks(a)
        assert _lcs_length(masks, full, length, b) == my_lcs(a, b)


def test_reference_set_metrics_equal_pycocoevalcap_and_sacrebleu() -> None:
    reference_set = ReferenceSet(REFERENCES, REFERENCES)
    gts = {i: refs for i, refs in enumerate(REFERENCES)}
    res = {i: [hyp] for i, hyp in enumerate(HYPOTHESES)}

    rouge, rouge_segments = reference_set.rouge_l(HYPOTHESES)
    expected_rouge, expected_rouge_segments = Rouge().compute_score(gts, res)
    assert rouge == expected_rouge
    np.testing.assert_array_equal(rouge_segments, expected_rouge_segments)

    cider, cider_segments = reference_set.cider_d(HYPOTHESES)
    expected_cider, expected_cider_segments = Cider().compute_score(gts, res)
    assert cider == pytest.approx(expected_cider, abs=1e-12)
    np.testing.assert_allclose(cider_segments, expected_cider_segments, rtol=0, atol=1e-12)

    coco = reference_set.coco_bleu(HYPOTHESES)
    expected_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert coco.corpus == pytest.approx(expected_bleu, abs=1e-12)
    assert coco_bleu_from_stats(coco.stats.sum(axis=0)) == pytest.approx(expected_bleu, abs=1e-12)

    sacre = reference_set.sacrebleu_scores(HYPOTHESES)
    width = max(len(refs) for refs in REFERENCES)
    streams = [[refs[i] if i < len(refs) else None for refs in REFERENCES] for i in range(width)]
    expected = sacrebleu.corpus_bleu(HYPOTHESES, streams, tokenize="13a", smooth_method="exp")
    assert sacre.corpus == expected.score / 100
    assert sacrebleu_from_stats(sacre.stats.sum(axis=0)) == expected.score / 100
    assert sacre.signature.startswith("nrefs:var|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0")
    for hypothesis, refs, sentence in zip(HYPOTHESES, REFERENCES, sacre.sentence, strict=True):
        assert sentence == pytest.approx(sacrebleu.sentence_bleu(hypothesis, refs).score / 100, abs=1e-12)


def test_meteor_formula_edge_cases() -> None:
    # Perfect single-chunk match: no fragmentation penalty, score = 1.
    perfect = np.zeros(23)
    perfect[[0, 1]] = 4  # lengths
    perfect[[4, 5]] = 4  # exact-stage content matches (test, reference)
    perfect[20:23] = [1, 4, 4]  # one chunk, 4 word matches each side
    assert meteor_from_stats(perfect) == pytest.approx(1.0 - 0.6 * (0.0**0.2))
    # Empty hypothesis: 0/0 everywhere, which METEOR turns into 0, not NaN.
    empty = np.zeros(23)
    empty[1] = 5
    assert meteor_from_stats(empty) == 0.0


def small_matrix(seed: int, n: int = 40) -> SampleMatrix:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 15, size=n).astype(float)
    totals = np.stack([np.maximum(lengths - k, 0) for k in range(4)], axis=1)
    correct = np.floor(totals * rng.uniform(0.1, 0.9, size=(n, 1)))
    sacre = np.column_stack([lengths, lengths + 1, correct, totals])
    coco = np.column_stack([lengths, lengths + 1, totals, correct])
    meteor = np.zeros((n, 23))
    meteor[:, 0] = lengths
    meteor[:, 1] = lengths + 1
    meteor[:, 4] = correct[:, 0]
    meteor[:, 5] = correct[:, 0]
    meteor[:, 20] = np.maximum(1, correct[:, 0] // 2)
    meteor[:, 21] = correct[:, 0]
    meteor[:, 22] = correct[:, 0]
    return SampleMatrix(sacre, coco, meteor, rng.uniform(0, 1, n), rng.uniform(0, 2, n), None)


def test_bootstrap_weights_are_seeded_resamples_of_n() -> None:
    weights = bootstrap_weights(50, 1000, seed=3)
    assert weights.shape == (1000, 50)
    assert (weights.sum(axis=1) == 50).all()
    np.testing.assert_array_equal(weights, bootstrap_weights(50, 1000, seed=3))
    assert not np.array_equal(weights, bootstrap_weights(50, 1000, seed=4))


def test_corpus_metrics_of_a_subset_equal_the_metrics_of_that_subset_alone() -> None:
    matrix = small_matrix(0)
    subset = np.arange(matrix.num_samples) % 3 == 0
    via_weights = corpus_metrics(matrix, subset[None, :].astype(float))
    alone = SampleMatrix(
        matrix.sacrebleu[subset],
        matrix.coco_bleu[subset],
        matrix.meteor[subset],
        matrix.rouge[subset],
        matrix.cider[subset],
        None,
    )
    direct = corpus_metrics(alone, np.ones((1, int(subset.sum()))))
    for metric in direct:
        assert via_weights[metric][0] == pytest.approx(direct[metric][0], abs=1e-12), metric
    assert "spice" not in direct


def test_paired_p_value_separates_equal_and_different_models() -> None:
    matrix = small_matrix(1)
    weights = bootstrap_weights(matrix.num_samples, 1000, seed=0)
    same = corpus_metrics(matrix, weights)["rougeL"]
    observed = corpus_metrics(matrix, np.ones((1, matrix.num_samples)))["rougeL"][0]
    assert paired_p_value(observed, observed, same, same) == 1.0
    better = SampleMatrix(matrix.sacrebleu, matrix.coco_bleu, matrix.meteor, matrix.rouge + 0.2, matrix.cider, None)
    shifted = corpus_metrics(better, weights)["rougeL"]
    p = paired_p_value(observed + 0.2, observed, shifted, same)
    assert p == pytest.approx(1 / 1001)
