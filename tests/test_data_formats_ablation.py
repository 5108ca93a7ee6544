"""Whole ablations through `make ablation` on the same samples given as CSV, COCO annotations (NoCaps-like, with
domains), a Karpathy split file (several splits) and JSONL (with groups): a tiny model's predictions, prompts and
metrics are identical in every format. Real runner and scoring processes on the local engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _orchestrator_helpers import (
    REPO_ROOT,
    manifest,
    model_root,
    orchestrator_command,
    orchestrator_env,
    predictions,
)
from conftest import WITHOUT_SPICE
from data_formats import SAMPLE_DIR, sample_captions, write_coco, write_csv, write_jsonl, write_karpathy

from contract import METRICS_JSON, RUN_MANIFEST, MetricsFile, RunManifest, read_json
from runner.loop import DEFAULT_CAPTION_PROMPT

MODEL = "blip2-opt-2.7b"
NO_SPICE = " ".join(WITHOUT_SPICE)  # these tests are about data files; SPICE is left out deliberately


def make_ablation(out: Path, root: Path, *variables: str) -> subprocess.CompletedProcess[str]:
    command = [
        "make", "-s", "-C", str(REPO_ROOT), f"PYTHON={sys.executable}", "ablation", f"MODELS={MODEL}",
        f"OUTPUT_DIR={out}", "ENGINE=local", "GPUS=none", "BATCH_SIZE=3", "MAX_NEW_TOKENS=6", *variables,
    ]  # fmt: skip
    if not any(variable.startswith("EXTRA_ARGS=") for variable in variables):
        command.append(f"EXTRA_ARGS=--model-path-root {root} --no-report {NO_SPICE}")
    return subprocess.run(command, capture_output=True, text=True, env=orchestrator_env(), timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("formats")
    root = model_root(tmp, tiny_checkpoint, [MODEL])
    truth = sample_captions()
    others = {"train": sample_captions(1)[:2], "val": sample_captions(2)[2:4], "restval": sample_captions(1)[4:]}
    for split, samples in others.items():  # images that do not exist: reading them would fail the plan
        for sample in samples:
            sample.image = sample.image.replace("images/", f"images/{split}/")
    data = tmp / "data"
    files = {
        "csv": write_csv(data / "captions.csv", truth),
        "nocaps": write_coco(data / "nocaps_val.json", truth, domains=True, uncaptioned=["test/hidden.jpg"]),
        "karpathy": write_karpathy(data / "dataset_coco.json", {**others, "test": truth}),
        "jsonl": write_jsonl(data / "captions.jsonl", truth),
    }
    root_arg = f"IMAGE_ROOT={SAMPLE_DIR}"
    variables = {
        "csv": [f"DATA_FILE={files['csv']}", root_arg],
        "nocaps": [f"DATA_FILE={files['nocaps']}", "DATA_FORMAT=coco", root_arg],
        "karpathy": [f"DATA_FILE={files['karpathy']}", "SPLIT=test", root_arg],
        # DATA_CSV, the older name, and the options through EXTRA_ARGS
        "jsonl": [
            f"DATA_CSV={files['jsonl']}",
            f"EXTRA_ARGS=--model-path-root {root} --no-report --data-format jsonl --image-root {SAMPLE_DIR} {NO_SPICE}",
        ],
    }
    outs = {}
    for name, args in variables.items():
        out = tmp / f"results-{name}"
        done = make_ablation(out, root, *args)
        assert done.returncode == 0, f"{name}: " + done.stdout[-4000:] + done.stderr[-3000:]
        outs[name] = out
    return outs


def _metrics(out: Path) -> MetricsFile:
    return read_json(out / METRICS_JSON.format(model=MODEL), MetricsFile)


@pytest.mark.parametrize("name", ["nocaps", "karpathy", "jsonl"])
def test_predictions_prompts_and_metrics_equal_the_csvs(runs: dict[str, Path], name: str) -> None:
    baseline, other = runs["csv"], runs[name]
    expected = {
        r.sample_id: (r.image, r.query, r.prediction, r.prompt, r.references) for r in predictions(baseline, MODEL)
    }
    got = {r.sample_id: (r.image, r.query, r.prediction, r.prompt, r.references) for r in predictions(other, MODEL)}
    assert len(got) == len(sample_captions()) and got == expected
    assert all(DEFAULT_CAPTION_PROMPT in prompt for _, _, _, prompt, _ in got.values() if prompt)
    a, b = _metrics(baseline), _metrics(other)
    assert (b.num_samples, b.metrics, b.ci, b.per_query, b.counts) == (
        a.num_samples,
        a.metrics,
        a.ci,
        a.per_query,
        a.counts,
    )
    assert b.metrics["cider"] is not None and list(b.per_query) == ["caption"]
    # The domains of the NoCaps-like file and the JSONL groups give a per-group breakdown; the CSV has no groups.
    assert a.per_group == {}
    if name in ("nocaps", "jsonl"):
        assert list(b.per_group) == ["in-domain", "near-domain", "out-domain"]
        assert [row["num_samples"] for row in b.per_group.values()] == [3, 2, 2]
    else:
        assert b.per_group == {}


def test_the_manifests_record_format_split_and_the_caption_instruction(runs: dict[str, Path]) -> None:
    formats = {name: (manifest(out).data_format, manifest(out).data_split) for name, out in runs.items()}
    assert formats == {
        "csv": ("csv", None),
        "nocaps": ("coco", None),
        "karpathy": ("karpathy", "test"),
        "jsonl": ("jsonl", None),
    }
    for out in runs.values():
        run = read_json(out / RUN_MANIFEST.format(model=MODEL), RunManifest)
        assert run.prompt_template == DEFAULT_CAPTION_PROMPT
        assert (run.data_format, run.data_split) == formats[next(n for n, o in runs.items() if o == out)]
    arguments = manifest(runs["karpathy"]).arguments
    assert (arguments["split"], arguments["data_format"], arguments["image_root"]) == ("test", None, str(SAMPLE_DIR))


def test_a_bad_data_file_stops_make_ablation_before_any_model_loads(tmp_path: Path) -> None:
    bad = tmp_path / "captions.json"
    bad.write_text('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "caption": ["x"]}]}')
    done = make_ablation(tmp_path / "out", tmp_path / "no-models", f"DATA_FILE={bad}")
    assert done.returncode != 0 and "ablation] Error 2" in done.stderr  # the orchestrator's exit code 2
    assert f"error: data file: {bad}: annotations[0]: field 'caption' input should be a valid string" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_split_other_than_test_is_scored_reported_and_never_mixed_with_another(
    tmp_path: Path, tiny_checkpoint, run_runner
) -> None:
    """A Karpathy file without a test split: the runner, scoring and the report read the split the run used (the
    report from the manifests); a rerun with another split into the same folder (same file, same sha256) is refused
    before the model loads (exit 2), by the runner and, before anything starts, by an ablation, and the first run's
    files stay as they were."""
    data = write_karpathy(
        tmp_path / "dataset_flickr8k.json", {"val": sample_captions()[:2], "train": sample_captions(1)[2:3]}
    )
    out = tmp_path / "out"
    common = ["--model", MODEL, "--model-path", tiny_checkpoint(MODEL), "--data", data, "--image-root", SAMPLE_DIR,
              "--output-dir", out, "--device", "cpu", "--batch-size", "2", "--max-new-tokens", "3",
              "--progress", "none"]  # fmt: skip
    first = run_runner(*common, "--split", "val")
    assert len(first.predictions) == 2 and first.manifest is not None
    assert (first.manifest.data_format, first.manifest.data_split) == ("karpathy", "val")
    scoring = [sys.executable, "-m", "scoring", "score", "--predictions", str(out / f"{MODEL}_predictions.jsonl"),
               "--data", str(data), "--split", "val", "--output-dir", str(out), "--report", *WITHOUT_SPICE]  # fmt: skip
    scored = subprocess.run(scoring, capture_output=True, text=True, env=orchestrator_env(), cwd=REPO_ROOT, timeout=600)
    assert scored.returncode == 0, scored.stdout[-3000:] + scored.stderr[-3000:]
    assert _metrics(out).num_samples == 2 and (out / "report.html").is_file()

    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}

    second = run_runner(*common, "--split", "train", expect_ok=False)
    assert second.returncode == 2
    assert "was made with other arguments {'data_split': ('val', 'train')} (previous, now)" in second.stderr
    assert "loading" not in second.stderr
    assert [r.model_dump() for r in second.predictions] == [r.model_dump() for r in first.predictions]

    root = model_root(tmp_path, tiny_checkpoint, [MODEL])
    ablation = orchestrator_command("ablation", "--models", MODEL, "--data", data, "--split", "train",
                                    "--image-root", SAMPLE_DIR, "--output-dir", out, "--engine", "local",
                                    "--gpus", "none", "--model-path-root", root, "--no-report")  # fmt: skip
    refused = subprocess.run(
        ablation, capture_output=True, text=True, env=orchestrator_env(), cwd=REPO_ROOT, timeout=300
    )
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert refused.stderr.count("holds predictions made from another data file, format or split") == 1
    read = f"{data.resolve()}, sha256 {first.manifest.data_sha256[:12]}..., karpathy"
    assert f"{MODEL} ({MODEL}_run.json: {read} split 'val'); now {read} split 'train'." in refused.stderr
    assert "started at" not in refused.stdout
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before  # nothing touched
