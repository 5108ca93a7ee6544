"""The orchestrator without Docker: up-front checks, argument building, and whole ablations on the local engine
(real runner and scoring processes on tiny checkpoints)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _orchestrator_helpers import (
    REPO_ROOT,
    WITHOUT_SPICE,
    break_checkpoint,
    manifest,
    model_root,
    orchestrator_command,
    orchestrator_env,
    predictions,
    processes_mentioning,
    run_orchestrator,
    statuses,
    tree_text,
)

from contract import (
    COMPARISON_CSV,
    METRICS_JSON,
    SUMMARY_JSON,
    MetricsFile,
    RunManifest,
    Summary,
    file_sha256,
    read_json,
)
from orchestrator.ablation import runner_argv, scoring_argv
from orchestrator.engines import RunPaths
from orchestrator.plan import AblationOptions, GpuSelection, PlanError, build_plan, parse_gpus, parse_models
from runner.registry import MODELS, get_model

SECRET = "hf_test_secret_token_7f3a"


# --- checks before any work ---------------------------------------------------------------------------------


def test_unknown_model_is_refused_before_anything_is_created(tmp_path: Path, panorama_data) -> None:
    out = tmp_path / "results"
    run = run_orchestrator(
        "ablation", "--models", "llava-1.5-7b,gpt-5-vision", "--data", panorama_data.data_file,
        "--output-dir", out, "--engine", "local", timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "unknown model 'gpt-5-vision'" in run.stderr
    assert "llava-1.5-7b" in run.stderr.split("valid names:")[1]  # the valid names are listed
    assert not out.exists()


def test_missing_data_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "test.csv"
    with pytest.raises(PlanError, match=r"nope/test.csv: data file not found"):
        build_plan(AblationOptions(models=["llava-1.5-7b"], data_file=missing, output_dir=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_data_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    data = tmp_path / "bad.csv"
    data.write_bytes(b"url,query,annotation\nimages/a.jpg,location,caf\xe9 by the sea\n")
    with pytest.raises(PlanError, match=r"bad.csv: line 2 is not valid UTF-8"):
        build_plan(AblationOptions(models=["llava-1.5-7b"], data_file=data, output_dir=tmp_path / "out"))


def test_missing_images_are_listed_before_any_model_runs(tmp_path: Path, panorama_data) -> None:
    panorama_data.images[1].unlink()
    with pytest.raises(PlanError, match=r"2 image\(s\) not found or not readable: images/pano_001"):
        build_plan(AblationOptions(models=["llava-1.5-7b"], data_file=panorama_data.data_file, output_dir=tmp_path))


def test_unwritable_results_folder_fails_before_any_work(tmp_path: Path, panorama_data) -> None:
    # A path under a regular file can never be created, for root too; a read-only folder only stops non-root.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    (tmp_path / "llava-1.5-7b").mkdir()
    started = time.monotonic()
    run = run_orchestrator(
        "ablation", "--models", "llava-1.5-7b", "--data", panorama_data.data_file,
        "--output-dir", blocker / "results", "--engine", "local", "--model-path-root", tmp_path, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert f"results folder {blocker / 'results'} cannot be created" in run.stderr
    assert "started at" not in run.stdout  # no model was started
    assert time.monotonic() - started < 30
    if os.getuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(PlanError, match="is not writable"):
            build_plan(AblationOptions(models=["llava-1.5-7b"], data_file=panorama_data.data_file, output_dir=locked))


def test_engine_unreachable_names_docker_host(tmp_path: Path, panorama_data) -> None:
    socket = tmp_path / "no-engine.sock"
    run = run_orchestrator(
        "ablation", "--models", "llava-1.5-7b", "--data", panorama_data.data_file,
        "--output-dir", tmp_path / "results", "--engine", "docker",
        env=orchestrator_env(DOCKER_HOST=f"unix://{socket}"), timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert f"the Docker engine does not answer (DOCKER_HOST=unix://{socket})" in run.stderr
    assert "--engine local" in run.stderr


def test_model_path_root_without_a_models_folder_is_refused(tmp_path: Path, panorama_data) -> None:
    (tmp_path / "llava-1.5-7b").mkdir()
    with pytest.raises(PlanError, match=r"no checkpoint folder for gemma-3-4b"):
        build_plan(
            AblationOptions(
                models=["llava-1.5-7b", "gemma-3-4b"],
                data_file=panorama_data.data_file,
                output_dir=tmp_path / "out",
                model_path_root=tmp_path,
            )
        )


def test_a_local_ablation_that_cannot_compute_spice_stops_before_any_model_runs(
    tmp_path: Path, tiny_checkpoint, panorama_data
) -> None:
    """Scoring runs on this host's files: SPICE's jars missing is said before any model runs (not after all of them),
    with both fixes; --metrics all,-spice leaves it out deliberately; a --metrics typo is refused the same way."""
    root = model_root(tmp_path, tiny_checkpoint, ["blip2-opt-2.7b"])
    out = tmp_path / "results"
    common = ("ablation", "--models", "blip2-opt-2.7b", "--data", panorama_data.data_file, "--output-dir", out,
              "--engine", "local", "--gpus", "none", "--model-path-root", root, "--no-report")  # fmt: skip
    env = {**orchestrator_env(), "SCORING_SPICE_JARS": str(tmp_path / "no-jars")}
    refused = run_orchestrator(*common, "--metrics", "all", env=env, timeout=120)
    assert refused.returncode == 2, refused.stdout[-2000:]
    assert "cannot compute SPICE: SPICE needs stanford-corenlp-3.6.0.jar" in refused.stderr
    assert "python -m scoring fetch-spice" in refused.stderr and "--metrics all,-spice" in refused.stderr
    assert not list(out.glob("*_predictions.jsonl")) and not (out / "logs").exists()
    typo = run_orchestrator(*common, "--metrics", "all,-spcie", env=env, timeout=120)
    assert typo.returncode == 2 and "spcie" in typo.stderr, typo.stderr
    assert not list(out.glob("*_predictions.jsonl"))


# --- arguments ------------------------------------------------------------------------------------------------


def test_parse_models_and_gpus() -> None:
    assert parse_models("all") == list(MODELS)
    assert parse_models(" llava-1.5-7b, gemma-3-4b,llava-1.5-7b ") == ["llava-1.5-7b", "gemma-3-4b"]
    assert parse_gpus("all", {}) == GpuSelection("all")
    assert parse_gpus("none", {}) == GpuSelection("none")
    assert parse_gpus("0, 1", {}) == GpuSelection("ids", ("0", "1"))
    assert parse_gpus("auto", {}) is None  # the engine decides
    assert parse_gpus("auto", {"CUDA_VISIBLE_DEVICES": "2,3"}) == GpuSelection("ids", ("2", "3"))
    assert parse_gpus("auto", {"CUDA_VISIBLE_DEVICES": ""}) == GpuSelection("none")
    with pytest.raises(PlanError, match="comma list of GPU ids"):
        parse_gpus("0,,1", {})


def test_both_engines_get_the_same_arguments_but_for_paths(tmp_path: Path, panorama_data) -> None:
    (tmp_path / "models" / "blip2-opt-2.7b").mkdir(parents=True)
    options = AblationOptions(
        models=["blip2-opt-2.7b"],
        data_file=panorama_data.data_file,
        output_dir=tmp_path / "out",
        batch_size=3,
        max_new_tokens=20,
        model_path_root=tmp_path / "models",
        limit=5,
    )
    plan = build_plan(options)
    spec = get_model("blip2-opt-2.7b")
    container = RunPaths("/data/data.csv", "/results", "/models", None, "/cache/huggingface")
    assert runner_argv(plan, spec, container, GpuSelection("none"), None) == [
        "--model", "blip2-opt-2.7b", "--data", "/data/data.csv", "--output-dir", "/results",
        "--batch-size", "3", "--max-new-tokens", "20", "--model-path", "/models/blip2-opt-2.7b",
        "--device", "cpu", "--limit", "5", "--progress", "json",
    ]  # fmt: skip
    local = RunPaths(str(plan.data_file), str(plan.output_dir), str(plan.model_path_root), None, None)
    assert runner_argv(plan, spec, local, GpuSelection("all"), None)[:10] == [
        "--model", "blip2-opt-2.7b", "--data", str(plan.data_file), "--output-dir", str(plan.output_dir),
        "--batch-size", "3", "--max-new-tokens", "20",
    ]  # fmt: skip
    # Hub models get their pinned revision instead of a checkpoint path.
    hub = RunPaths("/data/data.csv", "/results", None, None, "/cache/huggingface")
    assert runner_argv(plan, spec, hub, GpuSelection("ids", ("1",)), "0123abcd")[10:12] == ["--revision", "0123abcd"]
    assert scoring_argv(plan, container, ["a", "b"]) == [
        "score", "--predictions", "/results/a_predictions.jsonl", "/results/b_predictions.jsonl",
        "--output-dir", "/results", "--data", "/data/data.csv", "--limit", "5", "--report",
    ]  # fmt: skip
    # --metrics reaches the scoring step as given (the scoring CLI checks it; the orchestrator's CLI does too).
    options.metrics = "all,-spice"
    assert scoring_argv(build_plan(options), container, ["a"])[-3:] == ["--metrics", "all,-spice", "--report"]


# --- whole ablations on the local engine ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ablation(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint):
    """Two good tiny models and one whose checkpoint is broken, on 6 generated panorama samples."""
    from conftest import build_panorama_data

    tmp = tmp_path_factory.mktemp("local_ablation")
    data = build_panorama_data(tmp / "data", num_images=3)
    models = ["blip2-opt-2.7b", "llava-1.5-7b", "blip2-flan-t5-xl"]
    root = model_root(tmp, tiny_checkpoint, models)
    break_checkpoint(root / "blip2-flan-t5-xl")
    out = tmp / "results"
    run = run_orchestrator(
        "ablation", "--engine", "local", "--gpus", "none", "--models", ",".join(models),
        "--data", data.data_file, "--output-dir", out, "--model-path-root", root,
        "--batch-size", "2", "--max-new-tokens", "6",
        env=orchestrator_env(HF_TOKEN=SECRET),
    )  # fmt: skip
    return data, out, root, run


def test_local_ablation_results_tree(local_ablation) -> None:
    data, out, _root, run = local_ablation
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr  # one model failed
    assert statuses(out) == {"blip2-opt-2.7b": "completed", "llava-1.5-7b": "completed", "blip2-flan-t5-xl": "failed"}

    expected_ids = {sid for sid in (p.sample_id for p in predictions(out, "blip2-opt-2.7b"))}
    assert len(expected_ids) == data.num_samples == 6
    for model in ("blip2-opt-2.7b", "llava-1.5-7b"):
        records = predictions(out, model)
        assert sorted(r.sample_id for r in records) == sorted(expected_ids)  # each sample exactly once
        metrics = read_json(out / METRICS_JSON.format(model=model), MetricsFile)
        assert metrics.model_name == model and metrics.num_samples == 6
        assert set(metrics.metrics) >= {"bleu4", "meteor", "rougeL", "cider", "spice"}
    summary = read_json(out / SUMMARY_JSON, Summary)
    assert sorted(entry.model_name for entry in summary.models if not entry.human_baseline) == [
        "blip2-opt-2.7b",
        "llava-1.5-7b",
    ]
    assert [e.model_name for e in summary.models if e.human_baseline] == ["human-baseline"]  # scored by default
    assert (out / COMPARISON_CSV).read_text().count("\n") >= 3
    assert (out / "logs" / "llava-1.5-7b.runner.log").read_text().count("RUNNER_RESULT") == 1

    recorded = manifest(out)
    assert recorded.engine == "local"
    assert recorded.data_sha256 == file_sha256(data.data_file)
    assert recorded.arguments["batch_size"] == 2 and recorded.arguments["max_new_tokens"] == 6
    failed = next(r for r in recorded.models if r.model_name == "blip2-flan-t5-xl")
    assert failed.message and "exited with code" in failed.message
    assert recorded.finished_at is not None


def test_local_ablation_console(local_ablation) -> None:
    data, out, _root, run = local_ablation
    lines = run.stdout.splitlines()
    assert "VLM captioning ablation: 3 model(s), 6 sample(s)" in lines
    assert f"  data file : {data.data_file}" in lines
    assert f"  output dir: {out}" in lines
    assert "  batch size: 2" in lines
    assert any(line.startswith("[1/3] blip2-opt-2.7b started at ") for line in lines)
    assert any(line.startswith("[2/3] llava-1.5-7b completed at ") for line in lines)
    assert any(line.startswith("[3/3] blip2-flan-t5-xl FAILED: ") for line in lines)
    # One line per scored model, ranked by CIDEr, x100 (said once), labels as the report's.
    assert "scores x100 (the JSON files keep 0-1), ranked by CIDEr:" in lines
    ranked = [line for line in lines if line.startswith(("  1. ", "  2. "))]
    assert len(ranked) == 2 and all("CIDEr " in line and "sacreBLEU BLEU-4 " in line for line in ranked)
    # The runners' own output (loading bars, the RUNNER_RESULT line) is in the logs, not on the console.
    assert not any("RUNNER_RESULT" in line or "Loading weights" in line for line in lines)
    assert "DEMO: random-weight models; these numbers mean nothing" in lines
    assert "  completed : 2/3" in lines and "  failed    : 1/3" in lines
    assert "    all_models_summary.json" in lines


def test_token_is_never_written_or_printed(local_ablation) -> None:
    _data, out, _root, run = local_ablation
    assert SECRET not in tree_text(out)
    assert SECRET not in run.stdout + run.stderr


def test_rerun_resumes_and_reproduce_reports_no_difference(local_ablation, tmp_path: Path) -> None:
    """The failed model, repaired, runs on a rerun; then `reproduce` reruns the good ones from the manifest."""
    data, out, root, _run = local_ablation
    before = {m: predictions(out, m) for m in ("blip2-opt-2.7b", "llava-1.5-7b")}
    new_dir = tmp_path / "again"
    run = run_orchestrator("reproduce", "--manifest", out / "run_manifest.json", "--output-dir", new_dir)
    # The broken checkpoint is still broken: reproduce reports it failed again, the others identical.
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr
    report = (new_dir / "reproduce_report.json").read_text()
    import json

    models = json.loads(report)["models"]
    for model, records in before.items():
        assert models[model]["samples_compared"] == len(records) == data.num_samples
        assert models[model]["different_predictions"] == 0
        assert all(entry["delta"] in (0, None) for entry in models[model]["metrics"].values())
    assert "llava-1.5-7b: 6/6 predictions identical, 0 different, 0 missing; metrics identical" in run.stdout
    assert manifest(new_dir).arguments["batch_size"] == 2  # the original arguments, not the defaults
    # Each model is pinned to the batch size its runner used (what `auto` resolved to on the original GPU).
    used = {m: read_json(out / f"{m}_run.json", RunManifest).batch_size_used for m in before}
    pinned = manifest(new_dir).arguments["batch_sizes"]
    assert {m: pinned[m] for m in before} == used == {m: 2 for m in before}
    rerun = {m: read_json(new_dir / f"{m}_run.json", RunManifest) for m in before}
    assert all(r.batch_size_requested == r.batch_size_used == 2 for r in rerun.values())


def test_ctrl_c_stops_the_local_runner(tmp_path: Path, tiny_checkpoint, make_panorama_data) -> None:
    data = make_panorama_data(tmp_path / "data", num_images=6, queries=("location", "people", "weather"))
    root = model_root(tmp_path, tiny_checkpoint, ["llava-1.5-7b"])
    out = tmp_path / "results"
    process = subprocess.Popen(
        orchestrator_command(
            "ablation", "--engine", "local", "--gpus", "none", "--models", "llava-1.5-7b",
            "--data", data.data_file, "--output-dir", out, "--model-path-root", root, "--batch-size", "1",
            "--max-new-tokens", "48",
        ),
        cwd=REPO_ROOT, env=orchestrator_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    predictions_file = out / "llava-1.5-7b_predictions.jsonl"
    deadline = time.monotonic() + 240
    while not (predictions_file.exists() and predictions_file.read_text().count("\n") >= 1):
        assert process.poll() is None and time.monotonic() < deadline, "the runner never wrote a prediction"
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 130, stdout[-2000:]
    assert "INTERRUPTED" in stdout
    assert processes_mentioning(str(out)) == [], "a runner process outlived the orchestrator"
    assert statuses(out) == {"llava-1.5-7b": "failed"}
    assert "interrupted" in (manifest(out).models[0].message or "")


def test_parallel_runs_one_model_per_gpu(tmp_path: Path, tiny_checkpoint, make_panorama_data) -> None:
    """--parallel with --gpus 0,1: each model gets its own CUDA_VISIBLE_DEVICES id (CPU here: no GPU exists)."""
    data = make_panorama_data(tmp_path / "data", num_images=1)
    models = ["blip2-opt-2.7b", "llava-1.5-7b"]
    root = model_root(tmp_path, tiny_checkpoint, models)
    out = tmp_path / "results"
    run = run_orchestrator(
        "ablation", "--engine", "local", "--gpus", "0,1", "--parallel", "--models", ",".join(models),
        "--data", data.data_file, "--output-dir", out, "--model-path-root", root, "--max-new-tokens", "4",
        "--no-report",
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    started = sorted(
        line.split(" started at ")[1].split(" ", 1)[1] for line in run.stdout.splitlines() if " started at " in line
    )
    assert started == ["(GPU 0)", "(GPU 1)"]
    assert "one model per GPU, in parallel" in run.stdout
    assert statuses(out) == {"blip2-opt-2.7b": "completed", "llava-1.5-7b": "completed"}


def test_parallel_needs_listed_gpus(tmp_path: Path, panorama_data) -> None:
    run = run_orchestrator(
        "ablation", "--engine", "local", "--gpus", "all", "--parallel", "--models", "llava-1.5-7b",
        "--data", panorama_data.data_file, "--output-dir", tmp_path / "out", timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "--parallel runs one model per GPU and needs the GPUs listed" in run.stderr


def test_log_lines_are_split_whatever_the_chunk_boundaries() -> None:
    from orchestrator.engines import pump_lines

    seen: list[str] = []
    lines: list[str] = []
    pump_lines(["[load] 10%\r[load] 100%\nfirst li", "ne\n\n", "RUNNER_RESULT {}", ""], seen.append, lines)
    assert seen == lines == ["[load] 10%", "[load] 100%", "first line", "RUNNER_RESULT {}"]


def test_timeout_kills_the_model_and_marks_it_failed(tmp_path: Path, tiny_checkpoint, make_panorama_data) -> None:
    data = make_panorama_data(tmp_path / "data", num_images=1)
    root = model_root(tmp_path, tiny_checkpoint, ["llava-1.5-7b"])
    out = tmp_path / "results"
    run = run_orchestrator(
        "ablation", "--engine", "local", "--gpus", "none", "--models", "llava-1.5-7b", "--data", data.data_file,
        "--output-dir", out, "--model-path-root", root, "--timeout", "0.5",
    )  # fmt: skip
    assert run.returncode == 1
    assert "[1/1] llava-1.5-7b FAILED: timed out after 0.5 s and was killed" in run.stdout
    assert statuses(out) == {"llava-1.5-7b": "failed"}
    assert processes_mentioning(str(out)) == []


def test_the_old_guides_snippets_still_run_on_a_results_folder(local_ablation) -> None:
    """What users' scripts do with a results folder: a pandas table of every `*_metrics.json` sorted by BLEU-4, and
    a shell loop of `jq '.metrics.bleu4'` (values on the 0-1 scale)."""
    import glob
    import json

    import pandas as pd

    _data, out, _root, _run = local_ablation
    rows = []
    for path in glob.glob(str(out / "*_metrics.json")):
        with open(path) as handle:
            metrics = json.load(handle)
        rows.append({"model": metrics["model_name"], **metrics["metrics"]})
    table = pd.DataFrame(rows).sort_values("bleu4", ascending=False)
    assert sorted(table["model"]) == ["blip2-opt-2.7b", "human-baseline", "llava-1.5-7b"]  # the human row too
    assert table["bleu4"].between(0, 1).all() and table["cider"].notna().all()
    loop = f'for f in "{out}"/*_metrics.json; do echo "$(basename "$f") $(jq ".metrics.bleu4" "$f")"; done'
    printed = subprocess.run(["bash", "-c", loop], capture_output=True, text=True, check=True).stdout.split("\n")
    values = {line.split()[0]: float(line.split()[1]) for line in printed if line.strip()}
    assert set(values) == {"blip2-opt-2.7b_metrics.json", "human-baseline_metrics.json", "llava-1.5-7b_metrics.json"}
    bleu4 = float(table.set_index("model").loc["llava-1.5-7b", "bleu4"])
    assert values["llava-1.5-7b_metrics.json"] == pytest.approx(bleu4)


def test_a_model_only_in_a_users_models_file_runs_through_make_ablation_and_reproduce(
    tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    """The user's own catalogue entry (a file of theirs, not the repo's) through `make ablation`, then `make
    reproduce` after that file is gone: the manifest carries the entry."""
    import shutil

    data = make_panorama_data(tmp_path / "data", num_images=2, queries=("location",))
    models_file = tmp_path / "mine.toml"
    models_file.write_text(
        '[models."my-llava"]\nhub_id = "someone/my-llava-finetune"\nfamily = "llava"\n'
        'prompt_format = "USER: <image>\\n{prompt} ASSISTANT:"\nmax_image_side = 336\n',
        encoding="utf-8",
    )
    root = tmp_path / "models"
    shutil.copytree(tiny_checkpoint("llava-1.5-7b"), root / "my-llava")
    out = tmp_path / "results"
    make = ["make", "-s", "-C", str(REPO_ROOT), f"PYTHON={sys.executable}"]
    ablation = subprocess.run(
        [*make, "ablation", "MODELS=my-llava", f"MODELS_FILE={models_file}", f"DATA_CSV={data.data_file}",
         f"OUTPUT_DIR={out}", "ENGINE=local", "GPUS=none", "BATCH_SIZE=2", "MAX_NEW_TOKENS=4",
         f"EXTRA_ARGS=--model-path-root {root} --no-report {' '.join(WITHOUT_SPICE)}"],
        capture_output=True, text=True, env=orchestrator_env(), timeout=600,
    )  # fmt: skip
    assert ablation.returncode == 0, ablation.stdout[-3000:] + ablation.stderr[-2000:]
    assert statuses(out) == {"my-llava": "completed"}
    recorded = manifest(out)
    assert recorded.catalogue_entries["my-llava"]["hub_id"] == "someone/my-llava-finetune"  # type: ignore[index]
    run = read_json(out / "my-llava_run.json", RunManifest)
    assert run.model_id == "someone/my-llava-finetune" and run.decoding["max_image_side"] == 336
    models_file.unlink()  # reproduce reads the entry from the manifest, not from the user's file
    again = tmp_path / "again"
    reproduce = subprocess.run(
        [*make, "reproduce", f"MANIFEST={out / 'run_manifest.json'}", f"EXTRA_ARGS=--output-dir {again}"],
        capture_output=True, text=True, env=orchestrator_env(), timeout=600,
    )  # fmt: skip
    assert reproduce.returncode == 0, reproduce.stdout[-3000:] + reproduce.stderr[-2000:]
    assert "my-llava: 2/2 predictions identical, 0 different" in reproduce.stdout
    assert (again / "models_file.toml").is_file()
