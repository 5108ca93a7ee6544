"""METEOR 1.5 on "perfect" segments (every word matched, one chunk): the jar leaves their chunk counts out of its corpus
sums, so corpus, per-query and bootstrap METEOR must do the same. Checked against the jar itself (pycocoevalcap's
Meteor wrapper and raw EVAL lines), never against numbers written down here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from contract import MetricsFile, PredictionRecord, SampleScores, read_json, read_jsonl
from tests.conftest import REPO_ROOT, WITHOUT_SPICE, runner_env

# (query, prediction, references): exact copies of a reference, a copy differing in case and punctuation, copies that
# differ only by a stem or a synonym METEOR matches (all "perfect"), and ordinary imperfect segments.
SAMPLES = [
    ("animals", "A dog runs on the grass.", ["A dog runs on the grass.", "A brown dog running in a field."]),
    ("animals", "a dog runs on the grass", ["A Dog Runs On The Grass!", "Some dog outside."]),
    ("animals", "Dogs run on the grass.", ["A dog runs on the grass."]),
    ("animals", "Two cats sleep on a sofa.", ["Two cats are sleeping on a couch.", "Cats on a sofa."]),
    ("vehicles", "A red car.", ["A red car parked on the street.", "A car on a road."]),
    ("vehicles", "A red automobile parked on the street.", ["A red car parked on the street."]),
    ("vehicles", "The bus is yellow.", ["A yellow school bus.", "The bus is yellow."]),
    ("people", "Two people walk.", ["Two people are walking on a beach.", "A couple walks by the sea."]),
    ("people", "", ["A man stands near a wall."]),
]


def write_predictions(path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for index, (query, prediction, references) in enumerate(SAMPLES):
            record = PredictionRecord(
                sample_id=f"s{index}",
                image=f"img{index}.jpg",
                query=query,
                prediction=prediction,
                references=references,
            )
            handle.write(record.model_dump_json() + "\n")
    return path


@pytest.fixture(scope="module")
def pycocoevalcap_meteor():
    """pycocoevalcap's own Meteor (one JVM) and PTB tokenization of SAMPLES, to compute reference numbers with."""
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    gts = PTBTokenizer().tokenize({i: [{"caption": r} for r in refs] for i, (_, _, refs) in enumerate(SAMPLES)})
    res = PTBTokenizer().tokenize({i: [{"caption": p}] for i, (_, p, _) in enumerate(SAMPLES)})
    meteor = Meteor()
    yield meteor, gts, res
    del meteor


def jar_meteor(meteor, gts: dict, res: dict, indices: list[int]) -> float:
    """The jar's corpus METEOR (its EVAL) over the segments `indices`, repeats included."""
    keys = list(range(len(indices)))
    score, _ = meteor.compute_score({k: gts[i] for k, i in zip(keys, indices, strict=True)},
                                    {k: res[i] for k, i in zip(keys, indices, strict=True)})  # fmt: skip
    return score


def test_perfect_segments_give_the_jars_corpus_per_query_and_interval(tmp_path: Path, pycocoevalcap_meteor) -> None:
    meteor, gts, res = pycocoevalcap_meteor
    predictions = write_predictions(tmp_path / "exact_predictions.jsonl")
    out = tmp_path / "results"
    command = [sys.executable, "-m", "scoring", "score", "--predictions", str(predictions), "--output-dir", str(out)]
    command += WITHOUT_SPICE
    completed = subprocess.run(command, capture_output=True, text=True, env=runner_env(), cwd=REPO_ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]

    metrics = read_json(out / "exact_metrics.json", MetricsFile)
    expected = jar_meteor(meteor, gts, res, list(range(len(SAMPLES))))
    assert metrics.metrics["meteor"] == pytest.approx(expected, abs=1e-12, rel=0)
    low, high = metrics.ci["meteor"]
    assert low <= metrics.metrics["meteor"] <= high
    for query in ("animals", "vehicles", "people"):
        indices = [i for i, (q, _, _) in enumerate(SAMPLES) if q == query]
        assert metrics.per_query[query]["meteor"] == pytest.approx(
            jar_meteor(meteor, gts, res, indices), abs=1e-12, rel=0
        ), query
    rows = list(read_jsonl(out / "exact_sample_scores.jsonl", SampleScores))
    _, segments = meteor.compute_score(gts, res)
    for row, segment in zip(rows, segments, strict=True):
        assert row.scores["meteor"] == pytest.approx(segment, abs=1e-12, rel=0)
    assert rows[0].scores["meteor"] == 1.0  # the exact copy
