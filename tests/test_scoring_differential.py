"""Differential test: every metric `python -m scoring score` reports, on dozens of generated corpora full of edge cases
(tests/scoring_corpora.py, seeds recorded), equals the reference tools run directly on the same input: pycocoevalcap's
own `COCOEvalCap.evaluate` for that corpus alone (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, with its own tokenization),
pycocoevalcap's `Spice` and sacreBLEU, to 1e-6 (they agree to about 1e-15); and every corpus number lies inside its own
bootstrap interval.

All corpora are scored as the models of ONE scoring run (one tokenizer JVM, one METEOR JVM, one SPICE run), which
also checks that a model's numbers do not depend on what else is scored. The reference side shares one METEOR JVM
and one SPICE run. `SCORING_DIFFERENTIAL_SEEDS=3,17` reruns chosen seeds; the sweep over hundreds of corpora is
`python -m bench.scoring_sweep`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import WITHOUT_SPICE
from scoring_corpora import make_corpus, shortened
from scoring_reference import (
    CocoResult,
    Corpus,
    ScoringRun,
    coco_eval,
    cocoevalcap_tokenized,
    pycocoevalcap_spice,
    sacrebleu_bleu4,
    start_scoring,
)

from contract import MetricsFile, SampleScores, read_json, read_jsonl

SEEDS = [int(s) for s in os.environ.get("SCORING_DIFFERENTIAL_SEEDS", "").split(",") if s] or list(range(40))
TOLERANCE = 1e-6
BOUND_SLACK = 1e-9  # a corpus number recomputed from the statistics may differ from the tool's in the last bits


@pytest.fixture(scope="module")
def corpora() -> list[Corpus]:
    return [make_corpus(seed) for seed in SEEDS]


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory, corpora: list[Corpus]) -> Iterator[ScoringRun]:
    run = start_scoring(corpora, tmp_path_factory.mktemp("differential"), *WITHOUT_SPICE)
    yield run
    if run.process.poll() is None:
        run.process.kill()


@pytest.fixture(scope="module")
def reference(scored: ScoringRun, corpora: list[Corpus]) -> list[CocoResult]:
    """COCOEvalCap for each corpus alone (one shared METEOR JVM), computed while the scoring run works."""
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    try:
        return [coco_eval(corpus, meteor) for corpus in corpora]
    finally:
        del meteor


def test_every_metric_equals_the_reference_tools_on_generated_corpora(
    scored: ScoringRun, reference: list[CocoResult], corpora: list[Corpus]
) -> None:
    out = scored.wait()
    failures = []
    for seed, corpus, coco in zip(SEEDS, corpora, reference, strict=True):
        metrics = read_json(out / f"{corpus.name}_metrics.json", MetricsFile)
        rows = list(read_jsonl(out / f"{corpus.name}_sample_scores.jsonl", SampleScores))
        expected = {**coco.metrics, "bleu4": sacrebleu_bleu4(corpus)}
        for key, value in expected.items():
            if not abs(metrics.metrics[key] - value) <= TOLERANCE:
                failures.append(f"seed {seed} {key}: scoring {metrics.metrics[key]!r}, reference {value!r}")
        for key, values in coco.per_sample.items():
            for index, (row, value) in enumerate(zip(rows, values, strict=True)):
                if not abs(row.scores[key] - value) <= TOLERANCE:
                    failures.append(f"seed {seed} sample {index} {key}: {row.scores[key]!r} != {value!r}")
    assert not failures, "\n".join(failures[:40])


def test_every_corpus_number_lies_inside_its_own_bootstrap_interval(scored: ScoringRun, corpora: list[Corpus]) -> None:
    out = scored.wait()
    outside = []
    for seed, corpus in zip(SEEDS, corpora, strict=True):
        metrics = read_json(out / f"{corpus.name}_metrics.json", MetricsFile)
        for key, value in metrics.metrics.items():
            if value is None:
                continue
            low, high = metrics.ci[key]
            if not low - BOUND_SLACK <= value <= high + BOUND_SLACK:
                outside.append(f"seed {seed} {key}: {value!r} outside [{low!r}, {high!r}]")
    assert not outside, "\n".join(outside)


def test_the_corpora_hold_the_edge_cases(corpora: list[Corpus]) -> None:
    """The generator really produces what the comparison is about (so a change to it cannot quietly weaken it)."""
    if len(SEEDS) < 40:
        pytest.skip("checked on the full set of seeds only")
    samples = [(p, refs) for c in corpora for p, refs in zip(c.predictions, c.references, strict=True)]
    assert sum(p in refs for p, refs in samples) >= 10  # exact copies
    assert any(all(p in refs for p, refs in zip(c.predictions, c.references, strict=True)) for c in corpora)
    assert any(p and not any(ch.isalnum() for ch in p) for p, _ in samples)  # punctuation only
    assert any(len(p.split()) >= 100 for p, _ in samples) and any(p == "" for p, _ in samples)
    assert any(any(ord(ch) > 127 for ch in p) for p, _ in samples)
    assert any(len(refs) != len(set(refs)) for _, refs in samples)  # duplicate references
    assert any(len(c) == 1 for c in corpora) and len({len(refs) for _, refs in samples}) >= 4
    assert any(len(set(c.images or [])) < len(c) for c in corpora)  # images carrying several samples


# -- SPICE ------------------------------------------------------------------------------------------------------


SPICE_MAX_WORDS = 50  # longer predictions are cut for SPICE: its parser takes minutes per caption of 100+ words


def test_spice_equals_pycocoevalcaps_spice_on_generated_corpora(
    tmp_path: Path, reference: list[CocoResult], corpora: list[Corpus], spice_jars: Path
) -> None:
    """pycocoevalcap's `Spice` over COCOEvalCap's tokenized texts of every corpus (one run) against the SPICE of one
    scoring run over all corpora: per sample and corpus. SPICE must give every sample an F-score (where it would not,
    scoring stops with an error). The corpora are the ones above with predictions cut to SPICE_MAX_WORDS."""
    jar_dir = spice_jars
    cut = [shortened(corpus, SPICE_MAX_WORDS) for corpus in corpora]
    tokenized = [
        (coco.tokenized_predictions, coco.tokenized_references)
        if short.predictions == corpus.predictions
        else cocoevalcap_tokenized(short)
        for corpus, short, coco in zip(corpora, cut, reference, strict=True)
    ]
    corpora = cut
    # One SPICE JVM at a time (each takes several GB).
    run = start_scoring(corpora, tmp_path / "project", "--metrics", "spice", "--spice-jars", str(jar_dir))
    out = run.wait()
    expected = pycocoevalcap_spice(corpora, tokenized, jar_dir, tmp_path / "reference")
    failures = []
    for seed, corpus, (mean, values) in zip(SEEDS, corpora, expected, strict=True):
        metrics = read_json(out / f"{corpus.name}_metrics.json", MetricsFile)
        rows = list(read_jsonl(out / f"{corpus.name}_sample_scores.jsonl", SampleScores))
        for index, (row, value) in enumerate(zip(rows, values, strict=True)):
            # SPICE 1.0 always gives "All" an F-score (scoring stops with an error where it would not).
            if math.isnan(value) or not abs(row.scores["spice"] - value) <= TOLERANCE:
                failures.append(f"seed {seed} sample {index} spice: {row.scores['spice']!r} != {value!r}")
        if not abs(metrics.metrics["spice"] - mean) <= TOLERANCE:
            failures.append(f"seed {seed} spice: scoring {metrics.metrics['spice']!r}, reference {mean!r}")
        low, high = metrics.ci["spice"]
        if not low - BOUND_SLACK <= metrics.metrics["spice"] <= high + BOUND_SLACK:
            failures.append(f"seed {seed} spice outside its interval")
    assert not failures, "\n".join(failures[:40])
