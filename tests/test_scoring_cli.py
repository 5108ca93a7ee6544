"""`python -m scoring` on small data: counts, cleanup in context, model ids, bad input, dying tools, no Java.

Real subprocesses, real Java and jars; a tool is made to die by real means (a heap too small for METEOR, jars
that are not CoreNLP for SPICE), never by a mock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, WITHOUT_SPICE, runner_env, write_quic_csv

from contract import (
    SUMMARY_JSON,
    MetricsFile,
    PredictionRecord,
    RunManifest,
    SampleScores,
    Summary,
    load_dataset,
    read_json,
    read_jsonl,
)

ROWS = [
    ("pano_0.jpg", "location", "A sandy beach next to the blue sea."),
    ("pano_0.jpg", "location", "The beach is wide and sunny."),
    ("pano_0.jpg", "location", "Sea and sand under a clear sky."),
    ("pano_0.jpg", "people", "Two people walk along the shore."),
    ("pano_0.jpg", "people", "A couple is walking on the beach."),
    ("pano_1.jpg", "location", "A busy city street with tall buildings."),
    ("pano_1.jpg", "location", "Buildings line a street in a city."),
    ("pano_1.jpg", "weather", "It is cloudy and grey."),
    ("pano_1.jpg", "weather", "The sky is overcast."),
    ("pano_2.jpg", "location", "A quiet forest path."),
    ("pano_2.jpg", "location", "Trees on both sides of a trail."),
]


def scoring(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "scoring", *(str(arg) for arg in args)]
    return subprocess.run(
        command, capture_output=True, text=True, env=env or runner_env(), cwd=REPO_ROOT, timeout=timeout
    )


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    return write_quic_csv(tmp_path / "data.csv", ROWS)


def write_predictions(path: Path, data_file: Path, predictions: dict[int, tuple[str, str | None]]) -> Path:
    """predictions: sample index -> (prediction, error); samples not listed get no line."""
    samples = load_dataset(data_file).samples
    with open(path, "w", encoding="utf-8") as handle:
        for index, (prediction, error) in predictions.items():
            sample = samples[index]
            record = PredictionRecord(
                sample_id=sample.sample_id,
                image=sample.image,
                query=sample.query,
                prediction=prediction,
                references=sample.references,
                error=error,
            )
            handle.write(record.model_dump_json() + "\n")
    return path


def test_counts_cleanup_model_ids_and_intersection(tmp_path: Path, data_file: Path) -> None:
    # 5 samples in the data; model "alpha" misses sample 4 and has one id the data does not know.
    alpha = write_predictions(
        tmp_path / "alpha_predictions.jsonl",
        data_file,
        {
            0: ("<|im_start|>assistant\nA sandy beach\u2028by the sea.<|im_end|>", None),
            1: ("   </s>", None),  # empty after cleanup
            2: ("", "CUDA out of memory"),  # the runner failed on this sample
            3: ("<think>grey?</think>ASSISTANT: The sky is cloudy.\r\nGrey.", None),
        },
    )
    with open(alpha, "a", encoding="utf-8") as handle:
        stray = PredictionRecord(sample_id="0123456789abcdef", image="x.jpg", query="q", prediction="x", references=[])
        handle.write(stray.model_dump_json() + "\n")
    beta = write_predictions(
        tmp_path / "beta_predictions.jsonl", data_file, {i: ("A street in a city.", None) for i in range(5)}
    )
    manifest = RunManifest(
        model_name="beta",
        model_id="Org/Beta-1B",
        family="llava",
        dtype="float16",
        device="cpu",
        prompt_template="{query}",
        data_file=str(data_file),
        data_sha256="0" * 64,
        num_samples=5,
        batch_size_requested=1,
        batch_size_used=1,
    )
    (tmp_path / "beta_run.json").write_text(manifest.model_dump_json())
    out = tmp_path / "results"

    refused = scoring("score", "--predictions", alpha, beta, "--data", data_file, "--output-dir", out, *WITHOUT_SPICE)
    assert refused.returncode == 2
    assert "1 sample_ids not in the data" in refused.stderr and "1 data samples without a prediction" in refused.stderr
    assert "--intersection" in refused.stderr and str(alpha) in refused.stderr
    assert not out.exists()

    completed = scoring(
        "score", "--predictions", alpha, beta, "--data", data_file, "--intersection",
        "--model-id", "alpha=Org/Alpha-2B", "--output-dir", out, *WITHOUT_SPICE, "--report",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    alpha_metrics = read_json(out / "alpha_metrics.json", MetricsFile)
    beta_metrics = read_json(out / "beta_metrics.json", MetricsFile)
    assert alpha_metrics.model_id == "Org/Alpha-2B" and beta_metrics.model_id == "Org/Beta-1B"
    assert alpha_metrics.num_samples == 4
    assert alpha_metrics.counts.model_dump() == {"scored": 4, "empty": 1, "failed": 1, "missing": 1, "unknown": 1}
    assert beta_metrics.counts.model_dump() == {"scored": 5, "empty": 0, "failed": 0, "missing": 0, "unknown": 0}
    assert {"bleu4", "meteor", "rougeL", "cider", "spice"} <= set(alpha_metrics.metrics)
    assert all(0.0 <= v <= 1.0 for k, v in alpha_metrics.metrics.items() if k not in ("spice", "cider"))

    rows = {row.sample_id: row for row in read_jsonl(out / "alpha_sample_scores.jsonl", SampleScores)}
    samples = load_dataset(data_file).samples
    first, empty, failed, fourth = (rows[samples[i].sample_id] for i in range(4))
    assert first.prediction == "A sandy beach by the sea."
    assert first.raw_prediction == "<|im_start|>assistant\nA sandy beach\u2028by the sea.<|im_end|>"
    assert first.references == samples[0].references
    assert fourth.prediction == "The sky is cloudy. Grey."
    assert empty.prediction == "" and empty.scores["meteor"] == 0.0 and empty.scores["bleu4"] == 0.0
    assert failed.prediction == "" and failed.error == "CUDA out of memory"
    assert first.scores["meteor"] > 0.2 and first.scores["spice"] is None
    assert first.image == samples[0].image and [row.image for row in rows.values()].count("pano_0.jpg") == 2

    printed = completed.stdout
    assert "alpha (Org/Alpha-2B): n=4 (empty 1, failed 1, missing 1)" in printed
    assert "1 samples failed in the runner" in printed
    summary = json.loads((out / SUMMARY_JSON).read_text())
    # The leave-one-out human row comes by default (--data has several references per sample), flagged, after the
    # models and out of the paired tests.
    assert [(m["model_name"], m["human_baseline"]) for m in summary["models"]] == [
        ("alpha", False),
        ("beta", False),
        ("human-baseline", True),
    ]
    assert summary["significance"] == {}  # different sample sets: no paired test
    # --report hands the folder to scoring.report.build_report after the metrics are written.
    assert f"report: {out / 'report.html'}" in printed and (out / "report.html").is_file()
    # Two panoramas carry two samples each: intervals resample panoramas, and every file and the page say so.
    assert alpha_metrics.signature["bootstrap_unit"] == beta_metrics.signature["bootstrap_unit"] == "image"
    assert beta_metrics.signature["bootstrap"].startswith("1000 resamples of images (3 images carrying 5 samples)")
    assert [m["bootstrap_unit"] for m in summary["models"]] == ["image", "image", "image"]
    assert "The bootstrap resamples images" in (out / "report.html").read_text(encoding="utf-8")
    assert "resampling images" in (out / "comparison.md").read_text(encoding="utf-8")


def test_human_baseline_scores_first_reference_against_the_rest(tmp_path: Path, data_file: Path) -> None:
    out = tmp_path / "results"
    completed = scoring("human-baseline", "--data", data_file, "--output-dir", out, *WITHOUT_SPICE)
    assert completed.returncode == 0, completed.stderr
    metrics = read_json(out / "human-baseline_metrics.json", MetricsFile)
    assert metrics.num_samples == 5  # every sample here has >= 2 captions
    assert metrics.model_id.startswith("human")
    rows = list(read_jsonl(out / "human-baseline_sample_scores.jsonl", SampleScores))
    by_sample = {sample.sample_id: sample for sample in load_dataset(data_file).samples}
    for row in rows:
        assert row.prediction == by_sample[row.sample_id].references[0]
        assert row.references == by_sample[row.sample_id].references[1:]
    assert metrics.metrics["meteor"] > 0


def test_meteor_that_dies_gives_its_stderr_and_no_metrics_file(tmp_path: Path, data_file: Path) -> None:
    predictions = write_predictions(
        tmp_path / "m_predictions.jsonl", data_file, {i: ("A city.", None) for i in range(5)}
    )
    out = tmp_path / "results"
    completed = scoring(
        "score", "--predictions", predictions, "--output-dir", out, "--meteor-heap", "8m", *WITHOUT_SPICE
    )
    assert completed.returncode == 2
    assert "METEOR (meteor-1.5.jar) died" in completed.stderr
    assert "OutOfMemoryError" in completed.stderr  # the JVM's own stderr tail
    assert not out.exists() or not list(out.glob("*_metrics.json"))


def test_spice_that_dies_gives_its_stderr_and_no_metrics_file(tmp_path: Path, data_file: Path) -> None:
    from scoring.spice import SPICE_JARS

    jars = tmp_path / "fake-corenlp"
    jars.mkdir()
    for pin in SPICE_JARS:  # the right names and sizes (what the cheap check looks at), no content
        with open(jars / pin.name, "wb") as handle:
            handle.truncate(pin.size)
    predictions = write_predictions(
        tmp_path / "s_predictions.jsonl", data_file, {i: ("A city.", None) for i in range(5)}
    )
    out = tmp_path / "results"
    completed = scoring("score", "--predictions", predictions, "--output-dir", out, "--spice-jars", jars)
    assert completed.returncode == 2
    assert "SPICE exited with status" in completed.stderr
    # Its own stderr tail: the SPICE jar started with our classpath and arguments, then found no CoreNLP classes.
    assert "NoClassDefFoundError: edu/stanford/nlp/" in completed.stderr.split("SPICE exited", 1)[1]
    assert not out.exists() or not list(out.iterdir())


def test_java_missing_names_the_package(tmp_path: Path, data_file: Path) -> None:
    predictions = write_predictions(
        tmp_path / "j_predictions.jsonl", data_file, {i: ("A city.", None) for i in range(5)}
    )
    env = runner_env()
    env["PATH"] = str(tmp_path / "empty-bin")
    env.pop("SCORING_JAVA", None)
    completed = scoring(
        "score", "--predictions", predictions, "--output-dir", tmp_path / "results", *WITHOUT_SPICE, env=env
    )
    assert completed.returncode == 2
    assert "default-jre-headless" in completed.stderr
    assert not (tmp_path / "results").exists()


def test_bad_prediction_files_are_refused_before_any_work(tmp_path: Path, data_file: Path) -> None:
    out = tmp_path / "results"
    no_refs = tmp_path / "n_predictions.jsonl"
    no_refs.write_text(
        PredictionRecord(sample_id="a", image="i", query="q", prediction="p", references=[]).model_dump_json() + "\n"
    )
    completed = scoring("score", "--predictions", no_refs, "--output-dir", out, *WITHOUT_SPICE)
    assert completed.returncode == 2 and "has no references; pass --data FILE" in completed.stderr

    broken = tmp_path / "b_predictions.jsonl"
    broken.write_text('{"sample_id": "a"}\n')
    completed = scoring("score", "--predictions", broken, "--output-dir", out, *WITHOUT_SPICE)
    assert completed.returncode == 2 and f"{broken}:1: not a valid PredictionRecord" in completed.stderr

    completed = scoring("score", "--predictions", tmp_path / "absent.jsonl", "--output-dir", out, *WITHOUT_SPICE)
    assert completed.returncode == 2 and "predictions file not found" in completed.stderr

    good = write_predictions(tmp_path / "g_predictions.jsonl", data_file, {0: ("x", None)})
    completed = scoring("score", "--predictions", good, "--data", data_file, "--annotation-column", "caption",
                        "--output-dir", out, *WITHOUT_SPICE)  # fmt: skip
    assert completed.returncode == 2
    assert "missing column(s) ['caption']; columns found: ['url', 'query', 'annotation']" in completed.stderr

    completed = scoring("score", "--predictions", good, "--output-dir", out, "--bootstrap", "100", *WITHOUT_SPICE)
    assert completed.returncode == 2 and "at least 1000" in completed.stderr
    assert not out.exists()


def test_spice_is_required_unless_left_out(tmp_path: Path, data_file: Path) -> None:
    """Without its jars, a run that should compute SPICE stops before reading anything, with the reason and both fixes;
    it never writes a null SPICE silently."""
    predictions = write_predictions(
        tmp_path / "p_predictions.jsonl", data_file, {i: ("A city.", None) for i in range(5)}
    )
    out = tmp_path / "results"
    no_jars = tmp_path / "no-jars"
    completed = scoring(
        "score", "--predictions", tmp_path / "absent.jsonl", "--output-dir", out, "--spice-jars", no_jars
    )
    assert completed.returncode == 2
    assert "cannot compute SPICE: SPICE needs stanford-corenlp-3.6.0.jar" in completed.stderr
    assert f"python -m scoring fetch-spice --dest {no_jars}" in completed.stderr
    assert "leave it out deliberately: --metrics all,-spice" in completed.stderr
    assert "predictions file not found" not in completed.stderr  # refused before reading any input
    completed = scoring("human-baseline", "--data", data_file, "--output-dir", out, "--spice-jars", no_jars)
    assert completed.returncode == 2 and "cannot compute SPICE" in completed.stderr
    assert not out.exists()

    completed = scoring("score", "--predictions", predictions, "--output-dir", out, "--metrics", "ciderD")
    assert completed.returncode == 2 and "unknown metric 'ciderD'; known: bleu4, coco_bleu1" in completed.stderr

    # Only what is asked for is computed (no METEOR JVM here); the rest is null with the reason.
    completed = scoring("score", "--predictions", predictions, "--output-dir", out, "--metrics", "cider,bleu4")
    assert completed.returncode == 0, completed.stderr
    metrics = read_json(out / "p_metrics.json", MetricsFile)
    assert {key for key, value in metrics.metrics.items() if value is not None} == {"bleu4", "cider"}
    assert set(metrics.unavailable) == set(metrics.metrics) - {"bleu4", "cider"}
    assert set(metrics.unavailable.values()) == {"left out by --metrics"}
    assert metrics.signature["metrics"] == "bleu4,cider"
    assert "left out by --metrics (null in the files): coco_bleu1, coco_bleu2" in completed.stdout
    assert "CIDEr " in completed.stdout and "METEOR" not in completed.stdout
    summary = read_json(out / SUMMARY_JSON, Summary)
    assert summary.models[0].metrics["meteor"] is None


def test_summarise_refuses_sample_scores_written_before_images_were_recorded(tmp_path: Path) -> None:
    """Intervals resample images; a sample-scores file without them cannot be summarised again: a clear error."""
    from contract import SampleCounts, write_json_atomic, write_jsonl_atomic

    write_json_atomic(tmp_path / "old_metrics.json", MetricsFile(model_name="old", model_id="old", num_samples=1,
                      metrics={"rougeL": 0.5}, counts=SampleCounts(scored=1, empty=0, failed=0)))  # fmt: skip
    row = SampleScores(sample_id="a", query="q", prediction="p", raw_prediction="p", scores={"rougeL": 0.5})
    write_jsonl_atomic(tmp_path / "old_sample_scores.jsonl", [row])
    completed = scoring("summarize", tmp_path)
    assert completed.returncode == 2
    assert f"{tmp_path / 'old_sample_scores.jsonl'}: written by an older version of `python -m scoring`" in (
        completed.stderr
    )
    assert "score these predictions again" in completed.stderr


def test_java_is_not_needed_to_summarise(tmp_path: Path) -> None:
    completed = scoring("summarize", tmp_path)
    assert completed.returncode == 2 and "no *_metrics.json files" in completed.stderr


@pytest.mark.skipif(
    os.environ.get("SCORING_TEST_NETWORK") != "1", reason="needs Maven Central (set SCORING_TEST_NETWORK=1)"
)
def test_fetch_spice_downloads_verified_jars(tmp_path: Path) -> None:
    env = {**runner_env(), "SCORING_SPICE_JARS": str(tmp_path / "unset"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    completed = scoring("fetch-spice", "--dest", tmp_path / "jars", env=env, timeout=1800)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.count("(SHA-256 verified)") == 4 and "copied from" not in completed.stdout
    assert (tmp_path / "jars" / "stanford-corenlp-3.6.0-models.jar").stat().st_size == 378_116_526


def test_ptb_tokenizer_keeps_unicode_and_lines_in_a_c_locale(tmp_path: Path) -> None:
    """Containers often run with LANG=C: non-ASCII captions must still come back intact, one line each."""
    code = (
        "import json, sys; from pathlib import Path; from scoring.ptb import ptb_tokenize_documents; "
        "from scoring.java import find_java; "
        "texts = ['Café naïve — 3.5 km, \"quoted\"!', 'Ünïcode 東京 tower.', '', 'last one']; "
        "print(json.dumps(ptb_tokenize_documents([texts, texts[:2], texts], find_java(), Path(sys.argv[1]))))"
    )
    env = {**runner_env(), "LC_ALL": "C", "LANG": "C"}
    completed = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env, cwd=REPO_ROOT
    )
    assert completed.returncode == 0, completed.stderr
    expected = ["café naïve 3.5 km quoted", "ünïcode 東京 tower", "", "last one"]
    assert json.loads(completed.stdout) == [expected, expected[:2], expected]
    assert list(tmp_path.iterdir()) == []  # its input files are removed
