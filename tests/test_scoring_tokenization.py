"""A model's numbers are what pycocoevalcap's COCOEvalCap gives for that model alone, whatever else is scored in the
same run. The PTB tokenizer looks across line ends: "the letter b." keeps its period as part of "b." unless the next
line starts a sentence ("A ...", "The ..."), so tokenizing every model's texts in one document changed the numbers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, WITHOUT_SPICE, runner_env
from scoring_reference import Corpus, coco_eval

from contract import MetricsFile, PredictionRecord, read_json

REFERENCES = [
    ["A red sign with white letters.", "A sign on a pole."],
    ["Two people walk on a beach.", "People walking by the sea."],
    ["A wall shows the letter b.", "The sign reads b."],  # the last reference ends in a one-letter word
]
ALONE = Corpus("alone", ["A red sign.", "Two people walk by the sea.", "A sign shows the letter b."], REFERENCES)
# Every prediction starts with "A": placed after ALONE's predictions, its first line would split "b." into "b ."
OTHER = Corpus("other", ["A sign.", "A beach with people.", "A letter on a wall."], REFERENCES)


def write(corpus: Corpus, folder: Path) -> Path:
    path = folder / f"{corpus.name}_predictions.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for index, (prediction, refs) in enumerate(zip(corpus.predictions, corpus.references, strict=True)):
            record = PredictionRecord(
                sample_id=f"s{index}", image=f"i{index}.jpg", query="what", prediction=prediction, references=refs
            )
            handle.write(record.model_dump_json() + "\n")
    return path


def score(folder: Path, *corpora: Corpus) -> Path:
    out = folder / "results"
    paths = [str(write(corpus, folder)) for corpus in corpora]
    command = [sys.executable, "-m", "scoring", "score", "--predictions", *paths, "--output-dir", str(out)]
    command += WITHOUT_SPICE
    completed = subprocess.run(command, capture_output=True, text=True, env=runner_env(), cwd=REPO_ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out


def test_a_model_scores_the_same_alone_and_beside_another_as_cocoevalcap(tmp_path: Path) -> None:
    from pycocoevalcap.meteor.meteor import Meteor

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    alone = read_json(score(tmp_path / "a", ALONE) / "alone_metrics.json", MetricsFile)
    together = read_json(score(tmp_path / "b", ALONE, OTHER) / "alone_metrics.json", MetricsFile)
    meteor = Meteor()
    expected = coco_eval(ALONE, meteor)
    other_expected = coco_eval(OTHER, meteor)
    del meteor
    # The case really is sensitive to its neighbours: pycocoevalcap keeps "b." in both of ALONE's documents.
    assert expected.tokenized_predictions[-1].endswith("letter b.")
    assert expected.tokenized_references[-1] == ["a wall shows the letter b", "the sign reads b."]
    for key, value in expected.metrics.items():
        assert alone.metrics[key] == together.metrics[key], key
        assert alone.metrics[key] == pytest.approx(value, abs=1e-12, rel=0), key
    other = read_json(tmp_path / "b" / "results" / "other_metrics.json", MetricsFile)
    for key, value in other_expected.metrics.items():
        assert other.metrics[key] == pytest.approx(value, abs=1e-12, rel=0), key
