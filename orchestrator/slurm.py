"""The Slurm job backend: batch jobs (one array = one model's shards), their states, cancelling them.

Driven through Slurm's own commands as argv lists (`sbatch --parsable`, `squeue --json`, `scontrol show job`,
`scancel`), never a shell string; each job script is written to a file and submitted as it is, so what ran can be
read and resubmitted by hand. States come from the controller (squeue, then scontrol), never from sacct alone:
many clusters, and the test cluster, have no accounting. Shaped like submitit's executor (submit, states, cancel,
wait), which reads sacct and so hangs on a cancelled or timed-out job where accounting is off.

Verified against Slurm 22.05 (Debian bookworm) as a real single-node cluster (tests/slurm_cluster.py); the parser
also takes the JSON shape of Slurm 23.02+ (states as lists, numbers as {"set", "number"}).

The job's environment: sbatch exports only EXPORTED_VARIABLES from this process (Slurm then loads the user's login
environment on the node), never a token; the script exports the offline switches and unsets the token variables
after the setup file, so no inference job can reach the Hub or see a token.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from orchestrator.engines import (
    DATA_DIR,
    HF_CACHE_DIR,
    HF_TOKEN_VARIABLES,
    IMAGES_DIR,
    MODELS_DIR,
    RESULTS_DIR,
    EngineError,
)
from orchestrator.plan import PlanError

# --- what the job sees ---------------------------------------------------------------------------------------------

# Variables sbatch passes from this process (only those set). Everything else the job gets from the user's login
# environment on the node and from the setup file; a token in this process's environment never reaches a job.
# OMP_NUM_THREADS: the CPU threads per process a user chose (torch's default, one per core of the node, oversubscribes
# a node that runs several tasks).
EXPORTED_VARIABLES = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "VIRTUAL_ENV", "PYTHONPATH", "OMP_NUM_THREADS",
)  # fmt: skip
# Inference runs offline, as the local and docker engines run it.
OFFLINE_ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
# Names of variables that hold credentials: never passed to a Slurm command, never written into a job script.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|API_KEY|CREDENTIAL", re.IGNORECASE)

CONTAINER_WORKDIR = "/tmp"
# The first line every job writes into its log: logs are appended to (a rerun's task adds to its log), so what the
# latest run wrote follows the last of these.
JOB_START_MARKER = "[slurm] job "

Runtime = Literal["none", "apptainer", "pyxis"]
RUNTIMES: tuple[Runtime, ...] = ("none", "apptainer", "pyxis")
ARRAY_INDEX = "${SLURM_ARRAY_TASK_ID}"

# --- user-given sbatch options (--slurm-arg NAME=VALUE) ----------------------------------------------------------

SLURM_ARG_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
# Options the backend sets itself, or that would break how it tracks jobs. sbatch takes any unambiguous prefix of
# a long option (--dep for --dependency), so a name that begins one of these is refused too.
RESERVED_SLURM_ARGS = (
    "array",
    "chdir",
    "comment",
    "dependency",
    "error",
    "export",
    "export-file",
    "gid",
    "gpus",
    "gpus-per-task",
    "gres",
    "help",
    "hold",
    "input",
    "job-name",
    "kill-on-invalid-dep",
    "open-mode",
    "output",
    "parsable",
    "test-only",
    "uid",
    "usage",
    "version",
    "wait",
    "wrap",
)
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class SlurmArg:
    """One sbatch long option from the user: `--NAME=VALUE`, or `--NAME` for a flag (value None)."""

    name: str
    value: str | None = None

    def __post_init__(self) -> None:
        shown = self.name if self.value is None else f"{self.name}={self.value}"
        if len(self.name) < 2 or not SLURM_ARG_NAME.match(self.name):
            raise PlanError(
                f"--slurm-arg {shown!r}: NAME must be an sbatch long option in lower case, such as partition, "
                "time, mem, account, qos, constraint (written without the leading --)"
            )
        reserved = [option for option in RESERVED_SLURM_ARGS if option.startswith(self.name)]
        if reserved:
            raise PlanError(
                f"--slurm-arg {shown!r}: --{reserved[0]} is set by the slurm engine itself "
                "(it owns arrays, dependencies, logs, job names, GPUs per task and the environment)"
            )
        if self.value is not None and (not self.value or CONTROL_CHARACTERS.search(self.value)):
            raise PlanError(f"--slurm-arg {shown!r}: the value must be non-empty and on one line")

    def argv(self) -> str:
        return f"--{self.name}" if self.value is None else f"--{self.name}={self.value}"


def parse_slurm_arg(text: str) -> SlurmArg:
    """`partition=gpu` -> SlurmArg('partition', 'gpu'); `exclusive` -> a flag. A leading `--` is accepted."""
    name, separator, value = text.strip().removeprefix("--").partition("=")
    return SlurmArg(name, value if separator else None)


def parse_slurm_args(texts: Iterable[str]) -> tuple[SlurmArg, ...]:
    return tuple(parse_slurm_arg(text) for text in texts)


# The engine asks each job for memory (--mem) and the scoring job for CPUs (--cpus-per-task) itself, unless the user
# gives one of these; sbatch refuses two of a group at once (--mem with --mem-per-cpu), and takes a prefix of each.
MEMORY_OPTIONS = ("mem", "mem-per-cpu", "mem-per-gpu")
CPU_OPTIONS = ("cpus-per-task", "cpus-per-gpu")


def _is_option(arg: SlurmArg, options: Sequence[str]) -> bool:
    return any(option == arg.name or (len(arg.name) >= 3 and option.startswith(arg.name)) for option in options)


def given(args: Iterable[SlurmArg], options: Sequence[str]) -> SlurmArg | None:
    """The last of `args` that is one of `options` (or a prefix sbatch would take for one)."""
    found = None
    for arg in args:
        if _is_option(arg, options):
            found = arg
    return found


def step_args(general: Sequence[SlurmArg], specific: Sequence[SlurmArg]) -> tuple[SlurmArg, ...]:
    """Every job's options (--slurm-arg) with one step's own (--slurm-runner-arg, --slurm-scoring-arg) over them:
    an option the step names replaces the general one of that name, and a step's memory (or CPU) option replaces
    every general one of its group."""
    names = {arg.name for arg in specific}
    groups = [group for group in (MEMORY_OPTIONS, CPU_OPTIONS) if given(specific, group)]
    kept = [arg for arg in general if arg.name not in names and not any(_is_option(arg, group) for group in groups)]
    return (*kept, *specific)


# --- job specification and script ---------------------------------------------------------------------------------

JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
JOB_ID = re.compile(r"^\d+$")
GPU_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MEMORY_VALUE = re.compile(r"^\d+[KMGT]?$")


@dataclass(frozen=True)
class SlurmJobSpec:
    """One sbatch submission: a single job, or an array of `array` tasks (indices 0..array-1)."""

    name: str
    comment: str  # carries the run id, so cancel_run finds the job even when its id was never recorded
    script: str  # the body, after the preamble (set -euo pipefail, setup, environment)
    array: int | None = None
    max_parallel: int | None = None  # at most this many tasks of the array at once (`--array=0-N%M`)
    gpus_per_task: int = 0
    gpu_type: str | None = None  # `--gres=gpu:TYPE:N`
    cpus_per_task: int | None = None
    memory: str | None = None  # `--mem` (per node: the whole job, or each array task), e.g. 12288M
    extra_args: tuple[SlurmArg, ...] = ()
    dependency_afterany: tuple[str, ...] = ()  # start after these jobs ended, however they ended
    output: str | None = None  # log path, Slurm patterns allowed (%A array job, %a task, %j job, %x name)
    error: str | None = None  # None: stderr goes with stdout into `output`
    setup: Path | None = None  # sourced at the top of the script (module loads, venv activation)
    environment: Mapping[str, str] = field(default_factory=dict)  # exported by the script
    offline: bool = True  # export HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1 (inference never reaches the Hub)
    workdir: Path | None = None  # the job's working directory (`--chdir`); None: this process's

    def __post_init__(self) -> None:
        if not JOB_NAME.match(self.name):
            raise ValueError(f"job name {self.name!r}: letters, digits and _.+- only, at most 128")
        if CONTROL_CHARACTERS.search(self.comment):
            raise ValueError(f"job comment {self.comment!r} must be on one line")
        if self.array is not None and self.array < 1:
            raise ValueError(f"job {self.name}: array must be at least 1 task, not {self.array}")
        if self.max_parallel is not None and (self.array is None or self.max_parallel < 1):
            raise ValueError(f"job {self.name}: max_parallel needs an array and must be at least 1")
        if self.gpus_per_task < 0 or (self.cpus_per_task is not None and self.cpus_per_task < 1):
            raise ValueError(f"job {self.name}: gpus_per_task >= 0 and cpus_per_task >= 1")
        if self.memory is not None and not MEMORY_VALUE.match(self.memory):
            raise ValueError(f"job {self.name}: memory {self.memory!r} is not an sbatch --mem value such as 12288M")
        if self.gpu_type is not None and not GPU_TYPE.match(self.gpu_type):
            raise PlanError(f"GPU type {self.gpu_type!r}: letters, digits and _.- only (e.g. a100, h100)")
        for job_id in self.dependency_afterany:
            if not JOB_ID.match(str(job_id)):
                raise ValueError(f"job {self.name}: dependency {job_id!r} is not a Slurm job id")
        for path in (self.output, self.error):
            if path is not None and CONTROL_CHARACTERS.search(path):
                raise ValueError(f"job {self.name}: log path {path!r} must be on one line")
        for arg in self.extra_args:
            if not isinstance(arg, SlurmArg):
                raise TypeError(f"extra_args holds SlurmArg values (parse_slurm_args), not {arg!r}")
        check_environment(self.environment)
        if "SLURM_ARRAY_TASK_ID" in self.script and self.array is None:
            raise ValueError(f"job {self.name}: the script reads SLURM_ARRAY_TASK_ID but the job is not an array")


def check_environment(environment: Mapping[str, str]) -> None:
    """No credential may be written into a job script or a container's command line."""
    for name in environment:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise ValueError(f"environment variable name {name!r} is not a shell name")
        if SECRET_NAME.search(name):
            raise ValueError(f"{name} looks like a credential: it is never written into a Slurm job")


def render_job_script(spec: SlurmJobSpec) -> str:
    """The whole batch script: strict bash, the setup file, the environment, then the body."""
    lines = [
        "#!/bin/bash",
        f"# {spec.name}: written by vlm-ablation's slurm engine ({spec.comment})",
        "set -euo pipefail",
    ]
    if spec.setup is not None:
        lines += [
            "# Module and conda scripts read unset variables: source the setup file with nounset off.",
            "set +u",
            f"source {shlex.quote(os.path.abspath(spec.setup))}",  # the job runs in --chdir, not here
            "set -u",
        ]
    lines.append(f"unset {' '.join(HF_TOKEN_VARIABLES)}")
    environment = {**(OFFLINE_ENVIRONMENT if spec.offline else {}), **spec.environment}
    lines += [f"export {name}={shlex.quote(value)}" for name, value in environment.items()]
    task = " task ${SLURM_ARRAY_TASK_ID}" if spec.array is not None else ""
    lines.append(
        f'echo "{JOB_START_MARKER}${{SLURM_JOB_ID}}{task} on $(hostname)'
        f' CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-}}" >&2'
    )
    if spec.gpus_per_task:
        # CUDA_VISIBLE_DEVICES is left as Slurm set it; a GPU job without one would silently run on the CPU.
        lines.append(
            'if [[ -z "${CUDA_VISIBLE_DEVICES:-}" ]]; then echo "[slurm] this job asked for GPUs but Slurm set no '
            'CUDA_VISIBLE_DEVICES (gres.conf without File=?)" >&2; exit 3; fi'
        )
    lines.append(spec.script.rstrip("\n"))
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Bind:
    """A host folder seen inside the container at `target`."""

    source: Path
    target: str
    read_only: bool = True

    def spec(self) -> str:
        text = str(self.source)
        if "," in text or ":" in text:
            # apptainer --bind and pyxis --container-mounts split on both; there is no quoting.
            raise PlanError(f"{text}: a folder mounted into a container cannot contain ',' or ':'; rename it")
        return f"{text}:{self.target}" + (":ro" if self.read_only else "")


def container_binds(
    data_dir: Path,
    output_dir: Path,
    model_root: Path | None = None,
    image_root: Path | None = None,
    hf_cache: Path | None = None,
    kind: str = "runner",
) -> list[Bind]:
    """The docker engine's mounts for a task: data, checkpoints, images and (inference) the cache read-only, only
    the results writable."""
    binds = [Bind(data_dir, DATA_DIR), Bind(output_dir, RESULTS_DIR, read_only=False)]
    if model_root is not None:
        binds.append(Bind(model_root, MODELS_DIR))
    if image_root is not None:
        binds.append(Bind(image_root, IMAGES_DIR))
    if hf_cache is not None and kind == "runner":
        binds.append(Bind(hf_cache, HF_CACHE_DIR))
    return binds


@dataclass(frozen=True)
class ShardArguments:
    """The runner arguments that pick an array task's shard. Each word is a template: `{index}` becomes the task's
    index (expanded by bash from SLURM_ARRAY_TASK_ID), `{count}` the number of shards."""

    count: int
    words: tuple[str, ...] = ("--shard", "{index}/{count}")

    def render(self) -> list[str]:
        if self.count < 1:
            raise ValueError(f"shard count must be at least 1, not {self.count}")
        rendered = []
        for word in self.words:
            parts = word.replace("{count}", str(self.count)).split("{index}")
            # Literal parts quoted, the index left to bash: '--shard' / "${SLURM_ARRAY_TASK_ID}"'/3'
            rendered.append(f'"{ARRAY_INDEX}"'.join(shlex.quote(part) if part else "" for part in parts))
        return rendered


def render_command(
    runtime: Runtime,
    argv: Sequence[str],
    *,
    module: str = "runner",
    python: str = "python",
    image: str | None = None,
    binds: Sequence[Bind] = (),
    gpus: bool = False,
    environment: Mapping[str, str] | None = None,
    offline: bool = True,
    shard: ShardArguments | None = None,
    apptainer: str = "apptainer",
) -> str:
    """One shell line that runs `python -m MODULE ARGV` (plus the shard arguments) through a container runtime.

    none: the node's Python, exactly as the local engine runs it. apptainer: a SIF image with --containall (no host
    environment, home or /tmp), the binds read-only but the results, the GPUs with --nv. pyxis: `srun
    --container-image` in the job's allocation. The environment (offline switches, PYTHONUNBUFFERED, `environment`)
    travels on the line itself, so it reaches the process whatever the runtime cleans."""
    if runtime not in RUNTIMES:
        raise PlanError(f"container runtime {runtime!r}: one of {', '.join(RUNTIMES)}")
    variables = {**(OFFLINE_ENVIRONMENT if offline else {"PYTHONUNBUFFERED": "1"}), **(environment or {})}
    check_environment(variables)
    settings = [shlex.quote(f"{name}={value}") for name, value in variables.items()]
    process = [shlex.quote(python), "-m", shlex.quote(module), *map(shlex.quote, argv)]
    process += shard.render() if shard is not None else []
    if runtime == "none":
        return " ".join(["env", *settings, *process])
    if not image:
        raise PlanError(
            f"the {runtime} runtime needs an image (a .sif file for apptainer, a squashfs or URI for pyxis)"
        )
    mounts = [bind.spec() for bind in binds]
    if runtime == "apptainer":
        words = [shlex.quote(apptainer), "exec", "--containall", "--no-home", "--pwd", CONTAINER_WORKDIR]
        if gpus:
            # --containall drops the host environment: the GPUs Slurm gave the job are passed on by name.
            words += ["--nv", "--env", '"CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES}"']
        for mount in mounts:
            words += ["--bind", shlex.quote(mount)]
        for setting in settings:
            words += ["--env", setting]
        return " ".join([*words, shlex.quote(image), *process])
    # pyxis: the step inherits the job's GPUs; --export=ALL because sbatch's --export list would otherwise reach
    # the step too (SLURM_EXPORT_ENV), and `env` sets the variables for it.
    words = ["env", *settings, "srun", "--ntasks=1", "--export=ALL", shlex.quote(f"--container-image={image}")]
    if mounts:
        words.append(shlex.quote("--container-mounts=" + ",".join(mounts)))
    words += ["--no-container-mount-home", f"--container-workdir={CONTAINER_WORKDIR}", "--no-container-entrypoint"]
    return " ".join([*words, *process])


# --- states -------------------------------------------------------------------------------------------------------

TaskKey = tuple[str, int | None]  # (job id as sbatch printed it, array index or None)
GONE = "GONE"
FINISHED_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "SPECIAL_EXIT",
        "REVOKED",
        GONE,
    }
)
# Flags that mean "not over yet" whatever the base state says (Slurm 23.02+ lists them beside it).
ACTIVE_FLAGS = ("COMPLETING", "CONFIGURING", "REQUEUED", "RESIZING", "SIGNALING", "STAGE_OUT", "REQUEUE_HOLD")
NO_VALUE = 0xFFFFFFFE  # Slurm's NO_VAL / INFINITE in 32-bit fields


@dataclass(frozen=True)
class TaskState:
    """One job, or one array task, as the controller reports it."""

    job_id: str
    array_index: int | None
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, ..., GONE
    exit_code: int | None = None  # once finished
    signal: int | None = None  # the signal that ended it, if one did
    reason: str | None = None  # Slurm's reason (Resources, Dependency, NonZeroExitCode, ...)
    node: str | None = None

    @property
    def key(self) -> TaskKey:
        return (self.job_id, self.array_index)

    @property
    def label(self) -> str:
        return self.job_id if self.array_index is None else f"{self.job_id}_{self.array_index}"

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED" and self.exit_code == 0

    def describe(self) -> str:
        where = f" on {self.node}" if self.node else ""
        why = f" ({self.reason})" if self.reason else ""
        text = {
            "COMPLETED": f"completed{where}",
            "FAILED": f"failed with exit code {self.exit_code}{where}",
            "TIMEOUT": f"ran past its time limit and was killed (TIMEOUT){where}: ask for more with --slurm-arg time=",
            "OUT_OF_MEMORY": f"ran out of memory (OUT_OF_MEMORY){where}: ask for more with --slurm-runner-arg mem= "
            "or --slurm-scoring-arg mem=",
            "CANCELLED": f"was cancelled{where}{why}",
            "NODE_FAIL": f"lost its node{where} (NODE_FAIL)",
            "PENDING": f"is pending{why}",
            "RUNNING": f"is running{where}",
            GONE: f"is gone: {self.reason}",
        }.get(self.state, f"is {self.state}{where}{why}")
        if self.state == "FAILED" and self.signal:
            text += f", signal {self.signal}"
        return f"Slurm job {self.label} {text}"


def _number(value: object) -> int | None:
    """An integer field in either JSON shape (22.05: 7; 23.02+: {"set": true, "infinite": false, "number": 7})."""
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    return None if number >= NO_VALUE or number < 0 else number


def _state_name(value: object) -> str:
    flags = [str(v) for v in value] if isinstance(value, list) else [str(value or "UNKNOWN")]
    active = [flag for flag in flags if flag in ACTIVE_FLAGS]
    return active[0] if active else flags[0]


def _exit_status(value: object) -> tuple[int | None, int | None]:
    """(exit code, signal) from a wait status (22.05: an int) or {"return_code": ..., "signal": ...} (23.02+)."""
    if isinstance(value, dict):
        signal_field = value.get("signal")
        signal_id = _number(signal_field.get("id")) if isinstance(signal_field, dict) else None
        return _number(value.get("return_code")), signal_id or None
    status = _number(value)
    if status is None:
        return None, None
    return status >> 8, (status & 0x7F) or None


def expand_array_indices(text: str) -> list[int]:
    """Slurm's array task list (`0-4`, `1,3,5-9:2`, `[0-15%4]`) -> its indices."""
    indices: list[int] = []
    for part in text.strip().strip("[]").split("%")[0].split(","):
        if not part:
            continue
        span, _, step = part.partition(":")
        first, _, last = span.partition("-")
        indices += range(int(first), int(last or first) + 1, int(step or 1))
    return indices


def tasks_from_squeue_job(job: Mapping[str, object]) -> list[TaskState]:
    """The tasks one `squeue --json` job record stands for: one, or a pending/cancelled array's collapsed rest."""
    array_job = _number(job.get("array_job_id"))
    job_id = str(array_job) if array_job else str(_number(job.get("job_id")))
    state = _state_name(job.get("job_state"))
    reason = str(job.get("state_reason") or "") or None
    exit_code, signal = _exit_status(job.get("exit_code")) if state in FINISHED_STATES else (None, None)
    node = str(job.get("nodes") or job.get("batch_host") or "") or None
    common = {"state": state, "exit_code": exit_code, "signal": signal, "node": node}
    common["reason"] = None if reason == "None" else reason
    if not array_job:
        return [TaskState(job_id, None, **common)]  # type: ignore[arg-type]
    index = _number(job.get("array_task_id"))
    if index is not None:
        return [TaskState(job_id, index, **common)]  # type: ignore[arg-type]
    return [TaskState(job_id, i, **common) for i in expand_array_indices(str(job.get("array_task_string") or ""))]  # type: ignore[arg-type]


SCONTROL_FIELD = re.compile(r"(?:^|\s)(JobId|ArrayJobId|ArrayTaskId|JobState|Reason|ExitCode|NodeList)=(\S*)")


def tasks_from_scontrol(text: str) -> list[TaskState]:
    """`scontrol -o show job ID` (one line per task or collapsed pending array) -> tasks."""
    tasks = []
    for line in text.splitlines():
        fields = dict(SCONTROL_FIELD.findall(line))
        if "JobId" not in fields or "JobState" not in fields:
            continue
        state = _state_name(fields["JobState"])
        exit_code = signal = None
        if state in FINISHED_STATES and ":" in fields.get("ExitCode", ""):
            code, _, sig = fields["ExitCode"].partition(":")
            exit_code, signal = int(code), (int(sig) or None)
        node = fields.get("NodeList") if fields.get("NodeList") not in (None, "", "(null)") else None
        reason = fields.get("Reason") if fields.get("Reason") not in (None, "", "None") else None
        common = {"state": state, "exit_code": exit_code, "signal": signal, "reason": reason, "node": node}
        if "ArrayJobId" not in fields:
            tasks.append(TaskState(fields["JobId"], None, **common))  # type: ignore[arg-type]
        else:
            for index in expand_array_indices(fields.get("ArrayTaskId", "")):
                tasks.append(TaskState(fields["ArrayJobId"], index, **common))  # type: ignore[arg-type]
    return tasks


# --- the backend --------------------------------------------------------------------------------------------------

CLIENT_COMMANDS = ("sbatch", "squeue", "scontrol", "scancel")
# The probe job's exit codes, and what they mean.
PROBE_MISSING, PROBE_UNWRITABLE = 3, 4


@dataclass(frozen=True)
class SlurmInfo:
    version: str
    cluster: str | None
    controller: str


class SlurmBackend:
    """Submits jobs to the cluster the environment's Slurm configuration names (SLURM_CONF, or Slurm's default),
    and reads their states back. Job scripts are written into `job_dir`, which is also the default log folder."""

    def __init__(
        self,
        job_dir: Path,
        environ: Mapping[str, str] | None = None,
        command_timeout: float = 60,
        poll_interval: float = 2.0,
        query_retries: int = 2,
    ):
        self.job_dir = Path(job_dir)
        source = dict(os.environ if environ is None else environ)
        # The Slurm commands never see a credential (sbatch would otherwise be able to pass it on).
        self.environ = {name: value for name, value in source.items() if not SECRET_NAME.search(name)}
        self.command_timeout = command_timeout
        self.poll_interval = poll_interval
        self.query_retries = query_retries
        self._seen: dict[str, set[int | None]] = {}
        self._seen_lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._cancelled_runs: set[str] = set()

    # --- running the commands ---

    def _run(self, argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                argv,
                env=self.environ,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=timeout or self.command_timeout,
            )
        except FileNotFoundError:
            raise EngineError(f"{argv[0]} is not on PATH: {self._path_hint()}") from None
        except subprocess.TimeoutExpired:
            raise EngineError(
                f"`{shlex.join(argv)}` did not answer within {timeout or self.command_timeout:g} s "
                f"({self._conf_description()})"
            ) from None

    def _path_hint(self) -> str:
        return (
            f"install Slurm's client commands (Debian: slurm-client) or load the site's Slurm module "
            f"(PATH={self.environ.get('PATH', '')})"
        )

    def _conf_description(self) -> str:
        conf = self.environ.get("SLURM_CONF")
        if conf:
            return f"SLURM_CONF={conf}"
        return "SLURM_CONF is not set: Slurm reads its built-in default (usually /etc/slurm/slurm.conf) or DNS"

    # --- checks ---

    def check(self) -> SlurmInfo:
        """The client commands exist and the controller answers; EngineError saying which is not so."""
        missing = [name for name in CLIENT_COMMANDS if shutil.which(name, path=self.environ.get("PATH")) is None]
        if missing:
            raise EngineError(f"Slurm's {', '.join(missing)} not found: {self._path_hint()}")
        conf = self.environ.get("SLURM_CONF")
        if conf and not Path(conf).is_file():
            # Checked here: scontrol retries a missing configuration file for a minute.
            raise EngineError(f"SLURM_CONF={conf} is not a file: point SLURM_CONF at the cluster's slurm.conf")
        ping = self._run(["scontrol", "ping"])
        answer = (ping.stdout + ping.stderr).strip()
        up = re.search(r"Slurmctld\((\w+)\) at (\S+) is UP", ping.stdout)
        if ping.returncode != 0 or not up:
            raise EngineError(
                f"the Slurm controller does not answer ({self._conf_description()}): `scontrol ping` said: "
                f"{answer.splitlines()[0] if answer else f'nothing (exit {ping.returncode})'}. Is slurmctld running, "
                "and is this the cluster's configuration?"
            )
        version = self._run(["sbatch", "--version"]).stdout.split()
        config = self._run(["scontrol", "show", "config"]).stdout
        cluster = re.search(r"^ClusterName\s*=\s*(\S+)", config, re.MULTILINE)
        return SlurmInfo(
            version=version[-1] if version else "unknown",
            cluster=cluster.group(1) if cluster else None,
            controller=up.group(2),
        )

    def versions(self) -> dict[str, str]:
        info = self.check()
        return {"slurm": info.version, "slurm_cluster": info.cluster or "", "slurm_controller": info.controller}

    # --- submitting ---

    def sbatch_argv(self, spec: SlurmJobSpec, script_file: Path) -> list[str]:
        default_log = "%x-%A_%a.out" if spec.array is not None else "%x-%j.out"
        argv = [
            "sbatch",
            "--parsable",
            f"--job-name={spec.name}",
            f"--comment={spec.comment}",
            f"--output={spec.output or self.job_dir / default_log}",
            f"--chdir={spec.workdir or Path.cwd()}",
            "--open-mode=append",  # a requeued task adds to its log instead of wiping it
            "--kill-on-invalid-dep=yes",
        ]
        exported = [name for name in EXPORTED_VARIABLES if name in self.environ]
        argv.append("--export=" + (",".join(exported) if exported else "NONE"))
        if spec.error is not None:
            argv.append(f"--error={spec.error}")
        if spec.array is not None:
            argv.append(f"--array=0-{spec.array - 1}" + (f"%{spec.max_parallel}" if spec.max_parallel else ""))
        if spec.gpus_per_task:
            argv.append(f"--gres=gpu:{spec.gpu_type + ':' if spec.gpu_type else ''}{spec.gpus_per_task}")
        if spec.cpus_per_task is not None:
            argv.append(f"--cpus-per-task={spec.cpus_per_task}")
        if spec.memory is not None:
            argv.append(f"--mem={spec.memory}")
        if spec.dependency_afterany:
            argv.append("--dependency=afterany:" + ":".join(str(job) for job in spec.dependency_afterany))
        argv += [arg.argv() for arg in spec.extra_args]
        return [*argv, str(script_file)]

    def submit(self, spec: SlurmJobSpec) -> str:
        """Write the job script into job_dir and submit it; the job id sbatch printed."""
        if spec.setup is not None and not Path(spec.setup).is_file():
            raise PlanError(f"the Slurm setup file {spec.setup} does not exist (it is sourced at the top of every job)")
        with self._submit_lock:
            refused = [run for run in self._cancelled_runs if _mentions(spec.comment, run) or _mentions(spec.name, run)]
            if refused:
                raise EngineError(f"run {refused[0]} was cancelled: job {spec.name} is not submitted")
            self.job_dir.mkdir(parents=True, exist_ok=True)
            script_file = self.job_dir / f"{spec.name}.sbatch"
            script_file.write_text(render_job_script(spec), encoding="utf-8")
            script_file.chmod(0o755)
            argv = self.sbatch_argv(spec, script_file)
            done = self._run(argv)
            if done.returncode != 0:
                message = done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}"
                if spec.memory is not None and re.search(r"memory|node configuration", message, re.IGNORECASE):
                    message += (
                        f" (it asked for --mem={spec.memory}, the step's own estimate; give it another with "
                        "--slurm-runner-arg mem=... or --slurm-scoring-arg mem=..., docs/SCALING.md)"
                    )
                raise EngineError(f"sbatch refused job {spec.name}: {message} (script: {script_file})")
            job_id = done.stdout.strip().split(";")[0]
            if not JOB_ID.match(job_id):
                raise EngineError(f"sbatch printed no job id for {spec.name}: {done.stdout.strip()!r}")
            return job_id

    # --- states ---

    def _squeue_jobs(self) -> list[Mapping[str, object]] | None:
        """This user's job records the controller still holds, ended ones too; None where this squeue has no --json
        (before 21.08). Slurm 22.05 ignores filters with --json (so every user's jobs come, and are filtered here);
        newer ones honour --me."""
        argv = ["squeue", "--json", "--states=all", "--me"]
        failure = ""
        for attempt in range(self.query_retries + 1):
            done = self._run(argv)
            if done.returncode != 0 and re.search(r"unrecognized option|invalid option", done.stderr):
                return None
            try:
                answer = json.loads(done.stdout) if done.returncode == 0 else None
            except json.JSONDecodeError:
                answer = None
            if isinstance(answer, dict) and not answer.get("errors"):
                jobs = answer.get("jobs", [])
                return [job for job in jobs if isinstance(job, dict)]
            # squeue --json exits 0 with an "errors" list when the controller does not answer.
            errors = answer.get("errors") if isinstance(answer, dict) else None
            failure = json.dumps(errors) if errors else (done.stderr.strip() or f"exit {done.returncode}")
            if attempt < self.query_retries:
                time.sleep(min(2**attempt, 5))
        raise EngineError(f"squeue cannot read the job states ({self._conf_description()}): {failure}")

    def _scontrol_tasks(self, job_id: str) -> list[TaskState]:
        done = self._run(["scontrol", "-o", "show", "job", job_id])
        if done.returncode != 0:
            if "Invalid job id" in done.stderr:
                return []
            raise EngineError(f"scontrol cannot show job {job_id}: {done.stderr.strip()} ({self._conf_description()})")
        return tasks_from_scontrol(done.stdout)

    def states(self, job_ids: Iterable[str]) -> dict[TaskKey, TaskState]:
        """Every task of these jobs: from squeue, then scontrol for a job squeue no longer lists. A job neither
        knows any more (its record is purged MinJobAge seconds after it ended) is reported GONE, for each task this
        backend saw before (else once, index None): its end state is lost, and its outputs tell how it ended."""
        wanted = list(dict.fromkeys(str(job_id) for job_id in job_ids))
        found: dict[TaskKey, TaskState] = {}
        jobs = self._squeue_jobs()
        if jobs is not None:
            for job in jobs:
                for task in tasks_from_squeue_job(job):
                    if task.job_id in wanted:
                        found[task.key] = task
        listed = {job_id for job_id, _ in found}
        for job_id in wanted:
            if job_id not in listed:
                for task in self._scontrol_tasks(job_id):
                    if task.job_id == job_id:
                        found[task.key] = task
        with self._seen_lock:
            for job_id in wanted:
                present = {index for known_job, index in found if known_job == job_id}
                seen = self._seen.setdefault(job_id, set())
                lost = (seen - present) if (present or seen) else {None}
                for index in lost:
                    found[(job_id, index)] = TaskState(job_id, index, GONE, reason=self._gone_reason())
                seen |= present
        return found

    @staticmethod
    def _gone_reason() -> str:
        return (
            "neither squeue nor scontrol knows it (the controller forgets a job MinJobAge seconds after it ended, "
            "or it never ran on this cluster); its end state is lost, its outputs tell whether it succeeded"
        )

    def wait(
        self,
        job_ids: Iterable[str],
        timeout: float | None = None,
        on_change: Callable[[TaskState], None] | None = None,
    ) -> dict[TaskKey, TaskState]:
        """Poll until every task of these jobs finished; the final states. TimeoutError after `timeout` seconds
        (the jobs keep running: cancel them if they should not)."""
        wanted = list(job_ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        last: dict[TaskKey, TaskState] = {}
        while True:
            current = self.states(wanted)
            if on_change is not None:
                for key, task in current.items():
                    if last.get(key) != task:
                        on_change(task)
            last = current
            if current and all(task.finished for task in current.values()):
                return current
            if deadline is not None and time.monotonic() > deadline:
                waiting = [task.describe() for task in current.values() if not task.finished]
                raise TimeoutError(f"after {timeout:g} s: {'; '.join(waiting[:5])}")
            time.sleep(self.poll_interval)

    # --- cancelling ---

    def cancel(self, job_ids: Iterable[str]) -> None:
        """scancel these jobs (whole arrays); jobs already over are fine."""
        ids = [str(job_id) for job_id in job_ids]
        if not ids:
            return
        done = self._run(["scancel", *ids])
        errors = [line for line in done.stderr.splitlines() if line.strip()]
        harmless = ("already completing or completed", "Invalid job id", "Job/step already completing")
        serious = [line for line in errors if not any(text in line for text in harmless)]
        if done.returncode != 0 and serious:
            raise EngineError(f"scancel {' '.join(ids)} failed: {'; '.join(serious)}")

    def run_jobs(self, run_id: str, active_only: bool = True) -> list[str]:
        """Ids of this user's jobs whose comment or name carries `run_id` as a word, as squeue lists them now."""
        jobs = self._squeue_jobs()
        if jobs is None:
            done = self._run(["squeue", "--noheader", "--me", "--format=%A|%j|%k|%T"])
            rows = [line.split("|", 3) for line in done.stdout.splitlines() if line.count("|") >= 3]
            matched = [job for job, name, comment, state in rows if _mentions(f"{name} {comment}", run_id)]
            return sorted(set(matched), key=int)
        uid = os.getuid()
        matched = set()
        for job in jobs:
            if _number(job.get("user_id")) not in (None, uid):
                continue
            if not _mentions(f"{job.get('name', '')} {job.get('comment', '')}", run_id):
                continue
            tasks = tasks_from_squeue_job(job)
            if active_only and all(task.finished for task in tasks):
                continue
            matched.update(task.job_id for task in tasks)
        return sorted(matched, key=int)

    def cancel_run(self, run_id: str, timeout: float = 60) -> list[str]:
        """Cancel every job of a run, found through squeue by its comment/name (so a job submitted just before a
        Ctrl-C, whose id was never recorded, goes too), and wait until none of them is pending, running or
        completing. Later submits for this run are refused. The job ids cancelled."""
        if not run_id.strip():
            raise ValueError("cancel_run needs a run id")
        with self._submit_lock:  # an sbatch under way finishes first, so its job is found below
            self._cancelled_runs.add(run_id)
        cancelled: set[str] = set()
        deadline = time.monotonic() + timeout
        while True:
            active = self.run_jobs(run_id)
            if not active:
                return sorted(cancelled, key=int)
            if time.monotonic() > deadline:
                raise EngineError(f"jobs of run {run_id} still active {timeout:g} s after scancel: {', '.join(active)}")
            self.cancel(active)
            cancelled.update(active)
            time.sleep(0.5)

    # --- the results folder ---

    def wait_writable(
        self,
        folder: Path,
        timeout: float = 300,
        extra_args: Sequence[SlurmArg] = (),
        workdir: Path | None = None,
    ) -> None:
        """Run a tiny job that writes a probe file into `folder` and read it back here, before anything else is
        submitted: a results folder the compute nodes cannot see or write (or that this host does not share with
        them) fails now, with the reason, not after the first model ran."""
        folder = Path(folder).resolve()
        token = uuid.uuid4().hex[:12]
        probe = folder / f".slurm-write-probe-{token}"
        script = "\n".join(
            [
                f"folder={shlex.quote(str(folder))}",
                f"probe={shlex.quote(str(probe))}",
                'if [[ ! -d "$folder" ]]; then echo "[slurm] $folder does not exist on $(hostname)" >&2; '
                f"exit {PROBE_MISSING}; fi",
                'if ! (echo "${SLURM_JOB_ID} $(hostname)" > "$probe") 2>/dev/null; then '
                f'echo "[slurm] $(hostname) cannot write $folder" >&2; exit {PROBE_UNWRITABLE}; fi',
            ]
        )
        spec = SlurmJobSpec(
            name=f"write-probe-{token}",
            comment=f"vlm-ablation write probe {token}",
            script=script,
            output="/dev/null",  # the folder for logs may be the very one that is not visible
            extra_args=tuple(extra_args),
            offline=False,
            workdir=workdir or Path("/tmp"),
        )
        job_id = self.submit(spec)
        try:
            states = self.wait([job_id], timeout=timeout)
        except TimeoutError as error:
            self.cancel([job_id])
            raise EngineError(
                f"the job that checks the results folder {folder} did not finish within {timeout:g} s ({error}); "
                "nothing else was submitted"
            ) from None
        task = next(iter(states.values()))
        node = task.node or "the compute node"
        try:
            if task.state == "FAILED" and task.exit_code == PROBE_MISSING:
                raise EngineError(
                    f"the results folder {folder} does not exist on {node}: the compute nodes must see it at the same "
                    "path (a shared filesystem); pass an --output-dir there"
                )
            if task.state == "FAILED" and task.exit_code == PROBE_UNWRITABLE:
                raise EngineError(f"{node} cannot write the results folder {folder} (permissions, read-only mount)")
            if not task.ok:
                raise EngineError(f"the job that checks the results folder {folder} did not succeed: {task.describe()}")
            try:
                written = probe.read_text().split()
            except OSError:
                written = []
            if not written or written[0] != job_id:
                raise EngineError(
                    f"{node} wrote {probe}, but this host does not see it there: {folder} is not the same folder on "
                    "this host and the compute nodes (a shared filesystem is needed)"
                )
        finally:
            probe.unlink(missing_ok=True)


def _mentions(text: str, run_id: str) -> bool:
    """`run_id` appears in `text` as a whole word (run abc never matches abcd's jobs)."""
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(run_id)}(?![A-Za-z0-9])", text) is not None
