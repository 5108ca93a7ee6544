"""`--engine slurm` end to end on a REAL single-node Slurm cluster (tests/slurm_cluster.py: two fake GPUs, at most
1 GB per CPU by default and memory enforced), the tiny checkpoints, container runtime `none` (the nodes' Python: this
venv): completion identical to the local engine with each job asking for its own memory, shards over both GPUs, a
broken model failing alone, a job killed for memory reported as such, Ctrl-C leaving no job, a time limit, --detach
then status."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from _orchestrator_helpers import (
    REPO_ROOT,
    break_checkpoint,
    manifest,
    model_root,
    orchestrator_command,
    orchestrator_env,
    predictions,
    run_orchestrator,
    statuses,
)
from slurm_cluster import SlurmTestCluster, slurm_cluster_fixture  # noqa: F401  (registers `slurm_cluster`)

from contract import METRICS_JSON, MetricsFile, read_json
from runner.registry import MODELS

pytestmark = pytest.mark.slow


def slurm_env(cluster: SlurmTestCluster) -> dict[str, str]:
    return orchestrator_env(SLURM_CONF=str(cluster.conf))


def jobs_in_queue(cluster: SlurmTestCluster, word: str) -> list[str]:
    """Jobs squeue still lists as pending or running whose name carries `word`."""
    done = subprocess.run(
        ["squeue", "--noheader", "--format=%i %j %T"], capture_output=True, text=True, env=slurm_env(cluster),
        timeout=30, check=True,
    )  # fmt: skip
    return [line for line in done.stdout.splitlines() if word in line]


def ablation_args(data_file: Path, root: Path, out: Path, models: str, *extra: str) -> list[str | Path]:
    return ["ablation", "--engine", "slurm", "--container-runtime", "none", "--models", models, "--data", data_file,
            "--model-path-root", root, "--output-dir", out, "--batch-size", "2", "--max-new-tokens", "4",
            "--no-report", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def eight(slurm_cluster: SlurmTestCluster, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint, spice_jars):
    from conftest import build_panorama_data

    tmp = tmp_path_factory.mktemp("slurm_eight")
    data = build_panorama_data(tmp / "data", num_images=2, queries=("location", "people"))  # 4 samples
    root = model_root(tmp, tiny_checkpoint, list(MODELS))
    slurm = run_orchestrator(
        *ablation_args(data.data_file, root, tmp / "slurm", "all", "--shards", "2", "--metrics", "all"),
        env={**slurm_env(slurm_cluster), "SCORING_SPICE_JARS": str(spice_jars)}, timeout=1500,
    )  # fmt: skip
    local = run_orchestrator(
        "ablation", "--engine", "local", "--gpus", "none", "--models", "all", "--data", data.data_file,
        "--model-path-root", root, "--output-dir", tmp / "local", "--batch-size", "2", "--max-new-tokens", "4",
        "--no-report", timeout=1500,
    )  # fmt: skip
    return data, tmp, slurm, local


def test_eight_models_in_two_shards_each_equal_the_local_engine(eight) -> None:
    data, tmp, slurm, local = eight
    assert slurm.returncode == 0, slurm.stdout[-5000:] + slurm.stderr[-2000:]
    assert local.returncode == 0, local.stdout[-3000:]
    assert "  completed : 8/8" in slurm.stdout
    for model in MODELS:
        one = {r.sample_id: (r.prompt, r.prediction, r.error) for r in predictions(tmp / "local", model)}
        assert {r.sample_id: (r.prompt, r.prediction, r.error) for r in predictions(tmp / "slurm", model)} == one
        assert len(one) == data.num_samples
        assert (tmp / "slurm" / METRICS_JSON.format(model=model)).is_file()
    recorded = manifest(tmp / "slurm")
    assert recorded.engine == "slurm" and recorded.slurm["shards"] == 2  # type: ignore[attr-defined]
    assert all(getattr(record, "slurm_job_id", None) for record in recorded.models)


def scontrol(cluster: SlurmTestCluster, *args: str) -> str:
    done = subprocess.run(["scontrol", *args], capture_output=True, text=True, env=slurm_env(cluster), timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_job_asked_for_its_own_memory_on_a_cluster_of_1_gb_per_cpu(eight, slurm_cluster) -> None:
    """No --slurm-arg mem=: the runners and the scoring job (METEOR's JVM, SPICE's) asked for what they need, as the
    controller recorded it, on a cluster whose default would have killed the scoring job; SPICE was computed."""
    from scoring import spice

    _data, tmp, slurm, _local = eight
    assert slurm.returncode == 0, slurm.stdout[-5000:]
    config = scontrol(slurm_cluster, "show", "config")
    assert re.search(rf"^DefMemPerCPU\s*=\s*{slurm_cluster.def_mem_per_cpu_mb}$", config, re.MULTILINE)
    assert slurm_cluster.def_mem_per_cpu_mb <= 1024 and "OverMemoryKill" in config  # 1 GB per CPU at most, enforced
    recorded = manifest(tmp / "slurm")
    requests = recorded.slurm["requests"]  # type: ignore[attr-defined]
    scoring = requests["scoring"]
    heap = spice.spice_heap_mb(spice.TYPICAL_MAX_TOKENS, 1)
    assert scoring["source"] == "estimate" and f"SPICE JVM -Xmx{heap}m" in scoring["estimate"]
    asked_mib = int(scoring["memory"].removeprefix("--mem=").removesuffix("M"))
    assert asked_mib > slurm_cluster.def_mem_per_cpu_mb * scoring["cpus"]  # the default would not have done
    shown = scontrol(slurm_cluster, "-o", "show", "job", recorded.slurm["scoring_job"])  # type: ignore[attr-defined]
    granted = re.search(r"MinMemoryNode=(\d+)([MG])", shown)
    assert granted and int(granted.group(1)) * (1024 if granted.group(2) == "G" else 1) == asked_mib, shown
    assert f"NumCPUs={scoring['cpus']}" in shown
    for model in MODELS:
        assert requests[model]["memory"].startswith("--mem=") and "batch 2, cuda" in requests[model]["estimate"]
    assert recorded.scoring is not None and recorded.scoring.status == "completed" and recorded.scoring.message is None
    for model in MODELS:
        metrics = read_json(tmp / "slurm" / METRICS_JSON.format(model=model), MetricsFile)
        assert metrics.metrics["spice"] is not None and "spice" not in metrics.unavailable, model


def test_the_two_shards_of_a_model_get_the_two_fake_gpus(eight) -> None:
    _data, tmp, _slurm, _local = eight
    seen = set()
    for model in MODELS:
        for shard in (0, 1):
            log = (tmp / "slurm" / "logs" / f"{model}.shard-{shard}.slurm.log").read_text()
            seen.add(log.split("CUDA_VISIBLE_DEVICES=", 1)[1].split()[0])
    assert seen == {"0", "1"}  # one GPU per task, both in use


def test_a_broken_checkpoint_fails_alone_and_the_others_are_scored(
    slurm_cluster: SlurmTestCluster, tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    data = make_panorama_data(tmp_path / "data", num_images=1)
    root = model_root(tmp_path, tiny_checkpoint, ["blip2-opt-2.7b", "llava-1.5-7b"])
    break_checkpoint(root / "llava-1.5-7b")
    out = tmp_path / "results"
    run = run_orchestrator(
        *ablation_args(data.data_file, root, out, "blip2-opt-2.7b,llava-1.5-7b"), env=slurm_env(slurm_cluster)
    )
    assert run.returncode == 1, run.stdout[-4000:]
    assert statuses(out) == {"blip2-opt-2.7b": "completed", "llava-1.5-7b": "failed"}
    message = next(r.message for r in manifest(out).models if r.model_name == "llava-1.5-7b")
    assert message and "exited with code 1" in message
    assert (out / METRICS_JSON.format(model="blip2-opt-2.7b")).is_file()
    assert not (out / METRICS_JSON.format(model="llava-1.5-7b")).exists()


def test_a_scoring_job_given_too_little_memory_is_reported_out_of_memory(
    slurm_cluster: SlurmTestCluster, tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    """--slurm-scoring-arg mem=200M: the cluster kills the scoring job when METEOR's JVM starts (FAILED, with
    slurmstepd's "exceeded memory limit" in its log); the closing block, the manifest and `status` say out of memory,
    what it asked for and which option raises it."""
    data = make_panorama_data(tmp_path / "data", num_images=1)
    root = model_root(tmp_path, tiny_checkpoint, ["blip2-opt-2.7b"])
    out = tmp_path / "results"
    run = run_orchestrator(
        *ablation_args(data.data_file, root, out, "blip2-opt-2.7b", "--slurm-scoring-arg", "mem=200M"),
        env=slurm_env(slurm_cluster), timeout=600,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout[-4000:]
    assert statuses(out) == {"blip2-opt-2.7b": "completed"}
    hint = "it asked for --mem=200M; ask for more with --slurm-scoring-arg mem=1G"
    assert "exceeded memory limit" in (out / "logs" / "scoring.slurm.log").read_text()
    closing = run.stdout[run.stdout.rindex("Ablation finished") :]
    assert "  scoring   : FAILED: out of memory: killed at " in closing and hint in closing, closing
    recorded = manifest(out)
    assert recorded.scoring is not None and recorded.scoring.status == "failed"
    message = recorded.scoring.message or ""
    assert message.startswith("out of memory: killed at ") and message.endswith(hint), message
    assert "over its limit of 0.20 GiB" in message
    assert recorded.slurm["requests"]["scoring"]["source"] == "option"  # type: ignore[attr-defined]
    status = run_orchestrator("status", "--output-dir", out, env=slurm_env(slurm_cluster), timeout=120)
    assert status.returncode == 1, status.stdout + status.stderr
    assert f"scoring: failed: {message}" in status.stdout


def test_a_runner_given_too_little_memory_fails_out_of_memory(
    slurm_cluster: SlurmTestCluster, tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    data = make_panorama_data(tmp_path / "data", num_images=1)
    root = model_root(tmp_path, tiny_checkpoint, ["llava-1.5-7b"])
    out = tmp_path / "results"
    run = run_orchestrator(
        *ablation_args(data.data_file, root, out, "llava-1.5-7b", "--slurm-runner-arg", "mem=150M"),
        env=slurm_env(slurm_cluster), timeout=600,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout[-4000:]
    assert statuses(out) == {"llava-1.5-7b": "failed"}
    message = manifest(out).models[0].message or ""
    assert message.startswith("out of memory: killed at "), message
    assert message.endswith("it asked for --mem=150M; ask for more with --slurm-runner-arg mem=1G"), message
    assert f"llava-1.5-7b FAILED: {message}" in run.stdout and f"    - llava-1.5-7b: {message}" in run.stdout


def _slow_data(make_panorama_data, folder: Path, images: int):  # noqa: ANN001, ANN202
    queries = ("location", "people", "weather", "sky", "road", "water")
    return make_panorama_data(folder, num_images=images, queries=queries, captions_per_sample=1)


def test_ctrl_c_cancels_every_job_of_the_run(
    slurm_cluster: SlurmTestCluster, tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    data = _slow_data(make_panorama_data, tmp_path / "data", 10)
    root = model_root(tmp_path, tiny_checkpoint, ["llava-1.5-7b", "blip2-opt-2.7b"])
    out = tmp_path / "results"
    args = ablation_args(data.data_file, root, out, "llava-1.5-7b,blip2-opt-2.7b", "--shards", "2")
    process = subprocess.Popen(
        orchestrator_command(*args, "--max-new-tokens", "60"), cwd=REPO_ROOT, env=slurm_env(slurm_cluster),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not any("RUNNING" in line for line in jobs_in_queue(slurm_cluster, "vlm-")):
        assert process.poll() is None and time.monotonic() < deadline, "no job started"
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 130, stdout[-3000:]
    run_id = manifest(out).slurm["run_id"]  # type: ignore[attr-defined]
    assert jobs_in_queue(slurm_cluster, run_id) == []  # nothing left queued or running


def test_a_time_limit_marks_the_model_failed_timeout(
    slurm_cluster: SlurmTestCluster, tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    """--timeout 30 becomes sbatch --time=1 (Slurm counts minutes and checks about every 30 s). The runner job is
    made slow by its setup file (a sleep, whatever this machine's speed), so it surely runs past the limit."""
    data = make_panorama_data(tmp_path / "data", num_images=1)
    root = model_root(tmp_path, tiny_checkpoint, ["llava-1.5-7b"])
    setup = tmp_path / "setup.sh"
    setup.write_text('if [[ "${SLURM_JOB_NAME}" != *-scoring ]]; then sleep 150; fi\n', encoding="utf-8")
    out = tmp_path / "results"
    run = run_orchestrator(
        *ablation_args(data.data_file, root, out, "llava-1.5-7b", "--timeout", "30", "--slurm-setup", setup),
        env=slurm_env(slurm_cluster), timeout=600,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout[-3000:]
    assert statuses(out) == {"llava-1.5-7b": "failed"}
    message = manifest(out).models[0].message or ""
    assert message.startswith("timeout"), message
    assert "llava-1.5-7b FAILED: timeout" in run.stdout


def test_detach_then_status_then_rerun(
    slurm_cluster: SlurmTestCluster, tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    data = make_panorama_data(tmp_path / "data", num_images=1)
    root = model_root(tmp_path, tiny_checkpoint, ["blip2-opt-2.7b"])
    out = tmp_path / "results"
    args = ablation_args(data.data_file, root, out, "blip2-opt-2.7b")
    detached = run_orchestrator(*args, "--detach", env=slurm_env(slurm_cluster), timeout=300)
    assert detached.returncode == 0, detached.stdout[-3000:] + detached.stderr[-2000:]
    assert "submitted run" in detached.stdout and "orchestrator status --output-dir" in detached.stdout
    deadline = time.monotonic() + 400
    while True:
        status = run_orchestrator("status", "--output-dir", out, env=slurm_env(slurm_cluster), timeout=120)
        if status.returncode != 3:
            break
        assert "still running" in status.stdout
        assert time.monotonic() < deadline, status.stdout
        time.sleep(3)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "blip2-opt-2.7b" in status.stdout and "completed" in status.stdout
    assert statuses(out) == {"blip2-opt-2.7b": "completed"}  # status wrote what the jobs did into the manifest
    rerun = run_orchestrator(*args, env=slurm_env(slurm_cluster), timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    log = (out / "logs" / "blip2-opt-2.7b.shard-0.slurm.log").read_text()
    assert "already complete: 2/2 samples, nothing to do" in log  # nothing captioned twice
    assert len(predictions(out, "blip2-opt-2.7b")) == data.num_samples


@pytest.mark.parametrize("runtime", ["apptainer", "pyxis"])
def test_the_container_runtimes_job_lines_as_submitted(runtime: str, tmp_path: Path, make_panorama_data) -> None:
    """Apptainer and enroot cannot run here: what a job would run is checked word for word instead (the same
    runner arguments as the other engines, container paths, read-only inputs, only the results writable)."""
    import shlex

    from orchestrator.ablation import runner_argv
    from orchestrator.plan import AblationOptions, GpuSelection, build_plan
    from orchestrator.slurm_engine import SlurmEngine, SlurmSettings
    from runner.registry import get_model

    data = make_panorama_data(tmp_path / "data", num_images=1)
    (tmp_path / "models" / "llava-1.5-7b").mkdir(parents=True)
    plan = build_plan(AblationOptions(models=["llava-1.5-7b"], data_file=data.data_file, output_dir=tmp_path / "out",
                                      model_path_root=tmp_path / "models", shards=2))  # fmt: skip
    engine = SlurmEngine(SlurmSettings(runtime=runtime, sif_dir=tmp_path / "sif"))  # type: ignore[arg-type]
    spec = get_model("llava-1.5-7b")
    argv = runner_argv(plan, spec, engine.paths(plan), GpuSelection("all"), None)
    line = engine._command(plan, spec.image_ref, "runner", argv, 2)
    words = shlex.split(line.replace('"${SLURM_ARRAY_TASK_ID}"', "K"))
    runner = words[words.index("runner") + 1 :]
    assert runner[:6] == ["--model", "llava-1.5-7b", "--data", "/data/data.csv", "--output-dir", "/results"]
    assert runner[-2:] == ["--shard", "K/2"] and "/models/llava-1.5-7b" in runner
    mounts = [f"{data.folder}:/data:ro", f"{plan.output_dir}:/results", f"{tmp_path / 'models'}:/models:ro"]
    if runtime == "apptainer":
        assert words[:5] == ["apptainer", "exec", "--containall", "--no-home", "--pwd"]
        assert "--nv" in words and str(tmp_path / "sif" / "llava.sif") in words
        assert [words[i + 1] for i, w in enumerate(words) if w == "--bind"] == mounts
    else:
        assert "srun" in words and "--container-image=vlm-ablation/llava:latest" in words
        assert f"--container-mounts={','.join(mounts)}" in words
    assert "HF_HUB_OFFLINE=1" in line and "HF_TOKEN" not in line.replace("unset HF_TOKEN", "")
