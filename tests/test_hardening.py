"""Defects a hostile test campaign found, each reproduced on real runs (real processes, files and signals)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from _orchestrator_helpers import (
    REPO_ROOT,
    WITHOUT_SPICE,
    manifest,
    model_root,
    orchestrator_command,
    orchestrator_env,
    predictions,
    processes_mentioning,
    run_orchestrator,
    statuses,
)

FAST_MODEL = "blip2-opt-2.7b"


# --- prompt templates: a bare {query} only, checked before anything starts -----------------------------------


@pytest.mark.parametrize("template", ["Describe {query:>3000000000}", "{query!r:>{query}}", "the {query!a}"])
def test_orchestrator_refuses_a_template_with_a_spec_or_conversion_before_starting(
    template: str, tmp_path: Path, panorama_data
) -> None:
    (tmp_path / "models" / FAST_MODEL).mkdir(parents=True)
    out = tmp_path / "results"
    started = time.monotonic()
    run = run_orchestrator(
        "ablation", "--engine", "local", "--models", FAST_MODEL, "--data", panorama_data.data_file,
        "--output-dir", out, "--model-path-root", tmp_path / "models", "--prompt-template", template, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    assert "--prompt-template" in run.stderr and "the only field allowed is a bare {query}" in run.stderr
    assert "started at" not in run.stdout and not out.exists()  # nothing started, nothing written
    assert time.monotonic() - started < 30


# --- images: high bit depth scaled, one size guard ------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path: Path, width: int, height: int, bit_depth: int, colour_type: int, raw_rows: bytes) -> Path:
    """A PNG written byte by byte (Pillow cannot write 16-bit RGB): IHDR, one IDAT of filter-0 rows, IEND."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    payload = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw_rows)) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + payload)
    return path


def test_16_bit_grey_png_is_scaled_not_blown_out_to_white(tmp_path: Path) -> None:
    from PIL import Image

    from runner.images import ImageLimits, load_image

    # A real 16-bit greyscale PNG (Pillow's I;16): a horizontal ramp over the whole 16-bit range.
    ramp = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (64, 1))
    path = tmp_path / "grey16.png"
    Image.fromarray(ramp).save(path)  # uint16 -> mode I;16
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # really a high bit-depth file
    loaded = np.asarray(load_image(str(path), ImageLimits(max_side=None)))
    expected = np.rint(ramp / 257.0)
    assert loaded.shape == (64, 256, 3)
    assert np.abs(loaded[..., 0] - expected).max() <= 1
    assert (loaded == 255).mean() < 0.01  # it was 99.6% white


def test_16_bit_rgb_png_keeps_its_colours(tmp_path: Path) -> None:
    from runner.images import ImageLimits, load_image

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 65536, size=(16, 32, 3), dtype=np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    path = write_png(tmp_path / "rgb16.png", 32, 16, 16, 2, rows)
    loaded = np.asarray(load_image(str(path), ImageLimits(max_side=None))).astype(np.int64)
    assert np.abs(loaded - np.rint(pixels / 257.0)).max() <= 1


def test_an_oversized_header_is_image_too_large_not_corrupt(tmp_path: Path) -> None:
    """20000 x 10000 (200 MP) is over the project's guard; Pillow's own bomb check used to fire first."""
    from runner.images import ImageLimits, ImageLoadError, load_image

    path = write_png(tmp_path / "huge.png", 20000, 10000, 8, 2, b"")  # the header claims it; no pixel data
    with pytest.raises(ImageLoadError) as error:
        load_image(str(path), ImageLimits(max_side=1024))
    assert error.value.kind == "image_too_large"
    assert "20000x10000 = 200000000 pixels is over the limit" in str(error.value)


def test_a_large_panorama_under_the_guard_loads_without_pillow_warnings(tmp_path: Path) -> None:
    from PIL import Image

    from runner.images import ImageLimits, load_image

    path = tmp_path / "big.jpg"
    Image.new("L", (16000, 8000), 120).save(path, quality=50)  # 128 MP: above Pillow's 89 MP warning level
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = load_image(str(path), ImageLimits(max_side=1024))
    assert image.size == (1024, 512)
    assert [str(w.message) for w in caught] == []


# --- never mix two data sets in one predictions file; stale results never look current -----------------------


def _runner_args(checkpoint: Path, data: Path, out: Path, *extra: str) -> list[str | Path]:
    return ["--model", FAST_MODEL, "--model-path", checkpoint, "--data", data, "--output-dir", out,
            "--batch-size", "4", "--max-new-tokens", "4", "--device", "cpu", "--no-progress", *extra]  # fmt: skip


def test_another_data_file_is_refused_and_changes_nothing(
    make_panorama_data, tiny_checkpoint, run_runner, tmp_path: Path
) -> None:
    first = make_panorama_data(tmp_path / "first", num_images=2)
    other = make_panorama_data(tmp_path / "other", num_images=3, queries=("weather",))
    out = tmp_path / "results"
    checkpoint = tiny_checkpoint(FAST_MODEL)
    run_runner(*_runner_args(checkpoint, first.data_file, out))
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    again = run_runner(*_runner_args(checkpoint, other.data_file, out), expect_ok=False)
    assert again.returncode == 2
    assert "was made from another data file" in again.stderr and "cannot be mixed" in again.stderr
    after = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    assert after == before  # predictions, CSV and run manifest untouched


def test_changed_predictions_mark_their_metrics_summary_and_report_stale(
    make_panorama_data, tiny_checkpoint, run_runner, tmp_path: Path
) -> None:
    from contract import METRICS_JSON, SUMMARY_JSON

    data = make_panorama_data(tmp_path / "data", num_images=3)
    out = tmp_path / "results"
    checkpoint = tiny_checkpoint(FAST_MODEL)
    run_runner(*_runner_args(checkpoint, data.data_file, out, "--limit", "2"))
    # Score the two samples as an --limit 2 ablation does; the summary and metrics now describe 2 predictions.
    subprocess.run(
        [sys.executable, "-m", "scoring", "score", "--predictions", out / f"{FAST_MODEL}_predictions.jsonl",
         "--data", data.data_file, "--limit", "2", "--output-dir", out, *WITHOUT_SPICE],
        check=True, capture_output=True, env=orchestrator_env(), cwd=REPO_ROOT, timeout=300,
    )  # fmt: skip
    metrics = out / METRICS_JSON.format(model=FAST_MODEL)
    assert metrics.is_file() and (out / SUMMARY_JSON).is_file()
    old_metrics = metrics.read_bytes()
    resumed = run_runner(*_runner_args(checkpoint, data.data_file, out))  # the full set: 4 more samples
    assert resumed.result is not None and resumed.result.num_written == data.num_samples
    assert not metrics.exists() and not (out / SUMMARY_JSON).exists()  # nothing stale looks current
    assert (out / (metrics.name + ".stale")).read_bytes() == old_metrics  # renamed, not lost
    assert "marked" in resumed.stderr and "stale" in resumed.stderr


# --- --limit N: the ablation scores the subset it captioned ---------------------------------------------------


def test_a_limited_ablation_scores_the_subset_and_says_so(tmp_path: Path, tiny_checkpoint, make_panorama_data) -> None:
    from contract import METRICS_JSON, MetricsFile, read_json

    data = make_panorama_data(tmp_path / "data", num_images=3)  # 6 samples
    root = model_root(tmp_path, tiny_checkpoint, [FAST_MODEL])
    out = tmp_path / "results"
    run = run_orchestrator(
        "ablation", "--engine", "local", "--gpus", "none", "--models", FAST_MODEL, "--data", data.data_file,
        "--output-dir", out, "--model-path-root", root, "--max-new-tokens", "4", "--limit", "2", "--no-report",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    metrics = read_json(out / METRICS_JSON.format(model=FAST_MODEL), MetricsFile)
    assert metrics.num_samples == 2
    assert metrics.subset is not None and metrics.subset.model_dump() == {"num_samples": 2, "data_samples": 6,
                                                                          "limit": 2}  # fmt: skip
    assert len(predictions(out, FAST_MODEL)) == 2


# --- children die with the orchestrator ----------------------------------------------------------------------


def _wait_for(condition, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _lines(path: Path) -> int:
    return path.read_text(encoding="utf-8").count("\n") if path.exists() else 0


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _slow_ablation_args(tmp_path: Path, tiny_checkpoint, make_panorama_data, models: list[str]) -> list:  # noqa: ANN001
    # 60 samples one at a time: minutes of work, so whatever still runs after a kill is a leftover, not a finisher.
    queries = ("location", "people", "weather", "sky", "road", "water")
    data = make_panorama_data(tmp_path / "data", num_images=10, queries=queries)
    root = model_root(tmp_path, tiny_checkpoint, models)
    return ["ablation", "--engine", "local", "--gpus", "none", "--models", ",".join(models),
            "--data", data.data_file, "--output-dir", tmp_path / "results", "--model-path-root", root,
            "--batch-size", "1", "--max-new-tokens", "60", "--no-report"]  # fmt: skip


def test_kill_9_of_the_orchestrator_group_takes_its_runner_along(
    tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    args = _slow_ablation_args(tmp_path, tiny_checkpoint, make_panorama_data, ["llava-1.5-7b"])
    out = tmp_path / "results"
    process = subprocess.Popen(
        orchestrator_command(*args), cwd=REPO_ROOT, env=orchestrator_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    _wait_for(lambda: _lines(out / "llava-1.5-7b_predictions.jsonl") >= 1, 240, "a first prediction")
    os.killpg(process.pid, signal.SIGKILL)  # the orchestrator's whole process group, as `kill -9 -PGID`
    process.wait()
    _wait_for(lambda: processes_mentioning(str(out)) == [], 5, "the runner to die with the orchestrator")
    # The rerun is not refused by a leftover runner holding the lock, and resumes.
    rerun = run_orchestrator(*args)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-2000:]
    ids = [record.sample_id for record in predictions(out, "llava-1.5-7b")]
    assert len(ids) == len(set(ids)) == 60


def test_kill_9_during_scoring_takes_the_scorer_and_its_java_along(
    tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    data = make_panorama_data(tmp_path / "data", num_images=1, queries=("location",))
    root = model_root(tmp_path, tiny_checkpoint, [FAST_MODEL])
    out = tmp_path / "results"
    process = subprocess.Popen(
        orchestrator_command(
            "ablation", "--engine", "local", "--gpus", "none", "--models", FAST_MODEL, "--data", data.data_file,
            "--output-dir", out, "--model-path-root", root, "--max-new-tokens", "4", "--no-report",
        ),
        cwd=REPO_ROOT, env=orchestrator_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    log = out / "logs" / "scoring.scoring.log"
    # Killed while it waits, silent, for the METEOR JVM: a scorer that is printing would also die of a broken pipe.
    _wait_for(lambda: log.exists() and "waiting for METEOR" in log.read_text(), 240, "scoring to wait for METEOR")

    def scorer() -> list[int]:
        return [pid for pid in processes_mentioning(str(out)) if pid != process.pid]

    _wait_for(lambda: any(_children(pid) for pid in scorer()), 60, "the scorer's Java")
    java = [child for pid in scorer() for child in _children(pid)]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    _wait_for(lambda: processes_mentioning(str(out)) == [], 5, "the scorer to die with the orchestrator")
    _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in java), 30, "its JVMs to exit")


# --- counts and states are true ------------------------------------------------------------------------------


def test_disk_full_result_line_counts_what_is_on_disk(
    tmp_path: Path, make_panorama_data, tiny_checkpoint, run_runner
) -> None:
    if os.getuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    data = make_panorama_data(tmp_path / "data", num_images=10, queries=("location", "people", "weather", "sky"))
    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(full)], capture_output=True).returncode:
        pytest.skip("tmpfs cannot be mounted here")
    try:
        run = run_runner(*_runner_args(tiny_checkpoint(FAST_MODEL), data.data_file, full, "--batch-size", "2"),
                         expect_ok=False)  # fmt: skip
        assert run.returncode == 1
        assert "No space left on device" in run.stderr
        on_disk = {record.sample_id for record in predictions(full, FAST_MODEL)}
        assert 0 < len(on_disk) < data.num_samples  # it filled up midway
        assert run.result is not None and run.result.status == "failed"
        assert run.result.num_written == len(on_disk)
        assert run.result.num_samples == data.num_samples
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_an_interrupted_ablation_says_which_model_never_started(
    tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    args = _slow_ablation_args(tmp_path, tiny_checkpoint, make_panorama_data, ["llava-1.5-7b", FAST_MODEL])
    out = tmp_path / "results"
    process = subprocess.Popen(
        orchestrator_command(*args), cwd=REPO_ROOT, env=orchestrator_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    _wait_for(lambda: _lines(out / "llava-1.5-7b_predictions.jsonl") >= 1, 240, "a first prediction")
    process.send_signal(signal.SIGINT)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 130, stdout[-2000:]
    messages = {record.model_name: record.message or "" for record in manifest(out).models}
    assert statuses(out) == {"llava-1.5-7b": "failed", FAST_MODEL: "failed"}
    assert messages["llava-1.5-7b"].startswith("interrupted after ") and "of 60 samples" in messages["llava-1.5-7b"]
    assert messages[FAST_MODEL] == "not started: the run was interrupted before this model"


# --- Hub tokens reach only the fetch step, as a file ---------------------------------------------------------

SECRET = "hf_hardening_secret_4c1d"


def test_the_runner_process_never_sees_the_hub_token(tmp_path: Path, tiny_checkpoint, make_panorama_data) -> None:
    args = _slow_ablation_args(tmp_path, tiny_checkpoint, make_panorama_data, ["llava-1.5-7b"])
    out = tmp_path / "results"
    process = subprocess.Popen(
        orchestrator_command(*args), cwd=REPO_ROOT, env=orchestrator_env(HF_TOKEN=SECRET),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for(lambda: _lines(out / "llava-1.5-7b_predictions.jsonl") >= 1, 240, "a first prediction")
        runners = [pid for pid in processes_mentioning(str(out)) if pid != process.pid]
        assert runners
        for pid in runners:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert SECRET.encode() not in environ and b"HF_TOKEN=" not in environ
    finally:
        process.kill()
        process.wait()


def test_the_fetch_step_gets_the_token_as_a_private_file_only(monkeypatch) -> None:
    from orchestrator.ablation import hf_token_file
    from orchestrator.engines import LocalEngine, Task
    from orchestrator.plan import GpuSelection

    monkeypatch.setenv("HF_TOKEN", SECRET)
    engine = LocalEngine()
    with hf_token_file(None) as token_file:
        assert token_file is not None and token_file.read_text() == SECRET
        assert token_file.stat().st_mode & 0o777 == 0o400
        fetch = Task("fetch-x", "fetch", None, [], GpuSelection("none"), network=True, token_file=token_file)
        runner = Task("x", "runner", None, [], GpuSelection("none"))
        fetch_env, runner_env = engine.environment(fetch), engine.environment(runner)
        assert fetch_env["HF_TOKEN_PATH"] == str(token_file)
        for env in (fetch_env, runner_env):
            assert SECRET not in env.values() and "HF_TOKEN" not in env
        assert "HF_TOKEN_PATH" not in runner_env
    assert not token_file.exists() and not token_file.parent.exists()


def test_tiny_checkpoints_are_readable_by_others_under_the_usual_umask(tmp_path: Path) -> None:
    """safetensors wrote model.safetensors 0600, which the docker engine's container user could not read."""
    from runner.tiny import build_tiny

    previous = os.umask(0o022)
    try:
        build_tiny(FAST_MODEL, str(tmp_path / "tiny"))
    finally:
        os.umask(previous)
    modes = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "tiny").iterdir()}
    assert modes["model.safetensors"] == 0o644
    assert set(modes.values()) == {0o644}


def test_a_changed_chat_template_is_not_mixed_into_earlier_predictions(
    make_panorama_data, tiny_checkpoint, run_runner, tmp_path: Path
) -> None:
    """Same arguments, but the checkpoint's template now renders another prompt (a new revision, or a template that
    writes today's date): resuming would mix two prompts in one file."""
    import shutil

    data = make_panorama_data(tmp_path / "data", num_images=2)
    checkpoint = tmp_path / "llava"
    shutil.copytree(tiny_checkpoint("llava-1.5-7b"), checkpoint)
    out = tmp_path / "results"
    args = ["--model", "llava-1.5-7b", "--model-path", checkpoint, "--data", data.data_file, "--output-dir", out,
            "--max-new-tokens", "3", "--device", "cpu", "--no-progress"]  # fmt: skip
    run_runner(*args, "--limit", "2")
    template = checkpoint / "chat_template.jinja"
    template.write_text(template.read_text().replace("ASSISTANT:", "ASSISTANT (1 Dec 2026):"))
    again = run_runner(*args, expect_ok=False)
    assert again.returncode == 2 and "changed since" in again.stderr
    assert len(predictions(out, "llava-1.5-7b")) == 2  # nothing appended
