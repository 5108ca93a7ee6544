"""What the orchestrator asks an engine to run, and the local engine (subprocesses in this environment).

Both engines run the SAME command lines (`python -m runner ...`, `python -m scoring ...`); they differ only in
where the process runs and which paths it sees, which `paths()` tells the argument builder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from contract.lifetime import PARENT_PID_ENV
from orchestrator.plan import GpuSelection, Plan

LineSink = Callable[[str], None]
TaskKind = Literal["runner", "scoring", "fetch"]

# Hub tokens, read from the orchestrator's environment for the fetch step only (given to it as a file).
HF_TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

# Where things sit inside a container, for every container runtime (docker, apptainer, pyxis); the images create
# these folders.
DATA_DIR = "/data"
RESULTS_DIR = "/results"
MODELS_DIR = "/models"
IMAGES_DIR = "/images"
HF_CACHE_DIR = "/cache/huggingface"
MODELS_FILE = "/catalogue/models.toml"  # the user's --models-file, read-only
# The module each kind of task runs (the images' ENTRYPOINTs are `python -m runner` / `python -m scoring`).
TASK_MODULES: dict[str, str] = {"runner": "runner", "scoring": "scoring", "fetch": "orchestrator.hub_fetch"}


@dataclass(frozen=True)
class RunPaths:
    """The paths a runner/scoring process sees for the plan's files."""

    data_file: str
    output_dir: str
    model_root: str | None
    image_root: str | None
    hf_cache: str | None
    models_file: str | None = None

    @classmethod
    def on_host(cls, plan: Plan) -> RunPaths:
        """The plan's files where this host sees them (the local engine; the orchestrator's own checks)."""
        return cls(
            data_file=str(plan.data_file),
            output_dir=str(plan.output_dir),
            model_root=str(plan.model_path_root) if plan.model_path_root else None,
            image_root=str(plan.image_root) if plan.image_root else None,
            hf_cache=str(plan.hf_cache) if plan.hf_cache else None,
            models_file=str(plan.models_file) if plan.models_file else None,
        )

    @classmethod
    def in_container(cls, plan: Plan) -> RunPaths:
        """Where the containers' mounts put the plan's files (docker engine; Slurm's apptainer and pyxis runtimes)."""
        return cls(
            data_file=f"{DATA_DIR}/{plan.data_file.name}",
            output_dir=RESULTS_DIR,
            model_root=MODELS_DIR if plan.model_path_root else None,
            image_root=IMAGES_DIR if plan.image_root else None,
            hf_cache=HF_CACHE_DIR,
            models_file=MODELS_FILE if plan.models_file else None,
        )


def container_mounts(plan: Plan, kind: TaskKind) -> list[tuple[Path, str, bool]]:
    """(host path, container path, read-only) for a runner or scoring container: the one mount table of the docker
    engine and of Slurm's container runtimes. The fetch step mounts only the cache (and the token file)."""
    mounts = [(plan.data_file.parent, DATA_DIR, True), (plan.output_dir, RESULTS_DIR, False)]
    if plan.model_path_root:
        mounts.append((plan.model_path_root, MODELS_DIR, True))
    if plan.image_root:
        mounts.append((plan.image_root, IMAGES_DIR, True))
    if plan.hf_cache and kind == "runner":
        # Inference reads the cache the fetch step filled; only the fetch step writes it.
        mounts.append((plan.hf_cache, HF_CACHE_DIR, True))
    if plan.models_file and kind == "runner":
        mounts.append((plan.models_file, MODELS_FILE, True))
    return mounts


@dataclass
class Task:
    name: str  # model name, or "scoring"
    kind: TaskKind
    image: str | None  # docker engine only
    argv: list[str]  # arguments after `python -m <module>`
    gpus: GpuSelection
    timeout: float | None = None
    network: bool = False  # only the fetch step gets a network
    environment: dict[str, str] = field(default_factory=dict)
    token_file: Path | None = None  # the fetch step's Hub token, as a file (never an environment variable)


@dataclass
class TaskResult:
    exit_code: int | None
    timed_out: bool = False
    message: str | None = None  # why it failed, in words (OOM, timeout, exit code)
    lines: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class EngineError(RuntimeError):
    """The engine cannot run anything (unreachable, missing image); raised before any work starts."""


class Engine:
    name: str = "engine"

    def preflight(self, plan: Plan, images: list[str]) -> None:
        """Checks that need the engine; raise EngineError before any work."""

    def scores_with_host_files(self) -> bool:
        """Whether the scoring step runs on this host's files (its Java, SPICE's jars) rather than in an image."""
        return False

    def paths(self, plan: Plan) -> RunPaths:
        raise NotImplementedError

    def resolve_gpus(self, requested: GpuSelection | None) -> GpuSelection:
        raise NotImplementedError

    def run(self, task: Task, sink: LineSink) -> TaskResult:
        raise NotImplementedError

    def stop_all(self) -> None:
        """Stop and remove everything this engine started (Ctrl-C, SIGTERM, errors)."""

    def image_digest(self, image: str) -> str | None:
        return None

    def versions(self) -> dict[str, str]:
        return {}

    def container_owner(self) -> tuple[int, int] | None:
        """The uid:gid tasks run as when it is not this process's own (containers); None: this process's."""
        return None


def nvidia_gpu_count() -> int:
    """GPUs the NVIDIA driver lists on this host (0 without a driver); cheap, no CUDA initialisation."""
    folder = Path("/proc/driver/nvidia/gpus")
    return len(list(folder.iterdir())) if folder.is_dir() else 0


def pump_lines(chunks: Iterable[str], sink: LineSink, lines: list[str]) -> None:
    """Split a stream of text chunks (any boundaries) into lines, each kept in `lines` and passed to `sink`.
    Progress bars' carriage returns end a line too; blank lines are dropped."""
    pending = ""
    for chunk in chunks:
        pending += chunk.replace("\r", "\n")
        *complete, pending = pending.split("\n")
        for line in complete:
            if line.strip():
                lines.append(line)
                sink(line)
    if pending.strip():
        lines.append(pending)
        sink(pending)


class LocalEngine(Engine):
    """Runs the CLIs as child processes of this Python (hosts without Docker, HPC nodes, CI, the demo)."""

    name = "local"

    def __init__(self, python: str = sys.executable):
        self.python = python
        self._processes: dict[int, subprocess.Popen[str]] = {}
        self._lock = threading.Lock()

    def scores_with_host_files(self) -> bool:
        return True

    def paths(self, plan: Plan) -> RunPaths:
        return RunPaths.on_host(plan)

    def resolve_gpus(self, requested: GpuSelection | None) -> GpuSelection:
        """`auto`: every NVIDIA GPU this host has (the driver lists them), else the CPU."""
        if requested is not None:
            return requested
        return GpuSelection("all") if nvidia_gpu_count() > 0 else GpuSelection("none")

    def command(self, task: Task) -> list[str]:
        return [self.python, "-m", TASK_MODULES[task.kind], *task.argv]

    def environment(self, task: Task) -> dict[str, str]:
        # Never a Hub token: only the fetch step needs one, and it gets it as a file (HF_TOKEN_PATH).
        env = {key: value for key, value in os.environ.items() if key not in HF_TOKEN_VARIABLES}
        env["PYTHONUNBUFFERED"] = "1"
        env[PARENT_PID_ENV] = str(os.getpid())  # the child dies with this process (contract.lifetime)
        if task.gpus.mode == "none":
            env["CUDA_VISIBLE_DEVICES"] = ""
        elif task.gpus.mode == "ids":
            env["CUDA_VISIBLE_DEVICES"] = ",".join(task.gpus.ids)
        if not task.network:
            # The same promise as the containers' network_mode="none", as far as a process can keep it.
            env["HF_HUB_OFFLINE"] = "1"
            env["TRANSFORMERS_OFFLINE"] = "1"
        env.update(task.environment)
        if task.token_file is not None:
            env["HF_TOKEN_PATH"] = str(task.token_file)
        return env

    def run(self, task: Task, sink: LineSink) -> TaskResult:
        lines: list[str] = []
        process = subprocess.Popen(
            self.command(task),
            env=self.environment(task),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,  # its own process group: a timeout kills the whole tree
        )
        with self._lock:
            self._processes[process.pid] = process
        chunks = iter(process.stdout.readline, "")  # type: ignore[union-attr]
        reader = threading.Thread(target=pump_lines, args=(chunks, sink, lines), daemon=True)
        reader.start()
        deadline = time.monotonic() + task.timeout if task.timeout else None
        timed_out = False
        try:
            while process.poll() is None:
                if deadline is not None and time.monotonic() > deadline:
                    timed_out = True
                    self._kill(process)
                    break
                time.sleep(0.2)
            process.wait()
            reader.join(timeout=10)
        except BaseException:
            self._kill(process)  # Ctrl-C / SIGTERM while waiting: the child goes too
            raise
        finally:
            with self._lock:
                self._processes.pop(process.pid, None)
        code = process.returncode
        message = None
        if timed_out:
            message = f"timed out after {task.timeout:g} s and was killed"
        elif code is not None and code < 0:
            message = f"killed by signal {signal.Signals(-code).name}"
        elif code:
            message = f"exited with code {code}"
        return TaskResult(exit_code=code, timed_out=timed_out, message=message, lines=lines)

    @staticmethod
    def _kill(process: subprocess.Popen[str]) -> None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        with self._lock:
            processes = list(self._processes.values())
        for process in processes:
            if process.poll() is None:
                self._kill(process)

    def versions(self) -> dict[str, str]:
        return {"python": sys.version.split()[0]}
