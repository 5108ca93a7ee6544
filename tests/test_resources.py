"""What each step asks of the machine (scoring.resources, runner.memory's host estimate, orchestrator.resources) and
how the engines apply it: the figures follow the constants they are built from (SPICE's heap and workers are read
from scoring.spice by name), real processes stay within them, sbatch gets them unless the user names their own,
the docker engine's `--memory auto` gives each container its step's figure, and a memory kill reads as one.

The end-to-end checks on a real cluster with memory enforced are in tests/test_slurm_engine.py."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import QUIC360_TSV, WITHOUT_SPICE

from orchestrator.plan import AblationOptions, PlanError, build_plan
from orchestrator.slurm import SlurmArg, SlurmBackend, SlurmJobSpec, TaskState, parse_slurm_args, step_args
from scoring import spice
from scoring.resources import METEOR_HEAP, MIB, jvm_bytes, scoring_requirements, size_bytes

GIB = 1 << 30


# --- the scoring step ----------------------------------------------------------------------------------------------


def test_sizes_read_as_the_jvm_slurm_and_docker_write_them() -> None:
    assert size_bytes("2G") == size_bytes("2g") == size_bytes("2048m") == 2 * GIB
    assert size_bytes("1.5G") == 3 * GIB // 2 and size_bytes("512M") == 512 * MIB and size_bytes("1024") == 1024
    for bad in ("", "G", "two", "2X", "-1G"):
        with pytest.raises(ValueError, match="is not a size"):
            size_bytes(bad)


def test_the_scoring_step_asks_for_spice_as_scoring_spice_sizes_it() -> None:
    without_spice = scoring_requirements(8, 1211, metrics=("meteor",))
    with_spice = scoring_requirements(8, 1211)  # every metric, as an ablation scores
    one_jvm = spice.spice_memory_mb(1, 1, spice.TYPICAL_MAX_TOKENS) * MIB
    kept = max(0, spice.OTHER_SCORING_MB * MIB - without_spice.memory_bytes)
    assert with_spice.memory_bytes - without_spice.memory_bytes == kept + one_jvm
    heap = spice.spice_heap_mb(spice.TYPICAL_MAX_TOKENS, 1)
    assert f"SPICE JVM -Xmx{heap}m" in with_spice.describe()
    three = scoring_requirements(8, 1211, workers=3)
    assert three.memory_bytes - with_spice.memory_bytes == 2 * one_jvm
    assert (three.cpus, with_spice.cpus, without_spice.cpus) == (4, 2, 2)  # one CPU per SPICE JVM beside METEOR's


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_spice_plans_its_jvms_within_the_memory_the_scoring_step_asked_for(workers: int) -> None:
    """Inside a job granted exactly the request, SPICE's own plan (what the limit leaves it after OTHER_SCORING_MB)
    fits as many JVMs as were asked for, with QuIC-360-length captions; a request one JVM short does not."""
    asked = scoring_requirements(8, 1211, workers=workers)
    captions = ["a " * spice.TYPICAL_MAX_TOKENS] * 1000
    plan = spice.plan_spice(captions, cpus=asked.cpus - 1, memory_mb=asked.memory_mib - spice.OTHER_SCORING_MB)
    assert plan.workers == workers and plan.memory_mb <= asked.memory_mib - spice.OTHER_SCORING_MB
    short = asked.memory_mib - spice.OTHER_SCORING_MB - spice.spice_memory_mb(1, 1)
    if workers == 1:
        with pytest.raises(spice.SpiceMemoryError, match="Give the scoring step more memory"):
            spice.plan_spice(captions, cpus=1, memory_mb=short)
    else:
        assert spice.plan_spice(captions, cpus=asked.cpus - 1, memory_mb=short).workers == workers - 1


def test_the_meteor_heap_asked_for_is_the_one_the_scoring_cli_starts() -> None:
    from scoring.cli import build_parser
    from scoring.engine import ScoringOptions

    args = build_parser().parse_args(["score", "--predictions", "x.jsonl", "--output-dir", "out"])
    assert args.meteor_heap == METEOR_HEAP == ScoringOptions().meteor_heap
    meteor = ("meteor",)
    bigger = (
        scoring_requirements(1, 10, meteor, meteor_heap="4G").memory_bytes
        - scoring_requirements(1, 10, meteor).memory_bytes
    )
    assert bigger == jvm_bytes("4G") - jvm_bytes(METEOR_HEAP)


def test_more_models_and_samples_ask_for_more() -> None:
    meteor = ("meteor",)
    assert scoring_requirements(16, 1211, meteor).memory_bytes > scoring_requirements(8, 1211, meteor).memory_bytes
    assert scoring_requirements(8, 5000, meteor).memory_bytes > scoring_requirements(8, 1211, meteor).memory_bytes
    # With SPICE the request keeps OTHER_SCORING_MB beside it until Python outgrows that, then grows with it.
    assert scoring_requirements(8, 1211).memory_bytes == scoring_requirements(16, 1211).memory_bytes
    assert scoring_requirements(64, 50_000).memory_bytes > scoring_requirements(8, 1211).memory_bytes
    with pytest.raises(ValueError, match="at least one model"):
        scoring_requirements(0, 10)


@pytest.mark.slow
@pytest.mark.skipif(not QUIC360_TSV.is_file(), reason=f"{QUIC360_TSV} (the QuIC-360 test split) is not on this machine")
def test_scoring_the_quic360_leave_one_out_stays_within_what_it_asks_for(tmp_path: Path) -> None:
    """Every process of the step summed, as a cluster counts a job: Python, the tokenizer's and METEOR's JVMs."""
    from bench.peak_memory import measure

    command = [sys.executable, "-m", "scoring", "human-baseline", "--data", str(QUIC360_TSV),
               "--output-dir", str(tmp_path), *WITHOUT_SPICE]  # fmt: skip
    result = measure(command, interval=0.05)
    assert result["exit_code"] == 0
    asked = scoring_requirements(1, 1211, metrics=("meteor",))
    assert 0 < int(result["peak_total_bytes"]) <= asked.memory_bytes, (result, asked.describe())  # type: ignore[call-overload]


# --- the runner's host memory --------------------------------------------------------------------------------------


def test_checkpoint_size_counts_the_parameters_of_the_safetensors_files(tiny_checkpoint) -> None:
    from safetensors import safe_open

    from runner.memory import checkpoint_size

    folder = tiny_checkpoint("llava-1.5-7b")
    size = checkpoint_size(folder)
    files = sorted(folder.glob("*.safetensors"))
    assert size is not None and files and size.files == len(files)
    assert size.file_bytes == sum(path.stat().st_size for path in files)
    expected = 0
    for path in files:
        with safe_open(str(path), framework="pt") as opened:
            expected += sum(_numel(opened, key) for key in opened.keys())
    assert size.parameters == expected
    assert checkpoint_size(folder / "missing") is None


def _numel(opened: Any, key: str) -> int:
    count = 1
    for dimension in opened.get_slice(key).get_shape():
        count *= dimension
    return count


def test_a_runner_stays_within_its_host_estimate(tiny_checkpoint, make_panorama_data, tmp_path: Path) -> None:
    """A whole runner on the CPU (peak of its resident memory) against what a Slurm task of it would ask for."""
    from bench.peak_memory import measure
    from orchestrator.resources import runner_resources
    from runner.registry import get_model

    data = make_panorama_data(tmp_path / "data", num_images=2)
    root = tmp_path / "models"
    root.mkdir()
    (root / "llava-1.5-7b").symlink_to(tiny_checkpoint("llava-1.5-7b"))
    options = AblationOptions(
        models=["llava-1.5-7b"], data_file=data.data_file, output_dir=tmp_path / "out", model_path_root=root,
        batch_size=2,
    )  # fmt: skip
    plan = build_plan(options)
    estimate = runner_resources(plan, get_model("llava-1.5-7b"), gpu=False)
    command = [sys.executable, "-m", "runner", "--model", "llava-1.5-7b", "--model-path", str(root / "llava-1.5-7b")]
    command += ["--data", str(data.data_file), "--output-dir", str(tmp_path / "out"), "--device", "cpu"]
    command += ["--batch-size", "2", "--max-new-tokens", "4", "--progress", "none"]
    result = measure(command)
    assert result["exit_code"] == 0
    assert 0 < int(result["peak_total_bytes"]) <= estimate.memory_bytes, (result, estimate.basis)  # type: ignore[call-overload]
    assert "weights 0.0 GiB in" in estimate.basis and "batch 2, cpu" in estimate.basis


def test_the_host_estimate_covers_the_weights_batches_and_the_gpu_runtime() -> None:
    from runner.memory import CUDA_HOST_BYTES, RUNTIME_BYTES, CheckpointSize, host_memory, samples_in_flight

    seven_b = CheckpointSize(file_bytes=14 * 10**9, parameters=7 * 10**9, files=3)
    gpu = host_memory(seven_b, device="cuda", dtype="bfloat16", batch_size=8, pixels=1024 * 512)
    # Loading maps the whole checkpoint; eight panoramas in flight are far less.
    assert gpu.memory_bytes == RUNTIME_BYTES + CUDA_HOST_BYTES + seven_b.file_bytes
    many = host_memory(seven_b, device="cuda", dtype="bfloat16", batch_size=128, pixels=1792 * 896)
    decoded, prepared = samples_in_flight(128, 2)
    assert (decoded, prepared) == (128 * 7, 128 * 3)  # runner.loop: 4 + 3 batches of images, 3 of tensors
    assert many.memory_bytes > gpu.memory_bytes and dict(many.parts)["batches in flight"] > seven_b.file_bytes
    cpu = host_memory(seven_b, device="cpu", dtype="float32", batch_size=1, pixels=1024 * 512)
    assert dict(cpu.parts)["weights in float32"] == 4 * seven_b.parameters  # on the CPU the weights stay in RAM
    unknown = host_memory(None, device="cuda", dtype="bfloat16", batch_size=1, pixels=1)
    assert unknown.memory_bytes < gpu.memory_bytes


# --- Slurm: what sbatch gets ---------------------------------------------------------------------------------------


def test_a_steps_own_options_replace_every_jobs_options() -> None:
    general = parse_slurm_args(["mem=64G", "partition=gpu", "time=60", "cpus-per-task=4"])
    assert step_args(general, parse_slurm_args(["mem-per-cpu=2G", "partition=cpu"])) == (
        SlurmArg("time", "60"),
        SlurmArg("cpus-per-task", "4"),
        SlurmArg("mem-per-cpu", "2G"),  # --mem and --mem-per-cpu together: sbatch refuses the job
        SlurmArg("partition", "cpu"),
    )
    assert step_args(general, ()) == general


def test_sbatch_gets_the_estimate_unless_the_user_names_memory_or_cpus(tmp_path: Path) -> None:
    from orchestrator.resources import StepResources
    from orchestrator.slurm_engine import resource_request

    estimate = StepResources(11 * GIB + 1, 2, "11.0 GiB (...)")
    memory, cpus, record = resource_request((SlurmArg("partition", "cpu"),), estimate, estimate.cpus)
    assert (memory, cpus) == ("12288M", 2) and record["memory"] == "--mem=12288M" and record["source"] == "estimate"
    memory, cpus, record = resource_request(parse_slurm_args(["mem=200M", "cpus-per-task=1"]), estimate, 2)
    assert (memory, cpus, record["memory"], record["cpus"]) == (None, None, "--mem=200M", "--cpus-per-task=1")
    spec = SlurmJobSpec(name="scoring", comment="c", script="true", cpus_per_task=2, memory="12288M")
    argv = SlurmBackend(tmp_path, environ={"PATH": "/usr/bin"}).sbatch_argv(spec, tmp_path / "s.sbatch")
    assert "--mem=12288M" in argv and "--cpus-per-task=2" in argv
    with pytest.raises(ValueError, match="not an sbatch --mem value"):
        SlurmJobSpec(name="scoring", comment="c", script="true", memory="12 GB")


def test_a_memory_kill_reads_as_out_of_memory_with_the_figure_and_the_option(tmp_path: Path) -> None:
    from orchestrator.slurm_engine import failure_reason

    log = tmp_path / "scoring.slurm.log"
    # As slurmstepd (Slurm 22.05, jobacct_gather/linux with OverMemoryKill) wrote it on the test cluster.
    log.write_text(
        "[slurm] job 2 on vm CUDA_VISIBLE_DEVICES=\n"
        "tokenizing 52 distinct texts (PTB, one JVM)\n"
        "slurmstepd-vm: error: StepId=2.batch exceeded memory limit (644550656 > 209715200), being killed\n"
        "slurmstepd-vm: error: *** JOB 2 ON vm CANCELLED AT 2026-12-03T09:51:18 ***\n"
    )
    killed = TaskState("2", None, "FAILED", exit_code=0, signal=9, reason="JobLaunchFailure", node="vm")
    request = {"memory": "--mem=200M", "cpus": 2}
    message = failure_reason(killed, log, request, "--slurm-scoring-arg")
    assert message == (
        "out of memory: killed at 0.60 GiB, over its limit of 0.20 GiB; it asked for --mem=200M; "
        "ask for more with --slurm-scoring-arg mem=1G"
    )
    cgroup = TaskState("3", 1, "OUT_OF_MEMORY", exit_code=0, signal=9)
    shard = failure_reason(cgroup, tmp_path / "absent.log", {"memory": "--mem=6144M"}, "--slurm-runner-arg", True)
    assert (
        shard
        == "shard 1: out of memory: killed; it asked for --mem=6144M; ask for more with --slurm-runner-arg mem=12G"
    )
    plain = TaskState("4", None, "FAILED", exit_code=1)
    # A rerun appends to the same log: the earlier run's kill is not this run's reason.
    with open(log, "a") as handle:
        handle.write("[slurm] job 4 on vm CUDA_VISIBLE_DEVICES=\nTraceback ...\nValueError: no\n")
    assert failure_reason(plain, log, request, "--slurm-scoring-arg") == "exited with code 1"


# --- docker --memory auto ------------------------------------------------------------------------------------------


class _Containers:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    def create(self, image: str, **options: Any) -> object:
        self.created.append(options)
        return object()


class _Client:
    def __init__(self) -> None:
        self.containers = _Containers()


def _docker_engine(memory: str | None, plan: Any) -> Any:
    from orchestrator.docker_engine import DockerEngine

    engine = DockerEngine(client=_Client(), user="1000:1000", memory=memory)  # type: ignore[arg-type]
    engine._plan = plan  # what preflight() records (the images it checks are not needed here)
    return engine


def test_docker_memory_auto_gives_each_container_its_steps_figure(tiny_checkpoint, make_panorama_data, tmp_path):
    from orchestrator.engines import Task
    from orchestrator.plan import GpuSelection
    from orchestrator.resources import runner_resources, scoring_resources
    from runner.registry import get_model

    data = make_panorama_data(tmp_path / "data", num_images=1)
    root = tmp_path / "models"
    root.mkdir()
    for name in ("llava-1.5-7b", "blip2-opt-2.7b"):
        (root / name).symlink_to(tiny_checkpoint(name))
    options = AblationOptions(models=["llava-1.5-7b", "blip2-opt-2.7b"], data_file=data.data_file,
                              output_dir=tmp_path / "out", model_path_root=root)  # fmt: skip
    plan = build_plan(options)
    engine = _docker_engine("auto", plan)
    tasks = [
        Task("llava-1.5-7b", "runner", "img", [], GpuSelection("none")),
        Task("blip2-opt-2.7b#1", "runner", "img", [], GpuSelection("all")),
        Task("scoring", "scoring", "img", [], GpuSelection("none")),
    ]
    fetch = Task("fetch-llava-1.5-7b", "fetch", "img", [], GpuSelection("none"), network=True)
    assert engine.memory_limit(fetch) is None  # the fetch step only downloads
    for task in tasks:
        engine.create(task)
    limits = [created.get("mem_limit") for created in engine.client.containers.created]
    assert limits == [
        runner_resources(plan, get_model("llava-1.5-7b"), gpu=False).docker_memory,
        runner_resources(plan, get_model("blip2-opt-2.7b"), gpu=True).docker_memory,
        scoring_resources(plan, 2).docker_memory,
    ]
    assert limits[1] != limits[0]  # a GPU runner maps the CUDA libraries too
    assert [c.get("memswap_limit") for c in engine.client.containers.created] == limits  # no swap on top
    assert "--memory (a size instead of auto), e.g. --memory " in engine._out_of_memory(tasks[2])
    fixed = _docker_engine("64g", plan)
    for task in tasks:
        fixed.create(task)
    assert [c.get("mem_limit") for c in fixed.client.containers.created] == ["64g"] * 3
    assert fixed._out_of_memory(tasks[0]) == (
        "out of memory: killed; it asked for --memory 64g; ask for more with --memory 128G"
    )
    with pytest.raises(PlanError, match="--memory 'lots': a size such as 64g"):
        _docker_engine("lots", plan)


def test_the_scoring_step_asks_only_for_the_jvms_of_the_metrics_it_computes() -> None:
    """`--metrics all,-spice` leaves SPICE's JVM out of the scoring job's request; the default asks for it."""
    from types import SimpleNamespace

    from orchestrator.resources import scoring_resources

    def plan(metrics: str | None, max_new_tokens: int = 64, longest_reference_words: int = 70) -> SimpleNamespace:
        return SimpleNamespace(
            num_samples=1211,
            longest_reference_words=longest_reference_words,
            options=SimpleNamespace(metrics=metrics, max_new_tokens=max_new_tokens),
        )

    everything = scoring_resources(plan(None), 8)  # type: ignore[arg-type]
    without_spice = scoring_resources(plan("all,-spice"), 8)  # type: ignore[arg-type]
    assert everything.memory_bytes == scoring_requirements(8, 1211).memory_bytes
    assert without_spice.memory_bytes == scoring_requirements(8, 1211, metrics=("meteor",)).memory_bytes
    assert "SPICE" in everything.basis and "SPICE" not in without_spice.basis
    # SPICE's parser needs memory growing with the square of the longest caption: longer outputs ask for more.
    long_outputs = scoring_resources(plan(None, max_new_tokens=300), 8)  # type: ignore[arg-type]
    long_references = scoring_resources(plan(None, longest_reference_words=300), 8)  # type: ignore[arg-type]
    longer = scoring_requirements(8, 1211, max_caption_tokens=300).memory_bytes
    assert long_outputs.memory_bytes == long_references.memory_bytes == longer > everything.memory_bytes
    assert f"SPICE JVM -Xmx{spice.spice_heap_mb(300, 1)}m" in long_outputs.basis
