"""Corpus metrics recomputed from per-sample statistics: subsets (per query), bootstrap CIs, paired tests.

A "weights" matrix has one row per recomputation and one column per sample: how many times the sample is
counted (all ones = the full corpus, an indicator = a subset, multinomial counts = a bootstrap resample).
BLEU and METEOR sum the statistics, then apply the tool's formula; ROUGE-L, CIDEr and SPICE are means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scoring.meteor import meteor_from_stats, summable_stats
from scoring.ngram import coco_bleu_from_stats, sacrebleu_from_stats

CI_LEVEL = 0.95


@dataclass
class SampleMatrix:
    sacrebleu: np.ndarray  # (n, 10)
    coco_bleu: np.ndarray  # (n, 10)
    meteor: np.ndarray  # (n, 23)
    rouge: np.ndarray  # (n,)
    cider: np.ndarray  # (n,)
    spice: np.ndarray | None  # (n,) or None when SPICE is unavailable

    @property
    def num_samples(self) -> int:
        return int(self.rouge.shape[0])


def corpus_metrics(matrix: SampleMatrix, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every corpus metric for each row of weights (shape (rows, n)); values per row."""
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    counted = weights.sum(axis=1)
    sacre = weights @ matrix.sacrebleu
    coco = np.array([coco_bleu_from_stats(row) for row in weights @ matrix.coco_bleu])
    result = {
        "bleu4": np.array([sacrebleu_from_stats(row) for row in sacre]),
        "meteor": meteor_from_stats(weights @ summable_stats(matrix.meteor)),
        "rougeL": (weights @ matrix.rouge) / counted,
        "cider": (weights @ matrix.cider) / counted,
    }
    for order in range(4):
        result[f"coco_bleu{order + 1}"] = coco[:, order]
    if matrix.spice is not None:
        result["spice"] = (weights @ matrix.spice) / counted
    return result


def bootstrap_weights(num_samples: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) counts of each sample in each resample (sampling n with replacement)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, num_samples, size=(resamples, num_samples))
    offsets = (np.arange(resamples)[:, None] * num_samples + picks).ravel()
    return np.bincount(offsets, minlength=resamples * num_samples).reshape(resamples, num_samples)


def confidence_intervals(values: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    tail = (1.0 - CI_LEVEL) / 2.0 * 100.0
    return {
        metric: (float(np.percentile(samples, tail)), float(np.percentile(samples, 100.0 - tail)))
        for metric, samples in values.items()
    }


def paired_p_value(observed_a: float, observed_b: float, samples_a: np.ndarray, samples_b: np.ndarray) -> float:
    """Two-sided paired bootstrap p-value for "A and B score the same".

    Both models are resampled with the SAME sample indices; the bootstrap differences are centred on the
    observed difference (the null distribution) and p = (1 + #{|d_b - d| >= |d|}) / (B + 1).
    """
    observed = observed_a - observed_b
    differences = samples_a - samples_b
    extreme = np.count_nonzero(np.abs(differences - observed) >= abs(observed))
    return float((1 + extreme) / (len(differences) + 1))
