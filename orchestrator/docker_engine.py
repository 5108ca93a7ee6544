"""The docker engine: each task is a container started through the Docker SDK (docker-py 7.x).

Inference containers get no network, the data, checkpoints and Hugging Face cache read-only, only the results
folder writable, no capabilities, no privilege escalation, a non-root user and a sized /dev/shm. Every container
carries labels naming this run, so a Ctrl-C (or a test) can find and remove exactly what this run started.
"""

from __future__ import annotations

import codecs
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest, Mount

from orchestrator.engines import Engine, EngineError, LineSink, RunPaths, Task, TaskResult, pump_lines
from orchestrator.plan import GpuSelection, Plan, PlanError

LABEL_MANAGED = "io.vlm-ablation.managed"
LABEL_RUN_ID = "io.vlm-ablation.run-id"
LABEL_TASK = "io.vlm-ablation.task"

# Where things sit inside the containers (the images create these folders).
DATA_DIR = "/data"
RESULTS_DIR = "/results"
MODELS_DIR = "/models"
IMAGES_DIR = "/images"
HF_CACHE_DIR = "/cache/huggingface"

# The images' own non-root user: used when the orchestrator itself runs as root (uid 0 is never passed on).
FALLBACK_USER = (1000, 1000)


def docker_host_description() -> str:
    host = os.environ.get("DOCKER_HOST")
    return f"DOCKER_HOST={host}" if host else "DOCKER_HOST is not set (default unix:///var/run/docker.sock)"


def connect(timeout: float | None = None, check_timeout: float = 10) -> docker.DockerClient:
    """A client for the engine DOCKER_HOST names, proven to answer; EngineError naming DOCKER_HOST otherwise."""
    try:
        probe = docker.from_env(timeout=int(check_timeout))
        probe.ping()
        version = probe.version().get("ApiVersion")
        probe.close()
        # No read timeout for the working client: a model may print nothing for a long while.
        return docker.from_env(timeout=timeout, version=version)  # type: ignore[arg-type]
    except DockerException as error:
        raise EngineError(
            f"the Docker engine does not answer ({docker_host_description()}): {error}. "
            "Start the Docker daemon, point DOCKER_HOST at it, or run with --engine local."
        ) from None


def engine_answers() -> bool:
    try:
        connect(check_timeout=3).close()
        return True
    except EngineError:
        return False


def container_user() -> tuple[int, int]:
    """The host user's uid:gid, so result files belong to the user; never root."""
    uid, gid = os.getuid(), os.getgid()
    return FALLBACK_USER if uid == 0 else (uid, gid)


def _readable_by_others(path: Path) -> bool:
    needed = 0o005 if path.is_dir() else 0o004
    return path.stat().st_mode & needed == needed


def _mounted_paths(plan: Plan) -> list[Path]:
    """What the containers read: the data file and its images, and every file of the local checkpoints."""
    paths = [plan.data_file.parent, plan.data_file, *map(Path, plan.image_paths)]
    for root in (plan.model_path_root, plan.image_root):
        if root is not None:
            paths += [root, *root.rglob("*")]
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-")


class DockerEngine(Engine):
    name = "docker"

    def __init__(self, client: docker.DockerClient | None = None, run_id: str | None = None):
        self.client = client or connect()
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.user = container_user()
        self._containers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._plan: Plan | None = None

    # --- checks before any work ----------------------------------------------------------------------------

    def preflight(self, plan: Plan, images: list[str]) -> None:
        self._plan = plan
        missing = []
        for image in dict.fromkeys(images):
            try:
                self.client.images.get(image)
            except ImageNotFound:
                missing.append(image)
        if missing:
            raise EngineError(
                f"image(s) not found on the engine ({docker_host_description()}): {', '.join(missing)}. "
                "Build them with `make images` (or `python -m orchestrator images`)."
            )
        allowed = [plan.data_file.parent] + ([plan.image_root] if plan.image_root else [])
        outside = [p for p in plan.image_paths if not any(Path(p).is_relative_to(root) for root in allowed)]
        if outside:
            raise PlanError(
                f"{len(outside)} image(s) lie outside the data file's folder {plan.data_file.parent}, which is all the "
                f"containers see (e.g. {outside[0]}); pass --image-root with their common folder"
            )
        if os.getuid() == 0:
            # Running as root: the containers run as uid 1000, which must be able to read the mounts...
            closed = [str(path) for path in _mounted_paths(plan) if path.exists() and not _readable_by_others(path)]
            if closed:
                shown = ", ".join(closed[:3]) + (f" and {len(closed) - 3} more" if len(closed) > 3 else "")
                raise PlanError(
                    f"{shown} cannot be read by others, and the containers run as uid {self.user[0]} "
                    "(never root): `chmod -R o+rX` them"
                )
            uid, gid = self.user
            # ... write the Hugging Face cache where the fetch step fills it ...
            if plan.hf_cache is not None and plan.model_path_root is None and not plan.options.skip_fetch:
                if not plan.hf_cache.exists():
                    plan.hf_cache.mkdir(parents=True)
                    os.chown(plan.hf_cache, uid, gid)
                elif plan.hf_cache.stat().st_uid != uid:
                    raise PlanError(
                        f"the Hugging Face cache {plan.hf_cache} belongs to another user, and the fetch container "
                        f"runs as uid {uid} (never root): pass --hf-cache with a folder of uid {uid}, or --skip-fetch"
                    )
            # ... and write the results.
            for folder, _dirs, files in os.walk(plan.output_dir):
                os.chown(folder, uid, gid)
                for name in files:
                    os.chown(os.path.join(folder, name), uid, gid)

    def paths(self, plan: Plan) -> RunPaths:
        return RunPaths(
            data_file=f"{DATA_DIR}/{plan.data_file.name}",
            output_dir=RESULTS_DIR,
            model_root=MODELS_DIR if plan.model_path_root else None,
            image_root=IMAGES_DIR if plan.image_root else None,
            hf_cache=HF_CACHE_DIR,
        )

    def resolve_gpus(self, requested: GpuSelection | None) -> GpuSelection:
        if requested is not None:
            return requested
        runtimes = self.client.info().get("Runtimes", {}) or {}
        return GpuSelection("all") if "nvidia" in runtimes else GpuSelection("none")

    # --- running -------------------------------------------------------------------------------------------

    def _mounts(self, task: Task) -> list[Mount]:
        plan = self._plan
        assert plan is not None, "preflight() comes first"
        if task.kind == "fetch":
            assert plan.hf_cache is not None
            plan.hf_cache.mkdir(parents=True, exist_ok=True)
            return [Mount(HF_CACHE_DIR, str(plan.hf_cache), type="bind", read_only=False)]
        mounts = [
            Mount(DATA_DIR, str(plan.data_file.parent), type="bind", read_only=True),
            Mount(RESULTS_DIR, str(plan.output_dir), type="bind", read_only=False),
        ]
        if plan.model_path_root:
            mounts.append(Mount(MODELS_DIR, str(plan.model_path_root), type="bind", read_only=True))
        if plan.image_root:
            mounts.append(Mount(IMAGES_DIR, str(plan.image_root), type="bind", read_only=True))
        if plan.hf_cache and task.kind == "runner":
            # Inference reads the cache the fetch step filled; only the fetch step writes it.
            plan.hf_cache.mkdir(parents=True, exist_ok=True)
            mounts.append(Mount(HF_CACHE_DIR, str(plan.hf_cache), type="bind", read_only=True))
        return mounts

    @staticmethod
    def _device_requests(gpus: GpuSelection) -> list[DeviceRequest]:
        if gpus.mode == "none":
            return []
        if gpus.mode == "all":
            return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        return [DeviceRequest(device_ids=list(gpus.ids), capabilities=[["gpu"]])]

    def create(self, task: Task) -> Any:
        plan = self._plan
        assert plan is not None and task.image is not None
        environment = {"HOME": "/tmp", "PYTHONUNBUFFERED": "1", "HF_HOME": HF_CACHE_DIR}
        if not task.network:
            environment.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        environment.update(task.environment)
        options: dict[str, Any] = {
            "command": task.argv,
            "name": f"vlm-ablation-{self.run_id}-{_slug(task.name)}",
            "labels": {LABEL_MANAGED: "1", LABEL_RUN_ID: self.run_id, LABEL_TASK: task.name},
            "user": f"{self.user[0]}:{self.user[1]}",
            "environment": environment,
            "mounts": self._mounts(task),
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "shm_size": plan.options.shm_size,
            "device_requests": self._device_requests(task.gpus),
            "working_dir": "/tmp",
            "init": True,
            "detach": True,
        }
        if task.network:
            # Only the fetch step: downloads weights into the cache. Its entry point is not the image's.
            options["entrypoint"] = ["python", "-m", "orchestrator.hub_fetch"]
        else:
            options["network_mode"] = "none"
        return self.client.containers.create(task.image, **options)

    def run(self, task: Task, sink: LineSink) -> TaskResult:
        try:
            container = self.create(task)
        except (APIError, ImageNotFound) as error:
            return TaskResult(exit_code=None, message=f"container could not be created: {error.explanation or error}")
        with self._lock:
            self._containers[container.id] = container
        lines: list[str] = []
        try:
            try:
                container.start()
            except APIError as error:
                return TaskResult(exit_code=None, message=f"container could not start: {error.explanation or error}")
            reader = threading.Thread(target=self._pump_logs, args=(container, sink, lines), daemon=True)
            reader.start()
            deadline = time.monotonic() + task.timeout if task.timeout else None
            timed_out = False
            while True:
                try:
                    container.reload()
                except NotFound:
                    return TaskResult(
                        exit_code=None, message="container vanished (removed by someone else)", lines=lines
                    )
                if container.status not in ("created", "running"):
                    break
                if deadline is not None and time.monotonic() > deadline:
                    timed_out = True
                    container.kill()
                    break
                time.sleep(0.3)
            status = container.wait()
            reader.join(timeout=10)
            state = container.attrs.get("State", {})
            code = status.get("StatusCode")
            message = None
            if timed_out:
                message = f"timed out after {task.timeout:g} s; container killed"
            elif state.get("OOMKilled"):
                message = "out of memory: the container was OOM-killed (lower --batch-size or give it more memory)"
            elif code == 137:
                message = "container was killed (exit 137)"
            elif code:
                message = f"container exited with code {code}"
            return TaskResult(exit_code=code, timed_out=timed_out, message=message, lines=lines)
        finally:
            self._remove(container)

    @staticmethod
    def _pump_logs(container: Any, sink: LineSink, lines: list[str]) -> None:
        def chunks() -> Iterator[str]:
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a chunk may split a character
            try:
                for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                    yield decoder.decode(chunk)
            except (DockerException, OSError):
                pass  # the container was removed under the stream (Ctrl-C); what was read is kept

        pump_lines(chunks(), sink, lines)

    def _remove(self, container: Any) -> None:
        try:
            container.remove(force=True)
        except NotFound:
            pass
        except APIError as error:
            if "already in progress" not in str(error):
                raise
        with self._lock:
            self._containers.pop(container.id, None)

    def stop_all(self) -> None:
        """Remove every container this run started, including any created between bookkeeping steps."""
        with self._lock:
            known = list(self._containers.values())
        for container in known:
            self._remove(container)
        for container in self.client.containers.list(all=True, filters={"label": f"{LABEL_RUN_ID}={self.run_id}"}):
            self._remove(container)

    # --- records -------------------------------------------------------------------------------------------

    def image_digest(self, image: str) -> str | None:
        """The registry digest where the image has one, else its content id (both pin the exact image)."""
        try:
            found = self.client.images.get(image)
        except (ImageNotFound, APIError):
            return None
        repo_digests = found.attrs.get("RepoDigests") or []
        return repo_digests[0] if repo_digests else found.id

    def versions(self) -> dict[str, str]:
        info = self.client.version()
        return {"docker_engine": str(info.get("Version")), "docker_api": str(info.get("ApiVersion"))}
