"""The orchestrator on a REAL Docker engine (DOCKER_HOST), with the blip2, llava and scoring images built FROM the
local base (.ci/run does that). Skipped with a reason where no engine answers; required in CI."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from _orchestrator_helpers import (
    CONTAINER_GID,
    CONTAINER_UID,
    CONTAINER_USER_ARGS,
    FAMILY_IMAGES,
    REPO_ROOT,
    SCORING_IMAGE,
    break_checkpoint,
    docker_client,
    managed_containers,
    manifest,
    model_root,
    orchestrator_command,
    orchestrator_env,
    predictions,
    readable_by_all,
    run_orchestrator,
    statuses,
    writable_results,
)

from contract import METRICS_JSON, SUMMARY_JSON, MetricsFile, Summary, read_json

# Every Docker test is in this file: `make test` (pytest -n 2 --dist loadfile) runs them on ONE worker, since they
# count the engine's containers.
pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def client():
    engine = docker_client()
    from _orchestrator_helpers import require_images

    require_images(engine, [*FAMILY_IMAGES.values(), SCORING_IMAGE])
    yield engine
    engine.close()


def _data(make_panorama_data, folder: Path, **kwargs):
    data = make_panorama_data(folder, **kwargs)
    readable_by_all(folder)
    return data


def _expected_owner() -> int:
    return CONTAINER_UID


@pytest.fixture(scope="module")
def docker_ablation(client, tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint):
    """Three models in containers: two finish, one (broken checkpoint) fails, then one scoring container."""
    from conftest import build_panorama_data

    tmp = tmp_path_factory.mktemp("docker_ablation")
    data = build_panorama_data(tmp / "data", num_images=3)
    readable_by_all(tmp / "data")
    models = ["blip2-opt-2.7b", "blip2-flan-t5-xl", "llava-1.5-7b"]
    root = model_root(tmp, tiny_checkpoint, models)
    break_checkpoint(root / "blip2-flan-t5-xl")
    out = writable_results(tmp / "results")
    run = run_orchestrator(
        "ablation", "--engine", "docker", "--gpus", "none", "--models", ",".join(models),
        "--data", data.data_file, "--output-dir", out, "--model-path-root", root,
        "--batch-size", "2", "--max-new-tokens", "6", "--timeout", "300", "--metrics", "all", *CONTAINER_USER_ARGS,
    )  # fmt: skip
    return data, out, run


def test_ablation_in_containers_with_one_failing_model(client, docker_ablation) -> None:
    data, out, run = docker_ablation
    assert run.returncode == 1, run.stdout[-4000:] + run.stderr
    assert statuses(out) == {"blip2-opt-2.7b": "completed", "blip2-flan-t5-xl": "failed", "llava-1.5-7b": "completed"}

    for model in ("blip2-opt-2.7b", "llava-1.5-7b"):
        records = predictions(out, model)
        assert len(records) == len({r.sample_id for r in records}) == data.num_samples == 6
        metrics = read_json(out / METRICS_JSON.format(model=model), MetricsFile)
        assert metrics.model_name == model and metrics.num_samples == 6
        # SPICE computed inside the scoring container (its jars are in the image; the container has no network).
        assert metrics.metrics["spice"] is not None and 0.0 <= metrics.metrics["spice"] <= 1.0
        assert "spice" not in metrics.unavailable
        # Written by the container as the host user (uid 1000 when the tests run as root), not as root.
        assert (out / f"{model}_predictions.jsonl").stat().st_uid == _expected_owner()
    summary = read_json(out / SUMMARY_JSON, Summary)
    assert sorted(e.model_name for e in summary.models if not e.human_baseline) == ["blip2-opt-2.7b", "llava-1.5-7b"]
    assert [e.model_name for e in summary.models if e.human_baseline] == ["human-baseline"]  # in the container too
    assert (out / "report.html").is_file()

    recorded = manifest(out)
    assert recorded.engine == "docker"
    by_name = {r.model_name: r for r in recorded.models}
    assert by_name["llava-1.5-7b"].image == FAMILY_IMAGES["llava"]
    assert by_name["llava-1.5-7b"].image_digest == client.images.get(FAMILY_IMAGES["llava"]).id
    assert by_name["blip2-opt-2.7b"].image_digest == client.images.get(FAMILY_IMAGES["blip2"]).id
    assert recorded.scoring_image_digest == client.images.get(SCORING_IMAGE).id
    assert "container exited with code 1" in (by_name["blip2-flan-t5-xl"].message or "")
    assert "[2/3] blip2-flan-t5-xl FAILED: container exited with code 1" in run.stdout
    assert "  completed : 2/3" in run.stdout and "  failed    : 1/3" in run.stdout
    assert managed_containers(client) == []  # every container was removed


def test_reproduce_pins_the_images_by_digest(client, docker_ablation, tmp_path: Path) -> None:
    data, out, _run = docker_ablation
    again = writable_results(tmp_path / "again")
    run = run_orchestrator(
        "reproduce", "--manifest", out / "run_manifest.json", "--output-dir", again, *CONTAINER_USER_ARGS
    )
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr  # the broken checkpoint fails again
    recorded = manifest(again)
    assert recorded.arguments["images"] == {
        "blip2": client.images.get(FAMILY_IMAGES["blip2"]).id,
        "llava": client.images.get(FAMILY_IMAGES["llava"]).id,
        "scoring": client.images.get(SCORING_IMAGE).id,
    }
    assert f"blip2-opt-2.7b: {data.num_samples}/{data.num_samples} predictions identical, 0 different" in run.stdout
    assert f"llava-1.5-7b: {data.num_samples}/{data.num_samples} predictions identical, 0 different" in run.stdout
    assert managed_containers(client) == []


def test_inference_container_is_locked_down(client, tmp_path: Path, tiny_checkpoint, make_panorama_data) -> None:
    """The HostConfig the engine really receives: no network, read-only inputs, no capabilities, non-root."""
    from orchestrator.docker_engine import DockerEngine
    from orchestrator.engines import Task
    from orchestrator.plan import AblationOptions, GpuSelection, build_plan

    data = _data(make_panorama_data, tmp_path / "data", num_images=1)
    root = model_root(tmp_path, tiny_checkpoint, ["llava-1.5-7b"])
    plan = build_plan(
        AblationOptions(
            models=["llava-1.5-7b"],
            data_file=data.data_file,
            output_dir=writable_results(tmp_path / "out"),
            model_path_root=root,
        )
    )
    engine = DockerEngine(client=client, user=CONTAINER_USER_ARGS[1] if CONTAINER_USER_ARGS else None, memory="2g")
    engine.preflight(plan, [FAMILY_IMAGES["llava"]])
    task = Task("llava-1.5-7b", "runner", FAMILY_IMAGES["llava"], ["--help"], GpuSelection("none"))
    container = engine.create(task)
    try:
        host = client.api.inspect_container(container.id)["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert host["CapDrop"] == ["ALL"]
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["ShmSize"] == 2 * 1024**3
        assert host["PidsLimit"] == 4096 and host["Memory"] == host["MemorySwap"] == 2 * 1024**3
        mounts = {m["Target"]: m.get("ReadOnly", False) for m in host["Mounts"]}
        assert mounts == {"/data": True, "/models": True, "/results": False}
        config = client.api.inspect_container(container.id)["Config"]
        assert config["User"] == f"{CONTAINER_UID}:{CONTAINER_GID}"
        assert config["Labels"]["io.vlm-ablation.run-id"] == engine.run_id
    finally:
        engine.stop_all()
    assert managed_containers(client) == []


def test_memory_auto_gives_each_container_its_steps_figure(
    client, tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    """`--memory auto` on the real engine: the runner and scoring containers get their own step's figure as their
    limit (no swap on top), the fetch container none."""
    from orchestrator.docker_engine import DockerEngine
    from orchestrator.engines import Task
    from orchestrator.plan import AblationOptions, GpuSelection, build_plan
    from orchestrator.resources import size_bytes

    data = _data(make_panorama_data, tmp_path / "data", num_images=1)
    root = model_root(tmp_path, tiny_checkpoint, ["llava-1.5-7b"])
    plan = build_plan(
        AblationOptions(
            models=["llava-1.5-7b"],
            data_file=data.data_file,
            output_dir=writable_results(tmp_path / "out"),
            model_path_root=root,
        )
    )
    engine = DockerEngine(client=client, user=CONTAINER_USER_ARGS[1] if CONTAINER_USER_ARGS else None, memory="auto")
    engine.preflight(plan, [FAMILY_IMAGES["llava"], SCORING_IMAGE])
    tasks = [
        Task("llava-1.5-7b", "runner", FAMILY_IMAGES["llava"], ["--help"], GpuSelection("none")),
        Task("scoring", "scoring", SCORING_IMAGE, ["--help"], GpuSelection("none")),
    ]
    try:
        limits = []
        for task in tasks:
            container = engine.create(task)
            host = client.api.inspect_container(container.id)["HostConfig"]
            expected = size_bytes(engine.step_resources(task).docker_memory)
            assert host["Memory"] == host["MemorySwap"] == expected, task.name
            limits.append(expected)
        assert limits[0] != limits[1]  # each step its own figure, not one limit for all
        fetch = Task("llava-1.5-7b", "fetch", FAMILY_IMAGES["llava"], [], GpuSelection("none"), network=True)
        assert engine.memory_limit(fetch) is None
    finally:
        engine.stop_all()
    assert managed_containers(client) == []


def _start(out: Path, data_file: Path, root: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        orchestrator_command(
            "ablation", "--engine", "docker", "--gpus", "none", "--models", "llava-1.5-7b",
            "--data", data_file, "--output-dir", out, "--model-path-root", root, "--batch-size", "1",
            "--max-new-tokens", "48", *CONTAINER_USER_ARGS, *extra,
        ),
        cwd=REPO_ROOT, env=orchestrator_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _wait_for_predictions(process: subprocess.Popen[str], path: Path, count: int, timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().count("\n") if path.exists() else 0
        if lines >= count:
            return lines
        assert process.poll() is None, f"the orchestrator ended early: {process.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, "no predictions appeared in time"
        time.sleep(0.1)


def test_killed_container_is_marked_failed_and_a_rerun_resumes(
    client, tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    data = _data(make_panorama_data, tmp_path / "data", num_images=6, queries=("location", "people", "weather", "sky"))
    root = model_root(tmp_path, tiny_checkpoint, ["llava-1.5-7b"])
    out = writable_results(tmp_path / "results")
    jsonl = out / "llava-1.5-7b_predictions.jsonl"
    process = _start(out, data.data_file, root)
    _wait_for_predictions(process, jsonl, 2)
    running = managed_containers(client)
    assert len(running) == 1 and running[0].labels["io.vlm-ablation.task"] == "llava-1.5-7b"
    running[0].kill()  # as the OOM killer or a crash would
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 1, stdout[-3000:]
    written = len(predictions(out, "llava-1.5-7b"))
    assert 2 <= written < data.num_samples == 24, "the kill must land mid-run"
    assert statuses(out) == {"llava-1.5-7b": "failed"}
    assert "container was killed (exit 137)" in (manifest(out).models[0].message or "")
    assert "no model completed: nothing to score" in stdout

    rerun = run_orchestrator(
        "ablation", "--engine", "docker", "--gpus", "none", "--models", "llava-1.5-7b", "--data", data.data_file,
        "--output-dir", out, "--model-path-root", root, "--batch-size", "1", "--max-new-tokens", "48",
        *CONTAINER_USER_ARGS,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr
    # The runner's own lines are in its log (the console shows progress instead).
    assert f"resuming: {written} sample(s) already in" in (out / "logs" / "llava-1.5-7b.runner.log").read_text()
    ids = [r.sample_id for r in predictions(out, "llava-1.5-7b")]
    assert len(ids) == len(set(ids)) == data.num_samples  # nothing lost, nothing twice
    assert statuses(out) == {"llava-1.5-7b": "completed"}
    assert managed_containers(client) == []


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_removes_every_container(
    client, tmp_path: Path, tiny_checkpoint, make_panorama_data, stop_signal: signal.Signals
) -> None:
    data = _data(make_panorama_data, tmp_path / "data", num_images=6, queries=("location", "people", "weather"))
    root = model_root(tmp_path, tiny_checkpoint, ["llava-1.5-7b"])
    out = writable_results(tmp_path / "results")
    process = _start(out, data.data_file, root)
    _wait_for_predictions(process, out / "llava-1.5-7b_predictions.jsonl", 1)
    assert len(managed_containers(client)) == 1
    process.send_signal(stop_signal)
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 130, stdout[-3000:]
    assert "interrupted: stopping and removing everything this run started" in stdout
    assert managed_containers(client) == []  # no orphan, running or stopped
    assert statuses(out) == {"llava-1.5-7b": "failed"}


def test_unwritable_results_folder_starts_no_container(client, tmp_path: Path, make_panorama_data) -> None:
    data = _data(make_panorama_data, tmp_path / "data", num_images=1)
    blocker = tmp_path / "file"
    blocker.write_text("")
    events_since = int(time.time())
    run = run_orchestrator(
        "ablation", "--engine", "docker", "--models", "llava-1.5-7b", "--data", data.data_file,
        "--output-dir", blocker / "results", "--skip-fetch", *CONTAINER_USER_ARGS, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "results folder" in run.stderr and "cannot be created" in run.stderr
    created = client.events(
        since=events_since, until=int(time.time()) + 1, decode=True, filters={"type": "container", "event": "create"}
    )
    assert [e for e in created if e.get("Actor", {}).get("Attributes", {}).get("io.vlm-ablation.managed")] == []


def test_missing_image_is_reported_before_any_work(client, tmp_path: Path, make_panorama_data) -> None:
    data = _data(make_panorama_data, tmp_path / "data", num_images=1)
    run = run_orchestrator(
        "ablation", "--engine", "docker", "--models", "llava-1.5-7b", "--data", data.data_file,
        "--output-dir", tmp_path / "out", "--image", "llava=vlm-ablation/llava:not-built", "--skip-fetch",
        *CONTAINER_USER_ARGS, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "image(s) not found on the engine" in run.stderr and "vlm-ablation/llava:not-built" in run.stderr
    assert "make images" in run.stderr


# --- every model in its own image ----------------------------------------------------------------------------


def test_all_eight_models_run_in_their_own_images(client, tmp_path: Path, tiny_checkpoint, make_panorama_data) -> None:
    """The ablation users type, through the docker engine: each model in its family's image, non-root, no network,
    data and checkpoints read-only (the tiny checkpoints as `orchestrator tiny` writes them: no chmod by hand)."""
    from _orchestrator_helpers import require_images

    from runner.registry import MODELS

    require_images(client, sorted({spec.image_ref for spec in MODELS.values()}))
    data = _data(make_panorama_data, tmp_path / "data", num_images=2, queries=("location",))
    root = tmp_path / "models"
    build = run_orchestrator("tiny", "--models", "all", "--out", root)
    assert build.returncode == 0, build.stderr[-2000:]
    out = writable_results(tmp_path / "results")
    run = run_orchestrator(
        "ablation", "--engine", "docker", "--gpus", "none", "--models", "all", "--data", data.data_file,
        "--output-dir", out, "--model-path-root", root, "--batch-size", "2", "--max-new-tokens", "4",
        "--no-report", *CONTAINER_USER_ARGS, timeout=1500,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert "  completed : 8/8" in run.stdout
    for model, spec in MODELS.items():
        metrics = read_json(out / METRICS_JSON.format(model=model), MetricsFile)
        assert metrics.num_samples == 2 and metrics.random_weights
        assert (out / f"{model}_predictions.jsonl").stat().st_uid == CONTAINER_UID
        assert next(r for r in manifest(out).models if r.model_name == model).image == spec.image_ref
    assert managed_containers(client) == []


def test_architectures_needing_num2words_or_timm_run_through_hf_names_in_the_generic_image(
    client, tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    """SmolVLM2 (num2words), Gemma 3n and Perception LM (timm) by their Hub names alone, each in the generic image
    built from images/generic/requirements.txt: the packages are there and the prompts are those the venv renders."""
    import shutil

    from _orchestrator_helpers import require_images
    from test_generic_architectures import ARCHITECTURES

    from runner.loop import DEFAULT_PROMPT_TEMPLATE
    from runner.registry import get_model

    entries = ("smolvlm2-2.2b", "gemma-3n-e2b", "perception-lm-1b")
    hub_names = {entry: f"hf:{get_model(entry).hub_id}" for entry in entries}
    generic = get_model(hub_names[entries[0]]).image_ref
    require_images(client, [generic])
    root = tmp_path / "models"
    for entry, hub_name in hub_names.items():  # DIR/<the name an hf: name resolves to>: where --model-path-root looks
        shutil.copytree(tiny_checkpoint(entry), root / get_model(hub_name).name)
    readable_by_all(root)
    data = _data(make_panorama_data, tmp_path / "data", num_images=2, queries=("location",))
    out = writable_results(tmp_path / "results")
    run = run_orchestrator(
        "ablation", "--engine", "docker", "--gpus", "none", "--models", ",".join(hub_names.values()),
        "--data", data.data_file, "--output-dir", out, "--model-path-root", root, "--batch-size", "2",
        "--max-new-tokens", "4", "--no-report", *CONTAINER_USER_ARGS, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert "  completed : 3/3" in run.stdout
    for entry, hub_name in hub_names.items():
        model = get_model(hub_name).name
        assert next(r for r in manifest(out).models if r.model_name == model).image == generic
        records = predictions(out, model)
        assert len(records) == 2
        expected_prompt = ARCHITECTURES[entry][0]
        for record in records:
            assert record.error is None and record.prediction
            assert record.prompt == expected_prompt.format(instruction=DEFAULT_PROMPT_TEMPLATE.format(query="location"))
    assert managed_containers(client) == []


# --- hardening ------------------------------------------------------------------------------------------------


def test_the_fetch_container_gets_the_token_as_a_read_only_file(client, tmp_path: Path, make_panorama_data) -> None:
    """`docker inspect` of the fetch container shows a file path, never the token."""
    from orchestrator.ablation import hf_token_file
    from orchestrator.docker_engine import DockerEngine
    from orchestrator.engines import Task
    from orchestrator.plan import AblationOptions, GpuSelection, build_plan

    secret = "hf_docker_secret_9e2b"
    data = _data(make_panorama_data, tmp_path / "data", num_images=1)
    cache = writable_results(tmp_path / "hf-cache")
    plan = build_plan(
        AblationOptions(models=["llava-1.5-7b"], data_file=data.data_file,
                        output_dir=writable_results(tmp_path / "out"), hf_cache=cache)
    )  # fmt: skip
    engine = DockerEngine(client=client, user=CONTAINER_USER_ARGS[1] if CONTAINER_USER_ARGS else None)
    engine.preflight(plan, [FAMILY_IMAGES["llava"]])
    os.environ["HF_TOKEN"] = secret
    try:
        with hf_token_file(engine.container_owner()) as token_file:
            assert token_file is not None
            task = Task("fetch-llava", "fetch", FAMILY_IMAGES["llava"], ["--help"], GpuSelection("none"),
                        network=True, token_file=token_file)  # fmt: skip
            container = engine.create(task)
            try:
                inspected = client.api.inspect_container(container.id)
                assert secret not in str(inspected)
                assert "HF_TOKEN_PATH=/run/secrets/hf_token" in inspected["Config"]["Env"]
                mounts = {m["Target"]: m.get("ReadOnly", False) for m in inspected["HostConfig"]["Mounts"]}
                assert mounts["/run/secrets/hf_token"] is True
                assert token_file.stat().st_uid == CONTAINER_UID  # the container's user can read it
            finally:
                engine.stop_all()
    finally:
        del os.environ["HF_TOKEN"]


def test_containers_left_by_a_killed_orchestrator_are_removed_by_the_rerun(
    client, tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    data = _data(make_panorama_data, tmp_path / "data", num_images=6, queries=("location", "people", "weather"))
    root = model_root(tmp_path, tiny_checkpoint, ["llava-1.5-7b"])
    out = writable_results(tmp_path / "results")
    args = ["ablation", "--engine", "docker", "--gpus", "none", "--models", "llava-1.5-7b", "--data", data.data_file,
            "--output-dir", out, "--model-path-root", root, "--batch-size", "1", "--max-new-tokens", "48",
            "--no-report", *CONTAINER_USER_ARGS]  # fmt: skip
    process = subprocess.Popen(
        orchestrator_command(*args), cwd=REPO_ROOT, env=orchestrator_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    _wait_for_predictions(process, out / "llava-1.5-7b_predictions.jsonl", 1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert len(managed_containers(client)) == 1  # the engine keeps a container its orchestrator never stopped
    rerun = run_orchestrator(*args)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-2000:]
    assert "left running by an orchestrator that died" in rerun.stdout
    ids = [r.sample_id for r in predictions(out, "llava-1.5-7b")]
    assert len(ids) == len(set(ids)) == data.num_samples
    assert managed_containers(client) == []


def test_a_results_folder_the_container_user_cannot_write_is_refused(
    client, tmp_path: Path, make_panorama_data
) -> None:
    data = _data(make_panorama_data, tmp_path / "data", num_images=1)
    out = tmp_path / "closed"
    out.mkdir(mode=0o755)
    if out.stat().st_uid == CONTAINER_UID:
        out.chmod(0o555)
    run = run_orchestrator(
        "ablation", "--engine", "docker", "--models", "llava-1.5-7b", "--data", data.data_file, "--output-dir", out,
        "--skip-fetch", *CONTAINER_USER_ARGS, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"the results folder {out} is not writable by uid {CONTAINER_UID}" in run.stderr
    assert out.stat().st_uid == os.getuid()  # nothing was chowned
    assert managed_containers(client) == []


def test_root_must_name_the_container_user(client, tmp_path: Path, make_panorama_data) -> None:
    if os.getuid() != 0:
        pytest.skip("only root is asked which account the containers run as")
    data = _data(make_panorama_data, tmp_path / "data", num_images=1)
    env = {key: value for key, value in orchestrator_env().items() if key not in ("SUDO_UID", "SUDO_GID")}
    run = run_orchestrator(
        "ablation", "--engine", "docker", "--models", "llava-1.5-7b", "--data", data.data_file,
        "--output-dir", tmp_path / "out", "--skip-fetch", env=env, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "containers never run as root" in run.stderr and "--container-user" in run.stderr
