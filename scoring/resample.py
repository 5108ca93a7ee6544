"""Corpus metrics recomputed from per-sample statistics: subsets (per query), bootstrap CIs, paired tests.

A "weights" matrix has one row per recomputation and one column per sample: how many times the sample is
counted (all ones = the full corpus, an indicator = a subset, bootstrap counts = a resample). Every metric is
`metric.corpus(weights @ summable(statistics))` (scoring/metrics.py).

The bootstrap resamples the unit the data was drawn by: the IMAGE whenever an image carries several samples
(QuIC-360 asks about three queries of each panorama, and samples of one panorama are not independent), else the
sample. A resampled image brings all its samples; both models of a paired test get the same resampled images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from scoring.metrics import Metric, corpus_scores

CI_LEVEL = 0.95
IMAGE_UNIT, SAMPLE_UNIT = "image", "sample"


@dataclass
class SampleMatrix:
    """Every statistics block of one model's samples, and the resampling unit of each sample."""

    stats: dict[str, np.ndarray]  # Statistics.key -> (num_samples, width)
    groups: np.ndarray  # (num_samples,) index of each sample's resampling unit, 0..num_units-1
    unit: str  # IMAGE_UNIT or SAMPLE_UNIT

    @property
    def num_samples(self) -> int:
        return int(self.groups.shape[0])

    @property
    def num_units(self) -> int:
        return int(self.groups.max()) + 1 if self.groups.size else 0


def resampling_units(images: Sequence[str | None]) -> tuple[np.ndarray, str]:
    """(unit index of each sample, unit name): images when some image has several samples, else samples. Units are
    numbered in order of first appearance, so the same samples in the same order give the same units."""
    if any(image is None for image in images) or len(set(images)) == len(images):
        return np.arange(len(images)), SAMPLE_UNIT
    index: dict[str | None, int] = {}
    return np.array([index.setdefault(image, len(index)) for image in images]), IMAGE_UNIT


def bootstrap_weights(groups: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, num_samples): how often each sample is counted when the units are drawn with replacement (as
    many draws as there are units). One sample per unit: the classic bootstrap of samples."""
    groups = np.asarray(groups)
    units = int(groups.max()) + 1 if groups.size else 0
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, units, size=(resamples, units))
    offsets = (np.arange(resamples)[:, None] * units + picks).ravel()
    counts = np.bincount(offsets, minlength=resamples * units).reshape(resamples, units)
    return counts[:, groups]


def corpus_metrics(metrics: Iterable[Metric], matrix: SampleMatrix, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric for each row of weights (shape (rows, num_samples)); values per row."""
    return corpus_scores(metrics, matrix.stats, weights)


def describe_bootstrap(matrix: SampleMatrix, resamples: int, seed: int) -> str:
    if matrix.unit == IMAGE_UNIT:
        drawn = f"images ({matrix.num_units} images carrying {matrix.num_samples} samples)"
    else:
        drawn = f"samples ({matrix.num_samples})"
    return f"{resamples} resamples of {drawn}, seed {seed}, percentile 95% CI"


def confidence_intervals(values: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    tail = (1.0 - CI_LEVEL) / 2.0 * 100.0
    return {
        metric: (float(np.percentile(samples, tail)), float(np.percentile(samples, 100.0 - tail)))
        for metric, samples in values.items()
    }


def paired_p_value(observed_a: float, observed_b: float, samples_a: np.ndarray, samples_b: np.ndarray) -> float:
    """Two-sided paired bootstrap p-value for "A and B score the same".

    Both models are resampled with the SAME units (images or samples); the bootstrap differences are centred on the
    observed difference (the null distribution) and p = (1 + #{|d_b - d| >= |d|}) / (B + 1).
    """
    observed = observed_a - observed_b
    differences = samples_a - samples_b
    extreme = np.count_nonzero(np.abs(differences - observed) >= abs(observed))
    return float((1 + extreme) / (len(differences) + 1))
