"""METEOR 1.5 on "perfect" segments (every word matched, one chunk): the jar leaves their chunk counts out of its corpus
sums, so corpus, per-query and bootstrap METEOR must do the same. Checked against the jar itself (pycocoevalcap's
Meteor wrapper and raw EVAL lines), never against numbers written down here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, WITHOUT_SPICE, runner_env
from hypothesis import given, settings
from hypothesis import strategies as st

from contract import MetricsFile, PredictionRecord, SampleScores, read_json, read_jsonl

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


@pytest.fixture(scope="module")
def jar_segments():
    """The jar's statistics for a pool of segments with several perfect ones, and the running jar to EVAL with."""
    from scoring.java import find_java
    from scoring.meteor import MeteorProcess

    hypotheses = [
        "a dog runs on the grass",  # exact copy: perfect
        "a dog running on the grass",  # stem match, one chunk: perfect, score below 1
        "a red automobile parked on the street",  # synonym: perfect
        "two cats sleep on a sofa",
        "the grass a dog runs on",  # every word matched, two chunks: not perfect
        "a red car",
        "",
        "dogs dogs dogs",
    ]
    references = [
        ["a dog runs on the grass", "a brown dog"],
        ["a dog runs on the grass"],
        ["a red car parked on the street"],
        ["two cats are sleeping on a couch", "cats on a sofa"],
        ["a dog runs on the grass"],
        ["a red car parked on the street", "a car on a road"],
        ["a man stands near a wall"],
        ["two dogs play in the snow"],
    ]
    with MeteorProcess(find_java()) as meteor:
        lines = meteor.segment_stats(hypotheses, references)
        yield meteor, lines


@settings(max_examples=40, deadline=None, database=None)
@given(counts=st.lists(st.integers(min_value=0, max_value=3), min_size=8, max_size=8).filter(any))
def test_any_multiset_of_segments_gives_the_jars_eval(jar_segments, counts: list[int]) -> None:
    """The registry's METEOR of any weighted set of segments (a subset, a bootstrap resample with repeats) equals what
    the jar's EVAL computes for that multiset of segments."""
    from scoring.metrics import BY_KEY, corpus_scores

    meteor, lines = jar_segments
    stats = np.array([[float(x) for x in line.split()] for line in lines])
    ours = corpus_scores([BY_KEY["meteor"]], {"meteor": stats}, np.array([counts], dtype=float))["meteor"][0]
    multiset = [line for line, count in zip(lines, counts, strict=True) for _ in range(count)]
    _, jar = meteor.evaluate(multiset)
    assert ours == pytest.approx(jar, abs=1e-12, rel=0)
