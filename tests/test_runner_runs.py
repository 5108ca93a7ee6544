"""Real runs of `python -m runner` on tiny checkpoints: resume after kill -9, bad images, bad input, refusing to mix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, runner_command, runner_env, write_quic_csv

from contract import (
    PREDICTIONS_JSONL,
    RUN_MANIFEST,
    PredictionRecord,
    RunManifest,
    RunnerResult,
    read_json,
    read_jsonl,
    results_file,
)
from runner.loop import RunConfig, RunnerError, run
from runner.registry import MODELS

FAST_MODEL = "blip2-opt-2.7b"


def common_args(checkpoint: Path, data: Path, out: Path, *extra: str | Path) -> list[str | Path]:
    return ["--model", FAST_MODEL, "--model-path", checkpoint, "--data", data, "--output-dir", out,
            "--device", "cpu", "--no-progress", "--min-new-tokens", "2", *extra]  # fmt: skip


def complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_kill_minus_9_then_resume_loses_nothing_and_duplicates_nothing(
    make_panorama_data, tiny_checkpoint, run_runner, tmp_path
):
    data = make_panorama_data(num_images=12, queries=("location", "people"), captions_per_sample=1,
                              sizes=((256, 128, "PNG"), (320, 160, "JPEG")))  # fmt: skip
    assert data.num_samples == 24
    out = tmp_path / "out"
    args = common_args(tiny_checkpoint(FAST_MODEL), data.data_file, out, "--batch-size", "2", "--max-new-tokens", "24")
    predictions = results_file(out, PREDICTIONS_JSONL, FAST_MODEL)

    process = subprocess.Popen(
        runner_command(*args), env=runner_env(), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while complete_lines(predictions) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    before = list(read_jsonl(predictions, PredictionRecord))
    assert 2 <= len(before) < 24

    resumed = run_runner(*args)
    assert resumed.result is not None and resumed.result.status == "completed"
    ids = [record.sample_id for record in resumed.predictions]
    assert len(ids) == len(set(ids)) == 24  # every sample exactly once
    assert sorted((r.image, r.query) for r in resumed.predictions) == sorted(data.references)
    assert [r.model_dump() for r in resumed.predictions[: len(before)]] == [r.model_dump() for r in before]
    assert resumed.manifest is not None and resumed.manifest.num_written_this_run == 24 - len(before)  # type: ignore[attr-defined]

    # Same predictions as one uninterrupted run (other batch composition: batch invariance makes them equal).
    fresh = run_runner(*common_args(tiny_checkpoint(FAST_MODEL), data.data_file, tmp_path / "fresh",
                                    "--batch-size", "8", "--max-new-tokens", "24"))  # fmt: skip
    assert {r.sample_id: r.prediction for r in fresh.predictions} == {
        r.sample_id: r.prediction for r in resumed.predictions
    }


def in_process(checkpoint: Path, data: Path, out: Path, **overrides: object) -> RunnerResult:
    """The same loop as the CLI, without a new interpreter (cheaper for checks of the loop's own logic)."""
    fields: dict[str, object] = dict(model_name=FAST_MODEL, data_file=data, output_dir=out, model_path=checkpoint,
                                     device="cpu", min_new_tokens=2, progress="none")  # fmt: skip
    fields.update(overrides)
    return run(RunConfig(**fields), log=lambda line: None)  # type: ignore[arg-type]


def test_torn_last_line_is_cut_off_and_that_sample_redone(panorama_data, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    checkpoint = tiny_checkpoint(FAST_MODEL)
    in_process(checkpoint, panorama_data.data_file, out, batch_size=3)
    path = results_file(out, PREDICTIONS_JSONL, FAST_MODEL)
    first = list(read_jsonl(path, PredictionRecord))
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(lines) == len(first) == 8
    # What a kill in the middle of a write leaves: the last record cut in half, no newline.
    path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2], encoding="utf-8")

    result = in_process(checkpoint, panorama_data.data_file, out, batch_size=3)
    assert result.status == "completed" and result.num_written == 8
    assert path.read_text(encoding="utf-8").count("\n") == 8
    assert [r.model_dump() for r in read_jsonl(path, PredictionRecord)] == [r.model_dump() for r in first]
    manifest = read_json(results_file(out, RUN_MANIFEST, FAST_MODEL), RunManifest)
    assert manifest.num_written_this_run == 1  # type: ignore[attr-defined]


def test_missing_and_corrupt_images_get_error_records_and_the_run_goes_on(
    make_panorama_data, tiny_checkpoint, run_runner, tmp_path
):
    data = make_panorama_data(num_images=3, queries=("location",), captions_per_sample=2)
    images = data.folder / "images"
    (images / "random_bytes.jpg").write_bytes(os.urandom(2000))
    good_jpeg = next(p for p in data.images if p.suffix == ".jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 3])
    rows = [(f"images/{p.name}", "location", "a caption.") for p in data.images]
    rows += [("images/random_bytes.jpg", "location", "a caption."), ("images/truncated.jpg", "location", "x.")]
    rows += [("images/not_there.png", "location", "a caption.")]
    data_file = write_quic_csv(data.folder / "bad.csv", rows)

    run = run_runner(*common_args(tiny_checkpoint(FAST_MODEL), data_file, tmp_path / "out", "--batch-size", "8"))
    assert run.returncode == 0 and run.result is not None and run.result.status == "completed"
    assert run.result.num_written == 6 and run.result.num_errors == 3
    by_image = {record.image: record for record in run.predictions}
    for bad, kind in (("random_bytes.jpg", "corrupt_image"), ("truncated.jpg", "corrupt_image"),
                      ("not_there.png", "missing_image")):  # fmt: skip
        record = by_image[f"images/{bad}"]
        assert record.prediction == "" and record.error is not None
        assert record.error.startswith(f"{kind}: ") and bad in record.error
    for image in data.images:  # the good samples of the same batch were captioned
        record = by_image[f"images/{image.name}"]
        assert record.error is None and record.prediction
    assert run.manifest is not None
    assert run.manifest.errors_by_kind == {"corrupt_image": 2, "missing_image": 1} and run.manifest.num_errors == 3


def test_unknown_model_lists_the_valid_names_before_anything_else(panorama_data, run_runner, tmp_path):
    out = tmp_path / "out"
    run = run_runner("--model", "llava-9", "--data", panorama_data.data_file, "--output-dir", out, expect_ok=False)
    assert run.returncode == 2
    assert "unknown model 'llava-9'" in run.stderr
    assert all(name in run.stderr for name in MODELS)
    assert run.result is not None and run.result.status == "failed" and "llava-9" in (run.result.message or "")
    assert not out.exists()


@pytest.mark.parametrize("content", ["url,query,annotation\n", "url,query,annotation\na.jpg,location,\n"])
def test_empty_data_is_a_clear_error_and_no_model_is_loaded(content, tiny_checkpoint, run_runner, tmp_path):
    data = tmp_path / "empty.csv"
    data.write_text(content, encoding="utf-8")
    run = run_runner(*common_args(tiny_checkpoint(FAST_MODEL), data, tmp_path / "out"), expect_ok=False)
    assert run.returncode == 2
    assert f"{data}: no samples to caption" in run.stderr
    assert "loading" not in run.stderr
    assert run.result is not None and run.result.status == "failed"
    assert not results_file(tmp_path / "out", PREDICTIONS_JSONL, FAST_MODEL).exists()


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Describe the scene.", "has no {query} placeholder"),
        ("Describe the {query} of {place}.", "has the field {place}"),
        ("Describe the {query", "is not a valid format string"),
        # A format spec could allocate gigabytes (it was OOM-killed); a conversion failed after the model loaded.
        ("Describe {query:>3000000000}", "has the field {query:>3000000000}; the only field allowed is a bare"),
        ("{query!r:>{query}}", "has the field {query!r:>{query}}"),
        ("Describe the {query!s}.", "has the field {query!s}"),
    ],
)
def test_bad_prompt_template_fails_before_loading(
    template, message, panorama_data, tiny_checkpoint, run_runner, tmp_path
):
    args = common_args(tiny_checkpoint(FAST_MODEL), panorama_data.data_file, tmp_path / "out")
    run = run_runner(*args, "--prompt-template", template, expect_ok=False)
    assert run.returncode == 2 and message in run.stderr and "loading" not in run.stderr


def test_unwritable_output_dir_fails_before_loading(panorama_data, tiny_checkpoint, run_runner, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    run = run_runner(*common_args(tiny_checkpoint(FAST_MODEL), panorama_data.data_file, blocker / "out"),
                     expect_ok=False)  # fmt: skip
    assert run.returncode == 2 and "is not writable" in run.stderr and "loading" not in run.stderr


def test_other_arguments_refuse_to_mix_and_overwrite_moves_the_old_file_aside(
    panorama_data, tiny_checkpoint, run_runner, tmp_path
):
    out = tmp_path / "out"
    checkpoint = tiny_checkpoint(FAST_MODEL)
    first = run_runner(*common_args(checkpoint, panorama_data.data_file, out, "--limit", "2"))
    assert first.stdout.strip().splitlines()[-1].startswith("RUNNER_RESULT ")
    assert first.result is not None and (first.result.num_samples, first.result.num_written) == (2, 2)
    assert first.result.predictions_file == str(results_file(out, PREDICTIONS_JSONL, FAST_MODEL))
    assert json.loads(Path(first.result.manifest_file).read_text())["status"] == "completed"
    path = results_file(out, PREDICTIONS_JSONL, FAST_MODEL)
    original = path.read_bytes()

    # Same output dir, other arguments: refused on the command line (exit 2) and in the loop, file untouched.
    refused = run_runner(
        *common_args(checkpoint, panorama_data.data_file, out, "--limit", "2", "--max-new-tokens", "5"),
        expect_ok=False,
    )
    assert refused.returncode == 2 and "other arguments" in refused.stderr and "--overwrite" in refused.stderr
    assert "max_new_tokens" in refused.stderr
    new_template = "What {query} is shown?"
    for change in ({"prompt_template": new_template}, {"dtype": "bfloat16"}):
        with pytest.raises(RunnerError, match="other arguments"):
            in_process(checkpoint, panorama_data.data_file, out, limit=2, **change)
    assert path.read_bytes() == original

    replaced = in_process(checkpoint, panorama_data.data_file, out, limit=2, prompt_template=new_template,
                          overwrite=True)  # fmt: skip
    records = list(read_jsonl(path, PredictionRecord))
    assert replaced.num_written == 2
    assert [r.prompt for r in records] == [f"Question: What {r.query} is shown? Answer:" for r in records]
    moved = list(out.glob(f"{path.name}.replaced-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == original
    assert read_json(results_file(out, RUN_MANIFEST, FAST_MODEL), RunManifest).prompt_template == new_template

    # Same arguments again: nothing to do, nothing duplicated; the run record of the run that made them stays.
    record_before = results_file(out, RUN_MANIFEST, FAST_MODEL).read_bytes()
    again = in_process(checkpoint, panorama_data.data_file, out, limit=2, prompt_template=new_template)
    assert again.status == "completed" and again.num_written == 2
    assert [r.model_dump() for r in read_jsonl(path, PredictionRecord)] == [r.model_dump() for r in records]
    assert results_file(out, RUN_MANIFEST, FAST_MODEL).read_bytes() == record_before


def test_cuda_oom_halves_the_batch_down_to_one(panorama_data, tiny_checkpoint, tmp_path, monkeypatch):
    """No GPU here, so the out-of-memory is raised by the real adapter when a batch has more than 2 rows."""
    from runner.adapters import base

    calls: list[int] = []

    class TightMemoryBlip2(base.Adapter):
        def generate(self, inputs, max_new_tokens, min_new_tokens=0):
            rows = inputs["input_ids"].shape[0]
            calls.append(rows)
            if rows > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().generate(inputs, max_new_tokens, min_new_tokens)

    monkeypatch.setitem(base._ADAPTERS, "auto", TightMemoryBlip2)
    config = RunConfig(model_name=FAST_MODEL, data_file=panorama_data.data_file, output_dir=tmp_path / "out",
                       model_path=tiny_checkpoint(FAST_MODEL), batch_size=8, max_new_tokens=4, device="cpu",
                       progress="none")  # fmt: skip
    result = run(config, log=lambda line: None)
    assert result.status == "completed" and result.num_written == 8 and result.num_errors == 0
    assert calls == [8, 4, 2, 2, 2, 2]  # 8 -> 4 -> 2, then the rest at the size that fit
    manifest = read_json(results_file(tmp_path / "out", RUN_MANIFEST, FAST_MODEL), RunManifest)
    assert (manifest.batch_size_requested, manifest.batch_size_used, manifest.oom_retries) == (8, 2, 2)


def test_hub_id_path_offline_records_the_resolved_commit(panorama_data, tiny_checkpoint, tmp_path):
    """Without --model-path the runner loads the Hub id; here from a Hub cache laid out as a download leaves it."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--Salesforce--blip2-opt-2.7b"
    shutil.copytree(tiny_checkpoint(FAST_MODEL), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    out = tmp_path / "out"
    env = {**runner_env(), "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    args = ["--model", FAST_MODEL, "--data", panorama_data.data_file, "--output-dir", out, "--device", "cpu",
            "--limit", "2", "--no-progress"]  # fmt: skip
    completed = subprocess.run(runner_command(*args), env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=180)  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    manifest = read_json(results_file(out, RUN_MANIFEST, FAST_MODEL), RunManifest)
    assert manifest.model_path is None and manifest.model_id == "Salesforce/blip2-opt-2.7b"
    assert (manifest.revision, manifest.resolved_revision) == ("main", commit)
    assert len(list(read_jsonl(results_file(out, PREDICTIONS_JSONL, FAST_MODEL), PredictionRecord))) == 2


def test_a_second_runner_on_the_same_predictions_file_is_refused(panorama_data, tiny_checkpoint, tmp_path):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    predictions = results_file(out, PREDICTIONS_JSONL, FAST_MODEL)
    with open(predictions.with_name(f".{predictions.name}.lock"), "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running runner holds
        with pytest.raises(RunnerError, match="another runner is writing"):
            in_process(tiny_checkpoint(FAST_MODEL), panorama_data.data_file, out, limit=1)
    assert not predictions.exists()
    # Released (the first runner ended or was killed): the next run goes ahead.
    assert in_process(tiny_checkpoint(FAST_MODEL), panorama_data.data_file, out, limit=1).num_written == 1


def test_several_preprocessing_workers_write_what_one_writes_in_the_same_order(
    panorama_data, tiny_checkpoint, tmp_path
):
    """Processor threads finish out of order; the batches must still be generated and written in the run's order."""
    checkpoint = tiny_checkpoint(FAST_MODEL)
    written = {}
    for workers in (1, 3):
        out = tmp_path / f"workers-{workers}"
        result = in_process(checkpoint, panorama_data.data_file, out, batch_size=2, max_new_tokens=6,
                            preprocess_workers=workers)  # fmt: skip
        assert result.status == "completed" and result.num_written == result.num_samples >= 8
        records = read_jsonl(results_file(out, PREDICTIONS_JSONL, FAST_MODEL), PredictionRecord)
        written[workers] = [(r.sample_id, r.prompt, r.prediction, r.error) for r in records]
    assert len({row[0] for row in written[1]}) == len(written[1])
    assert written[3] == written[1]
