"""Parity with the reference tools on the QuIC-360 leave-one-out set (real Java, real jars, no mocks).

ONE `python -m scoring score` run over two models (the LOO candidates and a perturbed copy) is shared by every
test here; the reference numbers come from pycocoevalcap's own classes and sacrebleu called directly.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import QUIC360_TSV, REPO_ROOT, WITHOUT_SPICE, runner_env

from contract import (
    COMPARISON_CSV,
    SUMMARY_JSON,
    MetricsFile,
    PredictionRecord,
    SampleScores,
    Summary,
    read_json,
    read_jsonl,
    sample_id,
)

TOLERANCE = 1e-9
MODELS = ("loo", "loo-perturbed")

pytestmark = pytest.mark.skipif(not QUIC360_TSV.is_file(), reason=f"shared QuIC-360 test split absent: {QUIC360_TSV}")


def perturb(caption: str, index: int) -> str:
    """A different, deterministic candidate: drop the first word, repeat the last one on every third sample."""
    words = caption.split()
    words = words[1:] or words
    return " ".join(words + words[-1:] if index % 3 == 0 else words)


def leave_one_out_items() -> list[tuple[str, str, str, list[str]]]:
    """(url, query, candidate, references) for samples with >= 2 captions, grouped independently of contract."""
    with open(QUIC360_TSV, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    groups: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        groups.setdefault((row["url"].strip(), row["query"].strip()), []).append(row["annotation"].strip())
    items = []
    for (url, query), captions in groups.items():
        captions = [caption for caption in captions if caption]
        if len(captions) >= 2:
            items.append((url, query, captions[0], captions[1:]))
    return items


@pytest.fixture(scope="module")
def loo_items() -> list[tuple[str, str, str, list[str]]]:
    items = leave_one_out_items()
    assert len(items) == 1169
    return items


def candidates_of(model: str, items: list[tuple[str, str, str, list[str]]]) -> list[str]:
    return [item[2] if model == "loo" else perturb(item[2], index) for index, item in enumerate(items)]


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory, loo_items: list) -> tuple[Path, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("parity")
    paths = []
    for model in MODELS:
        path = folder / f"{model}_predictions.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            for (url, query, _, refs), candidate in zip(loo_items, candidates_of(model, loo_items), strict=True):
                record = PredictionRecord(
                    sample_id=sample_id(url, query), image=url, query=query, prediction=candidate, references=refs
                )
                handle.write(record.model_dump_json() + "\n")
        paths.append(str(path))
    out = folder / "results"
    command = [sys.executable, "-m", "scoring", "score", "--predictions", *paths, "--output-dir", str(out)]
    command += WITHOUT_SPICE
    completed = subprocess.run(command, capture_output=True, text=True, env=runner_env(), cwd=REPO_ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out, completed


@pytest.fixture(scope="module")
def direct(loo_items: list) -> dict[str, dict]:
    """Every metric straight from pycocoevalcap's classes (one Meteor instance) and sacrebleu."""
    import sacrebleu
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    references = [item[3] for item in loo_items]
    gts = tokenizer.tokenize({i: [{"caption": ref} for ref in refs] for i, refs in enumerate(references)})
    meteor = Meteor()
    results = {}
    for model in MODELS:
        candidates = candidates_of(model, loo_items)
        res = tokenizer.tokenize({i: [{"caption": candidate}] for i, candidate in enumerate(candidates)})
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        meteor_score, meteor_segments = meteor.compute_score(gts, res)
        rouge, rouge_segments = Rouge().compute_score(gts, res)
        cider, cider_segments = Cider().compute_score(gts, res)
        width = max(len(refs) for refs in references)
        streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]
        sacre = sacrebleu.corpus_bleu(candidates, streams, tokenize="13a", smooth_method="exp")
        results[model] = {
            "metrics": {
                "bleu4": sacre.score / 100,
                "meteor": meteor_score,
                "rougeL": float(rouge),
                "cider": float(cider),
                **{f"coco_bleu{n + 1}": bleu[n] for n in range(4)},
            },
            "segments": {"meteor": meteor_segments, "rougeL": list(rouge_segments), "cider": list(cider_segments)},
        }
    del meteor
    return results


@pytest.mark.parametrize("model", MODELS)
def test_every_metric_equals_the_reference_tools(scored, direct, model: str) -> None:
    out, _ = scored
    metrics = read_json(out / f"{model}_metrics.json", MetricsFile)
    expected = direct[model]["metrics"]
    assert set(expected) | {"spice"} == set(metrics.metrics)
    for metric, value in expected.items():
        assert metrics.metrics[metric] == pytest.approx(value, abs=TOLERANCE, rel=0), metric
    assert metrics.num_samples == 1169
    assert metrics.model_name == model and metrics.model_id == model


@pytest.mark.parametrize("model", MODELS)
def test_per_sample_scores_equal_the_reference_tools(scored, direct, model: str) -> None:
    out, _ = scored
    rows = list(read_jsonl(out / f"{model}_sample_scores.jsonl", SampleScores))
    assert len(rows) == 1169
    for metric in ("meteor", "rougeL", "cider"):
        ours = np.array([row.scores[metric] for row in rows])
        np.testing.assert_allclose(ours, np.array(direct[model]["segments"][metric]), rtol=0, atol=TOLERANCE)


def test_spice_left_out_is_null_with_the_reason_said_once(scored) -> None:
    out, completed = scored
    metrics = read_json(out / "loo_metrics.json", MetricsFile)
    assert metrics.metrics["spice"] is None
    assert metrics.ci["spice"] is None
    assert metrics.unavailable == {"spice": "left out by --metrics"}
    assert not any("spice" in warning.lower() for warning in metrics.warnings)  # deliberate: not a warning
    assert "left out by --metrics (null in the files): spice" in completed.stdout.splitlines()
    assert all("SPICE" not in line for line in completed.stdout.splitlines() if line.startswith("loo"))
    rows = list(read_jsonl(out / "loo_sample_scores.jsonl", SampleScores))
    assert all(row.scores["spice"] is None and "spice" not in row.stats for row in rows)


def test_corpus_metrics_recompute_from_sample_statistics_and_bootstrap_images(scored) -> None:
    from scoring.outputs import computed_metrics, matrix_from_sample_scores
    from scoring.resample import IMAGE_UNIT, bootstrap_weights, corpus_metrics

    out, _ = scored
    metrics = read_json(out / "loo_metrics.json", MetricsFile)
    path = out / "loo_sample_scores.jsonl"
    rows = list(read_jsonl(path, SampleScores))
    computed = computed_metrics(metrics)
    matrix = matrix_from_sample_scores(path, rows, computed)
    recomputed = corpus_metrics(computed, matrix, np.ones((1, len(rows))))
    for metric, values in recomputed.items():
        assert values[0] == pytest.approx(metrics.metrics[metric], abs=TOLERANCE, rel=0), metric
    # QuIC-360 asks several queries about each panorama: the bootstrap resamples the 393 panoramas.
    assert matrix.unit == IMAGE_UNIT and matrix.num_units == len({row.image for row in rows}) < len(rows)
    assert metrics.signature["bootstrap_unit"] == "image"
    assert metrics.signature["bootstrap"].startswith(f"1000 resamples of images ({matrix.num_units} images carrying")
    # The stored CI is the seeded 1000-resample percentile interval, reproducible from the files alone.
    resampled = corpus_metrics(computed, matrix, bootstrap_weights(matrix.groups, 1000, 0))
    for metric, (low, high) in ((m, ci) for m, ci in metrics.ci.items() if ci is not None):
        assert low < metrics.metrics[metric] < high, metric
        assert (low, high) == pytest.approx(tuple(np.percentile(resampled[metric], [2.5, 97.5])), abs=1e-12)


def test_per_query_breakdown_covers_the_33_queries(scored) -> None:
    out, _ = scored
    metrics = read_json(out / "loo_metrics.json", MetricsFile)
    assert len(metrics.per_query) == 33
    assert sum(row["num_samples"] for row in metrics.per_query.values()) == 1169
    assert all(row["spice"] is None and 0 <= row["cider"] for row in metrics.per_query.values())


def test_summary_and_comparison_with_paired_significance(scored) -> None:
    out, completed = scored
    summary = read_json(out / SUMMARY_JSON, Summary)
    assert [entry.model_name for entry in summary.models] == sorted(MODELS)
    for metric in ("bleu4", "meteor", "rougeL", "cider", "coco_bleu4"):
        p = summary.significance[metric]["loo|loo-perturbed"]
        assert 0 < p <= 1
    assert "spice" not in summary.significance
    assert all(entry.bootstrap_unit == "image" for entry in summary.models)
    assert summary.signature["significance"].startswith("paired bootstrap resampling images, the same for both")
    lines = (out / COMPARISON_CSV).read_text().splitlines()
    assert lines[0].split(",")[:4] == ["model_name", "model_id", "num_samples", "bleu4"]
    loo = read_json(out / "loo_metrics.json", MetricsFile)
    row = next(csv.DictReader(lines))
    assert row["model_name"] == "loo" and float(row["meteor"]) == loo.metrics["meteor"] and row["spice"] == ""
    # A person reads one line per model.
    assert any(line.startswith("loo (loo): n=1169") and "METEOR " in line for line in completed.stdout.splitlines())
    # summarize rebuilds the same summary from the files (no Java).
    before = json.loads((out / SUMMARY_JSON).read_text())
    subprocess.run(
        [sys.executable, "-m", "scoring", "summarize", str(out)], check=True, env=runner_env(), cwd=REPO_ROOT
    )
    assert json.loads((out / SUMMARY_JSON).read_text()) == before


def test_human_baseline_on_the_data_file_equals_the_leave_one_out_reference(tmp_path: Path, direct) -> None:
    """`human-baseline --data test.tsv` groups the real file itself and must give the same numbers."""
    command = [
        sys.executable,
        "-m",
        "scoring",
        "human-baseline",
        "--data",
        str(QUIC360_TSV),
        "--output-dir",
        str(tmp_path),
        *WITHOUT_SPICE,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, env=runner_env(), cwd=REPO_ROOT, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    metrics = read_json(tmp_path / "human-baseline_metrics.json", MetricsFile)
    assert metrics.num_samples == 1169
    for metric, value in direct["loo"]["metrics"].items():
        assert metrics.metrics[metric] == pytest.approx(value, abs=TOLERANCE, rel=0), metric
    assert "42 samples with fewer than 2 references left out" in metrics.warnings
