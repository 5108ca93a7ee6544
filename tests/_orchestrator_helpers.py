"""Helpers for the orchestrator tests: run `python -m orchestrator` as a real process, model roots of tiny
checkpoints the containers can read, and the Docker engine (skip with a reason where none answers; fail instead
when VLM_ABLATION_REQUIRE_DOCKER=1, as in CI, so a missing engine can never pass as a green run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import WITHOUT_SPICE

from contract import (
    ABLATION_MANIFEST,
    PREDICTIONS_JSONL,
    AblationManifest,
    PredictionRecord,
    read_json,
    read_jsonl,
    results_file,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIRE_DOCKER = os.environ.get("VLM_ABLATION_REQUIRE_DOCKER") == "1"
FAMILY_IMAGES = {"blip2": "vlm-ablation/blip2:latest", "llava": "vlm-ablation/llava:latest"}
SCORING_IMAGE = "vlm-ablation/scoring:latest"
# Containers never run as root: when the tests run as root (CI), they name an account for the containers and give
# it the folders it must write, as a root user of the tool would.
CONTAINER_UID = 1000 if os.getuid() == 0 else os.getuid()
CONTAINER_GID = 1000 if os.getuid() == 0 else os.getgid()
CONTAINER_USER_ARGS = ["--container-user", f"{CONTAINER_UID}:{CONTAINER_GID}"] if os.getuid() == 0 else []


def orchestrator_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p),
    )
    env.update(extra)
    return env


def orchestrator_command(*args: str | Path) -> list[str]:
    """`python -m orchestrator ARGS`; an ablation leaves SPICE out deliberately unless the test names --metrics (these
    tests are about the orchestrator; a scoring step that should compute SPICE without its jars fails)."""
    extra = list(WITHOUT_SPICE) if args and args[0] == "ablation" and "--metrics" not in args else []
    return [sys.executable, "-m", "orchestrator", *(str(a) for a in args), *extra]


@dataclass
class OrchestratorRun:
    returncode: int
    stdout: str
    stderr: str


def run_orchestrator(*args: str | Path, timeout: float = 600, env: dict[str, str] | None = None) -> OrchestratorRun:
    done = subprocess.run(
        orchestrator_command(*args),
        cwd=REPO_ROOT,
        env=env or orchestrator_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return OrchestratorRun(done.returncode, done.stdout, done.stderr)


def writable_results(folder: Path) -> Path:
    """A results folder the containers' user can write (created here; chowned only when the tests run as root)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.getuid() == 0:
        os.chown(folder, CONTAINER_UID, CONTAINER_GID)
    return folder


def readable_by_all(folder: Path) -> Path:
    """Containers run as the host user, or uid 1000 when the tests run as root: they must read what we mount."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


def model_root(tmp_path: Path, tiny_checkpoint: Callable[[str], Path], models: Sequence[str]) -> Path:
    """DIR/<model> copies of the session's tiny checkpoints (copies: a symlink would dangle inside a container)."""
    root = tmp_path / "models"
    for model in models:
        shutil.copytree(tiny_checkpoint(model), root / model)
    return readable_by_all(root)


def break_checkpoint(folder: Path) -> None:
    """A checkpoint that cannot load: its config is not JSON (a truncated download looks like this)."""
    (folder / "config.json").write_text('{"model_type": ', encoding="utf-8")


def predictions(output_dir: Path, model: str) -> list[PredictionRecord]:
    return list(read_jsonl(results_file(output_dir, PREDICTIONS_JSONL, model), PredictionRecord))


def manifest(output_dir: Path) -> AblationManifest:
    return read_json(results_file(output_dir, ABLATION_MANIFEST), AblationManifest)


def statuses(output_dir: Path) -> dict[str, str]:
    return {record.model_name: record.status for record in manifest(output_dir).models}


def tree_text(folder: Path) -> str:
    """Every text file under a folder, concatenated (to prove a secret is in none of them)."""
    chunks = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            chunks.append(path.read_bytes().decode("utf-8", errors="replace"))
    return "\n".join(chunks)


def docker_client():  # noqa: ANN201  (docker.DockerClient; docker is an optional dependency)
    """The engine at DOCKER_HOST, or a skip (a fail in CI) saying why there is none."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock (default)")
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
        return client
    except Exception as error:  # noqa: BLE001  (any reason the engine is not usable skips the same way)
        reason = f"no Docker engine answers at DOCKER_HOST={host}: {type(error).__name__}: {error}"
        if REQUIRE_DOCKER:
            pytest.fail(reason)
        pytest.skip(reason)


def require_images(client, images: Sequence[str]) -> None:  # noqa: ANN001
    from docker.errors import ImageNotFound

    missing = []
    for image in images:
        try:
            client.images.get(image)
        except ImageNotFound:
            missing.append(image)
    if missing:
        reason = f"image(s) not built on this engine: {', '.join(missing)} (make images, or .ci/run)"
        if REQUIRE_DOCKER:
            pytest.fail(reason)
        pytest.skip(reason)


def managed_containers(client) -> list:  # noqa: ANN001
    from orchestrator.docker_engine import LABEL_MANAGED

    return client.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}=1"})


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains `text` (zombies, already exited, are left out)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids
