"""The Slurm backend (orchestrator/slurm.py) against a REAL single-node Slurm cluster (tests/slurm_cluster.py):
arrays, failures, time limits, dependencies, GPUs, cancelling a run, the results-folder probe, the environment a
job sees, and the job scripts of the three container runtimes. Apptainer and enroot/pyxis cannot be installed
here: their scripts run on the cluster with a recorder in place of `apptainer` / `srun`, which proves the exact
argv bash hands them (quoting, binds, shard arguments, GPUs); what the runtimes then do is not verified here."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_cluster import (
    SlurmTestCluster,
    cluster_processes,
    running_daemons,
    slurm_cluster_fixture,  # noqa: F401  (registers `slurm_cluster`; one cluster however many modules do)
    start_cluster,
    stop_cluster,
)

from orchestrator.engines import EngineError
from orchestrator.plan import PlanError
from orchestrator.slurm import (
    GONE,
    Bind,
    ShardArguments,
    SlurmArg,
    SlurmBackend,
    SlurmJobSpec,
    TaskState,
    container_binds,
    expand_array_indices,
    parse_slurm_arg,
    parse_slurm_args,
    render_command,
    render_job_script,
    tasks_from_scontrol,
    tasks_from_squeue_job,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = Path(__file__).resolve().parent / "slurm_cluster.py"


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def backend(slurm_cluster: SlurmTestCluster, tmp_path: Path) -> SlurmBackend:
    return SlurmBackend(tmp_path / "jobs", environ=slurm_cluster.env, poll_interval=0.25)


def job(run_id: str, name: str, script: str, **options: object) -> SlurmJobSpec:
    return SlurmJobSpec(name=f"{name}-{run_id}", comment=f"vlm-ablation run={run_id}", script=script, **options)  # type: ignore[arg-type]


def squeue_lines(cluster: SlurmTestCluster, *options: str) -> list[str]:
    done = subprocess.run(
        ["squeue", "--noheader", *options], env=cluster.env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line.strip()]


def sbatch_raw(cluster: SlurmTestCluster, *options: str) -> str:
    done = subprocess.run(
        ["sbatch", "--parsable", "--output=/dev/null", *options],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def unreachable_conf(cluster: SlurmTestCluster, folder: Path) -> Path:
    """The cluster's configuration with the controller on a port nobody listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    text = cluster.conf.read_text().replace(f"SlurmctldPort={cluster.controller_port}", f"SlurmctldPort={port}")
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(text + "MessageTimeout=2\n")
    return conf


# --- against the cluster: states ------------------------------------------------------------------------------------


def test_check_names_version_cluster_and_controller(backend: SlurmBackend, slurm_cluster: SlurmTestCluster) -> None:
    version = subprocess.run(
        ["sbatch", "--version"], env=slurm_cluster.env, capture_output=True, text=True
    ).stdout.split()[-1]
    info = backend.check()
    assert (info.version, info.cluster, info.controller) == (version, "vlmtest", slurm_cluster.node)
    assert backend.versions()["slurm"] == version


def test_check_fails_clearly_without_a_cluster(slurm_cluster: SlurmTestCluster, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "slurm.conf"
    with pytest.raises(EngineError, match=re.escape(f"SLURM_CONF={missing} is not a file")):
        SlurmBackend(tmp_path, environ={**slurm_cluster.env, "SLURM_CONF": str(missing)}).check()

    down = unreachable_conf(slurm_cluster, tmp_path / "down")
    started = time.monotonic()
    with pytest.raises(EngineError, match=re.escape(f"controller does not answer (SLURM_CONF={down})") + ".*is DOWN"):
        SlurmBackend(tmp_path, environ={**slurm_cluster.env, "SLURM_CONF": str(down)}).check()
    assert time.monotonic() - started < 20

    empty = tmp_path / "empty-bin"
    empty.mkdir()
    with pytest.raises(EngineError, match="sbatch, squeue, scontrol, scancel not found.*slurm-client"):
        SlurmBackend(tmp_path, environ={**slurm_cluster.env, "PATH": str(empty)}).check()


def test_states_raise_when_the_controller_is_down_instead_of_reporting_gone(
    slurm_cluster: SlurmTestCluster, tmp_path: Path
) -> None:
    # squeue --json exits 0 with an "errors" list when it reaches no controller: that is not "no such job".
    down = unreachable_conf(slurm_cluster, tmp_path / "down")
    backend = SlurmBackend(tmp_path, environ={**slurm_cluster.env, "SLURM_CONF": str(down)}, query_retries=0)
    with pytest.raises(EngineError, match="squeue cannot read the job states.*slurm_load_jobs"):
        backend.states(["1"])


def test_array_of_three_tasks_completes_with_their_outputs(backend: SlurmBackend, run_id: str, tmp_path: Path) -> None:
    outputs = tmp_path / "out"
    outputs.mkdir()
    task = "${SLURM_ARRAY_TASK_ID}"
    script = f'echo "task {task} of ${{SLURM_ARRAY_TASK_COUNT}}" | tee {outputs}/task-{task}'
    job_id = backend.submit(job(run_id, "array", script, array=3))
    seen: list[TaskState] = []
    final = backend.wait([job_id], timeout=60, on_change=seen.append)

    assert sorted(final) == [(job_id, 0), (job_id, 1), (job_id, 2)]
    assert all(task.state == "COMPLETED" and task.exit_code == 0 and task.ok for task in final.values())
    assert {task.node for task in final.values()} == {backend.check().controller}
    for index in range(3):
        assert (outputs / f"task-{index}").read_text() == f"task {index} of 3\n"
        log = (backend.job_dir / f"array-{run_id}-{job_id}_{index}.out").read_text()
        assert f"task {index} of 3" in log and "[slurm] job " in log
    script_file = backend.job_dir / f"array-{run_id}.sbatch"
    assert script_file.read_text().startswith("#!/bin/bash\n# array-")
    assert "set -euo pipefail\n" in script_file.read_text()
    # Every task was reported before it ended too (pending or running), each under its own index.
    assert {task.array_index for task in seen if not task.finished} <= {0, 1, 2}


def test_a_failing_task_is_failed_with_its_exit_code_while_its_siblings_complete(
    backend: SlurmBackend, run_id: str
) -> None:
    job_id = backend.submit(job(run_id, "fail", '[[ "${SLURM_ARRAY_TASK_ID}" != 1 ]] || exit 7', array=3))
    final = backend.wait([job_id], timeout=60)

    failed = final[(job_id, 1)]
    assert (failed.state, failed.exit_code, failed.reason, failed.ok) == ("FAILED", 7, "NonZeroExitCode", False)
    assert failed.describe().startswith(f"Slurm job {job_id}_1 failed with exit code 7 on ")
    for index in (0, 2):
        assert (final[(job_id, index)].state, final[(job_id, index)].exit_code) == ("COMPLETED", 0)
    # scontrol (the fallback for a job squeue no longer lists) reads the same.
    shown = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], env=backend.environ, capture_output=True, text=True
    ).stdout
    by_scontrol = {task.key: task for task in tasks_from_scontrol(shown)}
    assert by_scontrol == final


@pytest.mark.slow
def test_a_job_past_its_time_limit_ends_timeout(backend: SlurmBackend, run_id: str) -> None:
    # --time is in minutes and checked about every 30 s: this takes 60-90 s.
    started = time.monotonic()
    job_id = backend.submit(job(run_id, "timeout", "sleep 300", extra_args=parse_slurm_args(["time=1"])))
    final = backend.wait([job_id], timeout=180)
    task = final[(job_id, None)]
    assert task.state == "TIMEOUT" and not task.ok
    assert "ran past its time limit" in task.describe()
    assert 55 < time.monotonic() - started < 180


def test_afterany_dependency_starts_after_a_failed_predecessor(
    backend: SlurmBackend, run_id: str, tmp_path: Path
) -> None:
    first = backend.submit(job(run_id, "first", f"sleep 2; date +%s.%N > {tmp_path}/first-end; exit 5"))
    second = backend.submit(
        job(run_id, "second", f"date +%s.%N > {tmp_path}/second-start", dependency_afterany=(first,))
    )
    seen: list[TaskState] = []
    final = backend.wait([first, second], timeout=60, on_change=seen.append)

    assert (final[(first, None)].state, final[(first, None)].exit_code) == ("FAILED", 5)
    assert final[(second, None)].ok
    assert float((tmp_path / "second-start").read_text()) >= float((tmp_path / "first-end").read_text())
    assert any(task.job_id == second and task.reason == "Dependency" for task in seen)


def test_two_one_gpu_tasks_get_different_cuda_visible_devices(
    backend: SlurmBackend, run_id: str, tmp_path: Path
) -> None:
    # Each task waits for its sibling's file: both run at once, so each holds its own GPU.
    script = (
        f'echo "${{CUDA_VISIBLE_DEVICES}}" > {tmp_path}/gpu-${{SLURM_ARRAY_TASK_ID}}\n'
        f"for _ in $(seq 100); do [[ -e {tmp_path}/gpu-$((1 - SLURM_ARRAY_TASK_ID)) ]] && exit 0; sleep 0.2; done\n"
        "exit 9"
    )
    job_id = backend.submit(job(run_id, "gpus", script, array=2, gpus_per_task=1))
    final = backend.wait([job_id], timeout=60)
    assert all(task.ok for task in final.values()), [task.describe() for task in final.values()]
    devices = sorted((tmp_path / f"gpu-{index}").read_text().strip() for index in range(2))
    assert devices == ["0", "1"]


def test_cancel_run_leaves_nothing_of_the_run_in_squeue(
    backend: SlurmBackend, slurm_cluster: SlurmTestCluster, run_id: str
) -> None:
    comment = f"vlm-ablation run={run_id}"
    array = backend.submit(job(run_id, "shards", "sleep 300", array=3))
    scoring = backend.submit(job(run_id, "scoring", "sleep 300", dependency_afterany=(array,)))
    # Submitted behind the backend's back (as if sbatch returned just as Ctrl-C came): found by its comment.
    unrecorded = sbatch_raw(slurm_cluster, f"--comment={comment}", "--job-name=late", "--wrap=sleep 300")
    other = sbatch_raw(slurm_cluster, f"--comment=vlm-ablation run={run_id}x", "--wrap=sleep 300")
    try:
        assert len(squeue_lines(slurm_cluster, "--format=%i|%k")) == 4  # the pending array is one line
        cancelled = backend.cancel_run(run_id, timeout=60)
        assert cancelled == sorted([array, scoring, unrecorded], key=int)
        remaining = [line.split("|") for line in squeue_lines(slurm_cluster, "--format=%A|%k|%T")]
        assert [row for row in remaining if row[1] == comment] == []
        assert [row[0] for row in remaining] == [other]  # another run's job is untouched
        everything = backend.states([array, scoring, unrecorded])
        assert {task.state for task in everything.values()} == {"CANCELLED"}
        assert len(everything) == 5
        with pytest.raises(EngineError, match=f"run {run_id} was cancelled"):
            backend.submit(job(run_id, "after", "true"))
    finally:
        backend.cancel([other])


def test_states_of_a_job_unknown_to_the_controller_is_gone(backend: SlurmBackend) -> None:
    final = backend.states(["987654321"])
    assert list(final) == [("987654321", None)]
    assert final[("987654321", None)].state == GONE and final[("987654321", None)].finished
    assert "MinJobAge" in final[("987654321", None)].describe()


def test_a_purged_array_is_gone_for_each_task_it_had(tmp_path_factory: pytest.TempPathFactory) -> None:
    # A cluster of its own that forgets ended jobs after 2 s (purged ~6 s after the end).
    folder = tmp_path_factory.mktemp("slurm-short")
    cluster = start_cluster(folder, gpus=0, min_job_age=2)
    try:
        backend = SlurmBackend(folder / "jobs", environ=cluster.env, poll_interval=0.25)
        job_id = backend.submit(SlurmJobSpec(name="short", comment="vlm-ablation run=short", script="true", array=2))
        assert all(task.ok for task in backend.wait([job_id], timeout=60).values())
        deadline = time.monotonic() + 60
        while any(line.split("_")[0] == job_id for line in squeue_lines(cluster, "--states=all", "--format=%i")):
            assert time.monotonic() < deadline, "the controller kept the job record for a minute"
            time.sleep(0.5)
        final = backend.states([job_id])
        assert sorted(final) == [(job_id, 0), (job_id, 1)]
        assert {task.state for task in final.values()} == {GONE}
    finally:
        stop_cluster(folder)
    assert cluster_processes(folder) == []


def test_cli_stop_ends_daemons_and_running_jobs(tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("slurm-cli")
    python = [sys.executable, str(CLUSTER_SCRIPT)]
    started = subprocess.run([*python, "start", str(folder), "--gpus", "1"], capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stderr
        assert f"export SLURM_CONF={folder.resolve()}/etc/slurm.conf" in started.stdout
        env = {**os.environ, "SLURM_CONF": str(folder.resolve() / "etc" / "slurm.conf")}
        subprocess.run(
            ["sbatch", "--output=/dev/null", "--gres=gpu:1", "--wrap=sleep 300"], env=env, check=True, timeout=30
        )
        deadline = time.monotonic() + 30
        while "sleep 300" not in " ".join(_cmdlines(cluster_processes(folder))):
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.2)
        assert set(running_daemons(folder)) == {"munged", "slurmctld", "slurmd"}
    finally:
        stopped = subprocess.run([*python, "stop", str(folder)], capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert cluster_processes(folder) == [] and running_daemons(folder) == {}


def test_fixture_skips_without_slurm_and_fails_when_ci_requires_it(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(
        "from slurm_cluster import slurm_cluster_fixture  # noqa: F401\n\n\n"
        "def test_uses_the_cluster(slurm_cluster):\n    pass\n"
    )
    env = {**os.environ, "PATH": str(tmp_path), "PYTHONPATH": str(CLUSTER_SCRIPT.parent)}
    env.pop("VLM_ABLATION_REQUIRE_SLURM", None)
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_inner.py"]
    skipped = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout
    assert re.search(r"SKIPPED .*Slurm/munge binaries not found: .*sbatch, squeue, scontrol, scancel", skipped.stdout)
    required = subprocess.run(
        command, cwd=tmp_path, env={**env, "VLM_ABLATION_REQUIRE_SLURM": "1"}, capture_output=True, text=True
    )
    assert required.returncode == 1 and "1 error" in required.stdout, required.stdout
    assert "VLM_ABLATION_REQUIRE_SLURM=1 but Slurm/munge binaries not found" in required.stdout


def _cmdlines(pids: list[int]) -> list[str]:
    lines = []
    for pid in pids:
        try:
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return lines


# --- the results folder ---------------------------------------------------------------------------------------------


def test_wait_writable_passes_for_a_shared_folder_and_leaves_no_probe(backend: SlurmBackend, tmp_path: Path) -> None:
    results = tmp_path / "results dir"
    results.mkdir()
    backend.wait_writable(results, timeout=60)
    assert list(results.iterdir()) == []


def test_wait_writable_fails_clearly_for_a_folder_the_nodes_cannot_see(backend: SlurmBackend, tmp_path: Path) -> None:
    # The same path missing on the node is what a folder local to the submit host looks like from a compute node.
    with pytest.raises(EngineError, match=r"results folder .*/not-shared does not exist on \S+: the compute nodes"):
        backend.wait_writable(tmp_path / "not-shared", timeout=60)


def test_wait_writable_fails_clearly_for_a_folder_the_job_cannot_write(backend: SlurmBackend, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i (an immutable folder even root cannot write) is not supported on this filesystem")
    try:
        with pytest.raises(EngineError, match=r"\S+ cannot write the results folder " + re.escape(str(locked))):
            backend.wait_writable(locked, timeout=60)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)


def test_wait_writable_gives_up_after_its_time_limit_and_cancels_the_probe(
    backend: SlurmBackend, slurm_cluster: SlurmTestCluster, tmp_path: Path
) -> None:
    # A probe that cannot start in time (here: it may begin only in an hour) fails the run and is not left behind.
    with pytest.raises(EngineError, match=r"did not finish within 3 s .*pending \(BeginTime\).*nothing else was"):
        backend.wait_writable(tmp_path, timeout=3, extra_args=parse_slurm_args(["begin=now+1hour"]))
    assert [line for line in squeue_lines(slurm_cluster, "--format=%j") if line.startswith("write-probe-")] == []


# --- what a job sees ------------------------------------------------------------------------------------------------


def test_no_token_reaches_a_job_or_its_script_and_the_setup_file_is_sourced(
    slurm_cluster: SlurmTestCluster, run_id: str, tmp_path: Path
) -> None:
    secret = f"hf_{uuid.uuid4().hex}"
    setup = tmp_path / "setup.sh"
    # A setup file like a module or conda script: reads an unset variable, and (wrongly) exports a token.
    setup.write_text(f'export FROM_SETUP="yes${{NOT_SET_ANYWHERE}}"\nexport HF_TOKEN={secret}x\n')
    environ = {**slurm_cluster.env, "HF_TOKEN": secret, "HUGGING_FACE_HUB_TOKEN": secret, "SOME_API_KEY": secret}
    backend = SlurmBackend(tmp_path / "jobs", environ=environ, poll_interval=0.25)
    assert not {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "SOME_API_KEY"} & set(backend.environ)
    job_id = backend.submit(job(run_id, "env", f"env > {tmp_path}/env.txt", setup=setup))
    assert backend.wait([job_id], timeout=60)[(job_id, None)].ok

    seen = dict(line.split("=", 1) for line in (tmp_path / "env.txt").read_text().splitlines() if "=" in line)
    assert secret not in (tmp_path / "env.txt").read_text()
    assert secret not in (backend.job_dir / f"env-{run_id}.sbatch").read_text()
    assert seen["FROM_SETUP"] == "yes"
    assert (seen["HF_HUB_OFFLINE"], seen["TRANSFORMERS_OFFLINE"], seen["PYTHONUNBUFFERED"]) == ("1", "1", "1")
    assert seen["PATH"] == environ["PATH"]
    with pytest.raises(ValueError, match="HF_TOKEN looks like a credential"):
        job(run_id, "token", "true", environment={"HF_TOKEN": secret})


def test_none_runtime_runs_the_runner_on_a_tiny_checkpoint(backend: SlurmBackend, run_id: str, tmp_path: Path) -> None:
    model = "blip2-opt-2.7b"
    checkpoint, results = tmp_path / "tiny models" / model, tmp_path / "results dir"
    build = render_command(
        "none", ["--model", model, "--out", str(checkpoint)], module="runner.tiny", python=sys.executable
    )
    argv = ["--model", model, "--data", str(REPO_ROOT / "data/sample/sample.csv"), "--output-dir", str(results)]
    argv += ["--model-path", str(checkpoint), "--device", "cpu", "--limit", "2", "--no-progress"]
    run = render_command("none", argv, python=sys.executable, environment={"OMP_NUM_THREADS": "1"})
    job_id = backend.submit(job(run_id, "runner", f"{build}\n{run}", workdir=REPO_ROOT))
    task = backend.wait([job_id], timeout=170)[(job_id, None)]
    log = (backend.job_dir / f"runner-{run_id}-{job_id}.out").read_text()
    assert task.ok, log[-3000:]
    result = json.loads(next(line for line in log.splitlines() if line.startswith("RUNNER_RESULT "))[14:])
    assert (result["status"], result["num_written"], result["num_errors"]) == ("completed", 2, 0)
    assert len((results / f"{model}_predictions.jsonl").read_text().splitlines()) == 2


# --- container runtimes: the scripts they produce -------------------------------------------------------------------

RUNNER_ARGV = ["--model", "llava-1.5-7b", "--data", "/data/test set.csv", "--output-dir", "/results"]


def _mount_folders(root: Path) -> dict[str, Path]:
    folders = {name: root / f"{name} dir" for name in ("data", "results", "models", "cache")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    return folders


def _binds(folders: dict[str, Path]) -> list[Bind]:
    return container_binds(folders["data"], folders["results"], model_root=folders["models"], hf_cache=folders["cache"])


def _recorder(folder: Path, command: str, records: Path) -> Path:
    """An executable named `command` that writes its argv and environment, per array task, into `records`."""
    folder.mkdir(parents=True, exist_ok=True)
    records.mkdir(parents=True, exist_ok=True)
    path = folder / command
    path.write_text(
        "#!/bin/bash\n"
        f'out={shlex.quote(str(records))}/"{command}-${{SLURM_ARRAY_TASK_ID}}"\n'
        'printf \'%s\\0\' "$@" > "$out.argv"\n'
        'env -0 > "$out.env"\n'
    )
    path.chmod(0o755)
    setup = folder / "setup.sh"
    setup.write_text(f"export PATH={shlex.quote(str(folder))}:$PATH\n")
    return setup


def _recorded(records: Path, command: str, index: int) -> tuple[list[str], dict[str, str]]:
    argv = (records / f"{command}-{index}.argv").read_text().split("\0")[:-1]
    pairs = (records / f"{command}-{index}.env").read_text().split("\0")
    return argv, dict(pair.split("=", 1) for pair in pairs if "=" in pair)


def test_rendered_apptainer_and_pyxis_commands_golden(tmp_path: Path) -> None:
    folders = {name: Path(f"/srv/{name} dir") for name in ("data", "results", "models", "cache")}
    binds = _binds(folders)
    shard = ShardArguments(4)
    apptainer = render_command(
        "apptainer", RUNNER_ARGV, image="/images/llava 1.sif", binds=binds, gpus=True, shard=shard
    )
    assert apptainer == (
        "apptainer exec --containall --no-home --pwd /tmp --nv --env "
        '"CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES}" '
        "--bind '/srv/data dir:/data:ro' --bind '/srv/results dir:/results' --bind '/srv/models dir:/models:ro' "
        "--bind '/srv/cache dir:/cache/huggingface:ro' "
        "--env HF_HUB_OFFLINE=1 --env TRANSFORMERS_OFFLINE=1 --env PYTHONUNBUFFERED=1 "
        "'/images/llava 1.sif' python -m runner --model llava-1.5-7b --data '/data/test set.csv' "
        '--output-dir /results --shard "${SLURM_ARRAY_TASK_ID}"/4'
    )
    pyxis = render_command("pyxis", RUNNER_ARGV, image="/images/llava 1.sqsh", binds=binds, gpus=True, shard=shard)
    assert pyxis == (
        "env HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 srun --ntasks=1 --export=ALL "
        "'--container-image=/images/llava 1.sqsh' "
        "'--container-mounts=/srv/data dir:/data:ro,/srv/results dir:/results,/srv/models dir:/models:ro,"
        "/srv/cache dir:/cache/huggingface:ro' "
        "--no-container-mount-home --container-workdir=/tmp --no-container-entrypoint "
        "python -m runner --model llava-1.5-7b --data '/data/test set.csv' --output-dir /results "
        '--shard "${SLURM_ARRAY_TASK_ID}"/4'
    )
    none = render_command("none", RUNNER_ARGV, python="/opt/venv/bin/python", shard=shard)
    assert none == (
        "env HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 /opt/venv/bin/python -m runner "
        "--model llava-1.5-7b --data '/data/test set.csv' --output-dir /results "
        '--shard "${SLURM_ARRAY_TASK_ID}"/4'
    )
    # Another runner spelling of the shard: a parameter, not code.
    words = ShardArguments(3, ("--shard-index", "{index}", "--num-shards", "{count}")).render()
    assert words == ["--shard-index", '"${SLURM_ARRAY_TASK_ID}"', "--num-shards", "3"]
    # The fetch step writes the cache; inference only reads it.
    assert [bind.spec() for bind in container_binds(Path("/d"), Path("/r"), hf_cache=Path("/c"), kind="scoring")] == [
        "/d:/data:ro",
        "/r:/results",
    ]


def test_rendered_commands_refuse_what_cannot_work() -> None:
    with pytest.raises(PlanError, match="/srv/a,b: a folder mounted into a container cannot contain"):
        render_command("apptainer", [], image="x.sif", binds=[Bind(Path("/srv/a,b"), "/data")])
    with pytest.raises(PlanError, match="the pyxis runtime needs an image"):
        render_command("pyxis", [])
    with pytest.raises(PlanError, match="container runtime 'docker': one of none, apptainer, pyxis"):
        render_command("docker", [])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="HUGGING_FACE_HUB_TOKEN looks like a credential"):
        render_command("none", [], environment={"HUGGING_FACE_HUB_TOKEN": "hf_x"})
    with pytest.raises(ValueError, match="reads SLURM_ARRAY_TASK_ID but the job is not an array"):
        SlurmJobSpec(name="x", comment="c", script=render_command("none", [], shard=ShardArguments(2)))


def test_job_script_preamble_golden(tmp_path: Path) -> None:
    spec = SlurmJobSpec(
        name="llava-run1",
        comment="vlm-ablation run=run1",
        script="body line",
        array=2,
        gpus_per_task=1,
        setup=Path("/home/me/setup vlm.sh"),
        environment={"HF_HOME": "/cache dir"},
    )
    assert render_job_script(spec) == (
        "#!/bin/bash\n"
        "# llava-run1: written by vlm-ablation's slurm engine (vlm-ablation run=run1)\n"
        "set -euo pipefail\n"
        "# Module and conda scripts read unset variables: source the setup file with nounset off.\n"
        "set +u\n"
        "source '/home/me/setup vlm.sh'\n"
        "set -u\n"
        "unset HF_TOKEN HUGGING_FACE_HUB_TOKEN\n"
        "export HF_HUB_OFFLINE=1\n"
        "export TRANSFORMERS_OFFLINE=1\n"
        "export PYTHONUNBUFFERED=1\n"
        "export HF_HOME='/cache dir'\n"
        'echo "[slurm] job ${SLURM_JOB_ID} task ${SLURM_ARRAY_TASK_ID} on $(hostname)'
        ' CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-}" >&2\n'
        'if [[ -z "${CUDA_VISIBLE_DEVICES:-}" ]]; then echo "[slurm] this job asked for GPUs but Slurm set no '
        'CUDA_VISIBLE_DEVICES (gres.conf without File=?)" >&2; exit 3; fi\n'
        "body line\n"
    )


def test_sbatch_argv_of_a_shard_array(tmp_path: Path) -> None:
    backend = SlurmBackend(
        tmp_path / "jobs", environ={"PATH": "/usr/bin", "HOME": "/home/me", "HF_TOKEN": "x", "OMP_NUM_THREADS": "4"}
    )
    spec = SlurmJobSpec(
        name="llava-run1",
        comment="vlm-ablation run=run1",
        script="true",
        array=4,
        max_parallel=2,
        gpus_per_task=1,
        gpu_type="h100",
        cpus_per_task=8,
        extra_args=parse_slurm_args(["partition=gpu", "time=02:00:00", "--qos=high", "exclusive"]),
        dependency_afterany=("11", "12"),
        output="/logs dir/%x-%A_%a.out",
        workdir=Path("/work dir"),
    )
    assert backend.sbatch_argv(spec, Path("/jobs/llava-run1.sbatch")) == [
        "sbatch",
        "--parsable",
        "--job-name=llava-run1",
        "--comment=vlm-ablation run=run1",
        "--output=/logs dir/%x-%A_%a.out",
        "--chdir=/work dir",
        "--open-mode=append",
        "--kill-on-invalid-dep=yes",
        "--export=PATH,HOME,OMP_NUM_THREADS",  # never the token
        "--array=0-3%2",
        "--gres=gpu:h100:1",
        "--cpus-per-task=8",
        "--dependency=afterany:11:12",
        "--partition=gpu",
        "--time=02:00:00",
        "--qos=high",
        "--exclusive",
        "/jobs/llava-run1.sbatch",
    ]


def test_apptainer_job_hands_the_rendered_argv_to_apptainer(backend: SlurmBackend, run_id: str, tmp_path: Path) -> None:
    folders = _mount_folders(tmp_path / "mounts")
    records = tmp_path / "records"
    setup = _recorder(tmp_path / "bin", "apptainer", records)
    image = tmp_path / "images dir" / "llava.sif"
    command = render_command(
        "apptainer",
        RUNNER_ARGV,
        image=str(image),
        binds=_binds(folders),
        gpus=True,
        environment={"HF_HOME": "/cache/huggingface"},
        shard=ShardArguments(2),
    )
    job_id = backend.submit(job(run_id, "apptainer", command, array=2, gpus_per_task=1, setup=setup))
    final = backend.wait([job_id], timeout=60)
    assert all(task.ok for task in final.values()), [task.describe() for task in final.values()]
    for index in range(2):
        argv, env = _recorded(records, "apptainer", index)
        assert env["CUDA_VISIBLE_DEVICES"] in ("0", "1")
        assert argv == [
            "exec",
            "--containall",
            "--no-home",
            "--pwd",
            "/tmp",
            "--nv",
            "--env",
            f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}",
            "--bind",
            f"{folders['data']}:/data:ro",
            "--bind",
            f"{folders['results']}:/results",
            "--bind",
            f"{folders['models']}:/models:ro",
            "--bind",
            f"{folders['cache']}:/cache/huggingface:ro",
            "--env",
            "HF_HUB_OFFLINE=1",
            "--env",
            "TRANSFORMERS_OFFLINE=1",
            "--env",
            "PYTHONUNBUFFERED=1",
            "--env",
            "HF_HOME=/cache/huggingface",
            str(image),
            "python",
            "-m",
            "runner",
            *RUNNER_ARGV,
            "--shard",
            f"{index}/2",
        ]


def test_pyxis_job_hands_the_rendered_argv_to_srun(backend: SlurmBackend, run_id: str, tmp_path: Path) -> None:
    folders = _mount_folders(tmp_path / "mounts")
    records = tmp_path / "records"
    setup = _recorder(tmp_path / "bin", "srun", records)
    image = "nvcr.io#nvidia/pytorch:24.05-py3"
    command = render_command(
        "pyxis", RUNNER_ARGV, image=image, binds=_binds(folders), gpus=True, shard=ShardArguments(2)
    )
    job_id = backend.submit(job(run_id, "pyxis", command, array=2, gpus_per_task=1, setup=setup))
    final = backend.wait([job_id], timeout=60)
    assert all(task.ok for task in final.values()), [task.describe() for task in final.values()]
    mounts = ",".join(
        [
            f"{folders['data']}:/data:ro",
            f"{folders['results']}:/results",
            f"{folders['models']}:/models:ro",
            f"{folders['cache']}:/cache/huggingface:ro",
        ]
    )
    for index in range(2):
        argv, env = _recorded(records, "srun", index)
        assert argv == [
            "--ntasks=1",
            "--export=ALL",
            f"--container-image={image}",
            f"--container-mounts={mounts}",
            "--no-container-mount-home",
            "--container-workdir=/tmp",
            "--no-container-entrypoint",
            "python",
            "-m",
            "runner",
            *RUNNER_ARGV,
            "--shard",
            f"{index}/2",
        ]
        assert (env["HF_HUB_OFFLINE"], env["TRANSFORMERS_OFFLINE"]) == ("1", "1")
        assert env["CUDA_VISIBLE_DEVICES"] in ("0", "1") and "HF_TOKEN" not in env


# --- user options and the JSON shapes -------------------------------------------------------------------------------


def test_slurm_args_are_validated() -> None:
    assert parse_slurm_arg("partition=gpu") == SlurmArg("partition", "gpu")
    assert parse_slurm_arg("--mem-per-gpu=40G").argv() == "--mem-per-gpu=40G"
    assert parse_slurm_arg("exclusive").argv() == "--exclusive"
    assert parse_slurm_arg("constraint=a100|h100").argv() == "--constraint=a100|h100"
    for text, message in [
        ("array=0-3", "--array is set by the slurm engine"),
        ("dep=afterok:1", "--dependency is set by the slurm engine"),  # sbatch takes unambiguous prefixes
        ("out=/tmp/x", "--output is set by the slurm engine"),
        ("parsable", "--parsable is set by the slurm engine"),
        ("gres=gpu:8", "--gres is set by the slurm engine"),
        ("export=ALL", "--export is set by the slurm engine"),
        ("Partition=gpu", "NAME must be an sbatch long option"),
        ("p=gpu", "NAME must be an sbatch long option"),
        ("time;rm -rf /=1", "NAME must be an sbatch long option"),
        ("time=1\n#SBATCH --array=1", "the value must be non-empty and on one line"),
        ("time=", "the value must be non-empty"),
    ]:
        with pytest.raises(PlanError, match=message):
            parse_slurm_arg(text)


def test_squeue_records_of_both_json_shapes_read_the_same() -> None:
    # As Slurm 22.05's squeue --json printed them here (a failed task, a cancelled pending rest of an array).
    old_task = {"job_id": 4, "array_job_id": 1, "array_task_id": 1, "array_task_string": "", "job_state": "FAILED"}
    old_task |= {"state_reason": "NonZeroExitCode", "exit_code": 1792, "nodes": "vm"}
    old_rest = {"job_id": 97, "array_job_id": 97, "array_task_id": None, "array_task_string": "2-3,7"}
    old_rest |= {"job_state": "CANCELLED", "state_reason": "None", "exit_code": 15, "nodes": ""}
    # Slurm 23.02+: states are lists, numbers are {"set", "infinite", "number"}, exit codes are objects.
    new_task = {
        "job_id": 4,
        "array_job_id": {"set": True, "infinite": False, "number": 1},
        "array_task_id": {"set": True, "infinite": False, "number": 1},
        "job_state": ["FAILED"],
        "state_reason": "NonZeroExitCode",
        "exit_code": {
            "status": ["EXITED"],
            "return_code": {"set": True, "number": 7},
            "signal": {"id": {"set": False}},
        },
        "nodes": "vm",
    }
    new_completing = {"job_id": 8, "array_job_id": {"set": True, "number": 0}, "job_state": ["COMPLETED", "COMPLETING"]}
    failed = TaskState("1", 1, "FAILED", exit_code=7, reason="NonZeroExitCode", node="vm")
    assert tasks_from_squeue_job(old_task) == [failed] == tasks_from_squeue_job(new_task)
    assert tasks_from_squeue_job(old_rest) == [
        TaskState("97", index, "CANCELLED", exit_code=0, signal=15) for index in (2, 3, 7)
    ]
    assert tasks_from_squeue_job(new_completing)[0].state == "COMPLETING"
    assert not tasks_from_squeue_job(new_completing)[0].finished
    assert expand_array_indices("1-5,8,10-14:2%1") == [1, 2, 3, 4, 5, 8, 10, 12, 14]


@pytest.fixture(autouse=True)
def _no_jobs_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that used the session cluster leaves none of its run's jobs pending or running (they would hold the
    node's CPUs for the next tests): cancelled here, and reported as an error of that test."""
    uses_cluster = "slurm_cluster" in request.fixturenames and "run_id" in request.fixturenames
    cluster = request.getfixturevalue("slurm_cluster") if uses_cluster else None
    run = request.getfixturevalue("run_id") if uses_cluster else None
    yield
    if cluster is None:
        return
    left = [line for line in squeue_lines(cluster, "--format=%A|%k") if line.endswith(f"run={run}")]
    if left:
        subprocess.run(["scancel", *(line.split("|")[0] for line in left)], env=cluster.env, timeout=30)
    assert left == [], f"jobs of the test left in squeue: {left}"
