"""The docker engine: each task is a container started through the Docker SDK (docker-py 7.x).

Inference containers get no network, the data, checkpoints and Hugging Face cache read-only, only the results
folder writable, no capabilities, no privilege escalation, a non-root user and a sized /dev/shm. Every container
carries labels naming this run, so a Ctrl-C (or a test) can find and remove exactly what this run started.
"""

from __future__ import annotations

import codecs
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest, Mount

from orchestrator.engines import (
    HF_CACHE_DIR,
    Engine,
    EngineError,
    LineSink,
    RunPaths,
    Task,
    TaskResult,
    container_mounts,
    pump_lines,
)
from orchestrator.plan import GpuSelection, Plan, PlanError
from orchestrator.resources import StepResources, out_of_memory_message, runner_resources, scoring_resources
from scoring.resources import size_bytes

LABEL_MANAGED = "io.vlm-ablation.managed"
LABEL_RUN_ID = "io.vlm-ablation.run-id"
LABEL_TASK = "io.vlm-ablation.task"
# Who started a container, for a rerun to find what a killed orchestrator left running on its results folder.
LABEL_OUTPUT_DIR = "io.vlm-ablation.output-dir"
LABEL_OWNER_PID = "io.vlm-ablation.orchestrator-pid"
LABEL_OWNER_HOST = "io.vlm-ablation.orchestrator-host"

TOKEN_FILE = "/run/secrets/hf_token"  # the fetch step's Hub token, mounted read-only (HF_TOKEN_PATH)
# Limits of every container: a fork bomb or runaway thread pool stops at PIDS_LIMIT; memory is opt-in (--memory): a
# size for every container, or `auto`, each step's own figure (orchestrator.resources, as the slurm engine asks).
PIDS_LIMIT = 4096
MEMORY_AUTO = "auto"


def check_memory_option(memory: str | None) -> str | None:
    """--memory: None, `auto`, or a size Docker takes (64g, 512m); PlanError naming the value otherwise."""
    if memory is None or memory == MEMORY_AUTO:
        return memory
    try:
        if size_bytes(memory) < 6 * (1 << 20):
            raise ValueError("too small")
    except ValueError:
        raise PlanError(
            f"--memory {memory!r}: a size such as 64g or 512m (at least 6m, Docker's minimum), or auto"
        ) from None
    return memory


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


def container_user(requested: str | None = None, environ: dict[str, str] | None = None) -> tuple[int, int]:
    """The uid:gid containers run as: --container-user, else the invoking user, else (under sudo) the user sudo was
    called by. Never root: as root without either, the caller must say which account (PlanError)."""
    environ = dict(os.environ) if environ is None else environ
    if requested:
        uid_text, _, gid_text = requested.partition(":")
        if not uid_text.isdigit() or (gid_text and not gid_text.isdigit()):
            raise PlanError(f"--container-user {requested!r}: expected UID or UID:GID (numbers), e.g. 1000:1000")
        uid, gid = int(uid_text), int(gid_text or uid_text)
        if uid == 0:
            raise PlanError("--container-user 0: containers never run as root; give a non-root UID:GID")
        return uid, gid
    if os.getuid() != 0:
        return os.getuid(), os.getgid()
    sudo_uid, sudo_gid = environ.get("SUDO_UID", ""), environ.get("SUDO_GID", "")
    if sudo_uid.isdigit() and int(sudo_uid) != 0:
        return int(sudo_uid), int(sudo_gid) if sudo_gid.isdigit() else int(sudo_uid)
    raise PlanError(
        "running as root: containers never run as root, so say which account they run as with "
        "--container-user UID:GID (make ablation CONTAINER_USER=UID:GID); that account must be able to write the "
        "results folder and read the data, images and checkpoints"
    )


def _can(path: Path, uid: int, gid: int, read: bool = True, write: bool = False) -> bool:
    """Whether uid:gid may read (and list, for a folder) / write `path`, by its mode bits."""
    info = path.stat()
    shift = 6 if info.st_uid == uid else 3 if info.st_gid == gid else 0
    need = (4 if read else 0) | (2 if write else 0) | (1 if path.is_dir() else 0)
    return (info.st_mode >> shift) & need == need


def _mounted_paths(plan: Plan) -> list[Path]:
    """What the containers read: the data file and its images, and every file of the local checkpoints."""
    paths = [plan.data_file.parent, plan.data_file, *map(Path, plan.image_paths)]
    for root in (plan.model_path_root, plan.image_root):
        if root is not None:
            paths += [root, *root.rglob("*")]
    return paths


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-")


class DockerEngine(Engine):
    name = "docker"

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        run_id: str | None = None,
        user: str | None = None,
        memory: str | None = None,
    ):
        self.client = client or connect()
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.user = container_user(user)
        self.memory = check_memory_option(memory)
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
        uid, gid = self.user
        # The containers' user must read the mounts and write the results (nothing is chowned for it).
        closed = [str(path) for path in _mounted_paths(plan) if path.exists() and not _can(path, uid, gid)]
        if closed:
            shown = ", ".join(closed[:3]) + (f" and {len(closed) - 3} more" if len(closed) > 3 else "")
            raise PlanError(
                f"{shown} cannot be read by uid {uid} (the containers' user): `chmod -R o+rX` them, or choose "
                "another --container-user"
            )
        if not _can(plan.output_dir, uid, gid, write=True):
            raise PlanError(
                f"the results folder {plan.output_dir} is not writable by uid {uid}:{gid}, the containers' user: "
                f"`chown -R {uid}:{gid}` it or choose another --output-dir / --container-user"
            )
        if plan.hf_cache is not None and plan.model_path_root is None and not plan.options.skip_fetch:
            if plan.hf_cache.exists() and not _can(plan.hf_cache, uid, gid, write=True):
                raise PlanError(
                    f"the Hugging Face cache {plan.hf_cache} is not writable by uid {uid}, the fetch container's "
                    f"user: pass --hf-cache with a folder it can write, or --skip-fetch"
                )
        self._remove_orphans(plan)

    def _remove_orphans(self, plan: Plan) -> None:
        """Containers a killed orchestrator left running on this results folder are removed before anything starts;
        a live ablation on the same folder is refused (the runners' file lock would refuse it later anyway)."""
        found = self.client.containers.list(all=True, filters={"label": f"{LABEL_OUTPUT_DIR}={plan.output_dir}"})
        host = socket.gethostname()
        for container in found:
            labels = container.labels or {}
            pid_text, owner_host = labels.get(LABEL_OWNER_PID, ""), labels.get(LABEL_OWNER_HOST, "")
            if owner_host == host and pid_text.isdigit() and _alive(int(pid_text)):
                raise PlanError(
                    f"another ablation (pid {pid_text}) is running containers on {plan.output_dir}; wait for it, stop "
                    "it, or use another --output-dir"
                )
            print(f"removing {container.name}, left running by an orchestrator that died (pid {pid_text or '?'})")
            self._remove(container)

    def paths(self, plan: Plan) -> RunPaths:
        return RunPaths.in_container(plan)

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
            mounts = [Mount(HF_CACHE_DIR, str(plan.hf_cache), type="bind", read_only=False)]
            if task.token_file is not None:
                mounts.append(Mount(TOKEN_FILE, str(task.token_file), type="bind", read_only=True))
            return mounts
        if plan.hf_cache and task.kind == "runner":
            plan.hf_cache.mkdir(parents=True, exist_ok=True)  # a bind mount's source must exist
        return [
            Mount(target, str(source), type="bind", read_only=read_only)
            for source, target, read_only in container_mounts(plan, task.kind)
        ]

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
        if task.token_file is not None:
            environment["HF_TOKEN_PATH"] = TOKEN_FILE  # a path, never the token (docker inspect shows the env)
        labels = {
            LABEL_MANAGED: "1",
            LABEL_RUN_ID: self.run_id,
            LABEL_TASK: task.name,
            LABEL_OUTPUT_DIR: str(plan.output_dir),
            LABEL_OWNER_PID: str(os.getpid()),
            LABEL_OWNER_HOST: socket.gethostname(),
        }
        options: dict[str, Any] = {
            "command": task.argv,
            "name": f"vlm-ablation-{self.run_id}-{_slug(task.name)}",
            "labels": labels,
            "user": f"{self.user[0]}:{self.user[1]}",
            "environment": environment,
            "mounts": self._mounts(task),
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "shm_size": plan.options.shm_size,
            "pids_limit": PIDS_LIMIT,
            "device_requests": self._device_requests(task.gpus),
            "working_dir": "/tmp",
            "init": True,
            "detach": True,
        }
        limit = self.memory_limit(task)
        if limit:
            options["mem_limit"] = limit
            options["memswap_limit"] = limit  # no swap on top: an OOM is reported, not a crawl
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
                message = self._out_of_memory(task)
            elif code == 137:
                message = "container was killed (exit 137)"
            elif code:
                message = f"container exited with code {code}"
            return TaskResult(exit_code=code, timed_out=timed_out, message=message, lines=lines)
        finally:
            self._remove(container)

    def memory_limit(self, task: Task) -> str | None:
        """The container's memory limit: --memory's size, or with `auto` the step's own figure (the fetch step gets
        none: it only downloads)."""
        if self.memory != MEMORY_AUTO:
            return self.memory
        if task.kind == "fetch" or self._plan is None:
            return None
        return self.step_resources(task).docker_memory

    def step_resources(self, task: Task) -> StepResources:
        """What `auto` gives a task: a runner's estimate (its model's weights, batches, runtime), or the scoring
        step's over every model of the plan (it scores at most those)."""
        plan = self._plan
        assert plan is not None
        if task.kind == "scoring":
            return scoring_resources(plan, len(plan.specs))
        model = task.name.split("#", 1)[0]  # `<model>#<shard>` for one shard (Ablation.task_label)
        spec = next(spec for spec in plan.specs if spec.name == model)
        argv = task.argv
        revision = argv[argv.index("--revision") + 1] if "--revision" in argv[:-1] else None
        return runner_resources(plan, spec, gpu=task.gpus.mode != "none", revision=revision)

    def _out_of_memory(self, task: Task) -> str:
        limit = self.memory_limit(task)
        if limit is None:
            return (
                "out of memory: the container was OOM-killed with no limit of its own (the host ran out); lower "
                "--batch-size, or give it room with --memory"
            )
        option = "--memory " if self.memory != MEMORY_AUTO else "--memory (a size instead of auto), e.g. --memory "
        return out_of_memory_message(f"--memory {limit}", option, limit=size_bytes(limit))

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

    def _remove(self, container: Any, timeout: float = 60) -> None:
        """Remove the container and return only once the engine no longer lists it (a removal another thread
        started, e.g. Ctrl-C while a task ends, is waited for too)."""
        try:
            container.remove(force=True)
        except NotFound:
            pass
        except APIError as error:
            if "already in progress" not in str(error):
                raise
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.client.containers.get(container.id)
            except NotFound:
                break
            time.sleep(0.2)
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

    def container_owner(self) -> tuple[int, int] | None:
        return self.user

    def versions(self) -> dict[str, str]:
        info = self.client.version()
        return {"docker_engine": str(info.get("Version")), "docker_api": str(info.get("ApiVersion"))}
