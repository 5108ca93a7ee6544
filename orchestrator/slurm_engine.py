"""The slurm engine: an ablation as jobs of a Slurm cluster.

Each model is ONE job array whose tasks are its shards (`--shards N`, one runner each, `--gres=gpu:G` per task); the
scoring step is one job that starts after all of them, however they ended (`afterany`: `afterok` would pend forever
after one failure), merges each model's shards and scores the models whose shards are complete. Every job runs the
same command line as the other engines, through a container runtime (orchestrator.slurm.render_command): `none`
(the node's Python), `apptainer` (a .sif per family) or `pyxis` (enroot via srun). The results folder must be on a
filesystem every node sees at the same path: a probe job checks that before anything else is submitted. Every job
asks for the memory its step needs (orchestrator.resources: `--mem`, and the scoring job's `--cpus-per-task`), unless
the user's --slurm-arg / --slurm-runner-arg / --slurm-scoring-arg name their own; a job killed for memory is reported
as out of memory, with what it asked for and the option that raises it.

The orchestrator then watches: task states from squeue/scontrol (never sacct alone), sample counts from the shard
files, the same console and exit codes as the other engines; Ctrl-C cancels every job of the run. `--detach`
submits and returns; `python -m orchestrator status --output-dir DIR` reports such a run, and rerunning the same
command resumes what is missing (finished shards have nothing to do).
"""

from __future__ import annotations

import math
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from contract import PREDICTIONS_JSONL, RunnerProgress, results_file
from contract.shards import Shard
from orchestrator.ablation import LOGS_DIR
from orchestrator.engines import (
    Engine,
    EngineError,
    LineSink,
    LocalEngine,
    RunPaths,
    Task,
    TaskKind,
    TaskResult,
    container_mounts,
)
from orchestrator.plan import GpuSelection, Plan, PlanError
from orchestrator.resources import (
    StepResources,
    memory_kill_in_log,
    out_of_memory_message,
    runner_resources,
    scoring_resources,
)
from orchestrator.slurm import (
    CPU_OPTIONS,
    JOB_START_MARKER,
    MEMORY_OPTIONS,
    Bind,
    Runtime,
    ShardArguments,
    SlurmArg,
    SlurmBackend,
    SlurmJobSpec,
    TaskState,
    given,
    render_command,
    step_args,
)

if TYPE_CHECKING:
    from orchestrator.ablation import Ablation, ModelOutcome

SLURM_DIR = "slurm"  # job scripts and Slurm's own logs, inside the results folder
SCORING_LOG = "scoring.slurm.log"  # the scoring job's output, in the results folder's logs/
POLL_S = 2.0


# The per-step options, as the user types them: what raises a step's memory in the out-of-memory message.
RUNNER_ARG_OPTION = "--slurm-runner-arg"
SCORING_ARG_OPTION = "--slurm-scoring-arg"


@dataclass
class SlurmSettings:
    runtime: Runtime = "none"
    slurm_args: tuple[SlurmArg, ...] = ()  # every job
    runner_args: tuple[SlurmArg, ...] = ()  # runner tasks only, over slurm_args
    scoring_args: tuple[SlurmArg, ...] = ()  # the scoring job only, over slurm_args
    setup: Path | None = None  # sourced at the top of every job
    gpus_per_task: int = 1
    gpu_type: str | None = None
    cpus_per_task: int | None = None
    sif_dir: Path | None = None  # apptainer: <sif_dir>/<family>.sif (make sif)
    python: str = sys.executable  # runtime none: the interpreter on the nodes (a shared venv)


@dataclass
class SubmittedModel:
    job_id: str
    tasks: int


@dataclass
class Submitted:
    run_id: str
    models: dict[str, SubmittedModel] = field(default_factory=dict)
    scoring_job: str | None = None
    # What each job asked for: {"scoring" | model: {"memory": "--mem=12288M", "cpus": 2, "estimate": "...",
    # "source": "estimate" | "option"}}
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)


def resource_request(
    args: tuple[SlurmArg, ...], estimate: StepResources, cpus: int | None
) -> tuple[str | None, int | None, dict[str, Any]]:
    """(--mem value, --cpus-per-task, the record) for a job: the engine's figures, unless the job's options already
    name memory or CPUs (the user's word wins)."""
    memory_arg, cpu_arg = given(args, MEMORY_OPTIONS), given(args, CPU_OPTIONS)
    memory = None if memory_arg else estimate.slurm_mem
    asked = memory_arg.argv() if memory_arg else f"--mem={memory}"
    cpus = None if cpu_arg else cpus
    record = {
        "memory": asked,
        "cpus": cpu_arg.argv() if cpu_arg else cpus,
        "estimate": estimate.basis,
        "source": "option" if memory_arg else "estimate",
    }
    return memory, cpus, record


class SlurmEngine(Engine):
    name = "slurm"
    batch_jobs = True  # the ablation submits everything, then watches (Ablation.run)
    scoring_log = SCORING_LOG

    def __init__(self, settings: SlurmSettings, run_id: str | None = None, environ: dict[str, str] | None = None):
        self.settings = settings
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.environ = environ
        self.backend: SlurmBackend | None = None
        self._plan: Plan | None = None
        self._local = LocalEngine()  # the fetch step runs here, on the submit host (compute nodes rarely reach the Hub)

    # --- checks before any work --------------------------------------------------------------------------------

    def scores_with_host_files(self) -> bool:
        return self.settings.runtime == "none"  # the nodes see this host's files (the results folder proves it)

    def preflight(self, plan: Plan, images: list[str]) -> None:
        self._plan = plan
        self.backend = SlurmBackend(plan.output_dir / SLURM_DIR, environ=self.environ)
        self.backend.check()
        if self.settings.setup is not None and not self.settings.setup.is_file():
            raise PlanError(f"--slurm-setup {self.settings.setup}: file not found")
        if self.settings.runtime == "apptainer":
            missing = [str(self.sif(image)) for image in dict.fromkeys(images) if not self.sif(image).is_file()]
            if missing:
                raise PlanError(
                    f"apptainer image(s) not found: {', '.join(missing)}; build them with `make sif` (or pass "
                    "--sif-dir where they are)"
                )
        # The results folder must be the same folder on this host and on the nodes: proven by a probe job.
        self.backend.wait_writable(plan.output_dir, extra_args=self.settings.slurm_args, workdir=plan.output_dir)

    def sif(self, image: str) -> Path:
        """The .sif of a Docker image reference: <sif_dir>/<name>.sif (vlm-ablation/llava:latest -> llava.sif)."""
        if image.endswith(".sif"):
            return Path(image)
        folder = self.settings.sif_dir or Path("images/sif")
        return folder / (image.rsplit("/", 1)[-1].split(":", 1)[0] + ".sif")

    def paths(self, plan: Plan) -> RunPaths:
        if self.settings.runtime == "none":
            return self._local.paths(plan)
        return RunPaths.in_container(plan)

    def resolve_gpus(self, requested: GpuSelection | None) -> GpuSelection:
        # Slurm allocates each task its GPUs (--gres) and sets CUDA_VISIBLE_DEVICES; the runner uses what it sees.
        if (requested is not None and requested.mode == "none") or self.settings.gpus_per_task == 0:
            return GpuSelection("none")
        return GpuSelection("all")

    def describe_gpus(self) -> str:
        if self.settings.gpus_per_task == 0:
            return "no GPU: CPU tasks"
        kind = f"{self.settings.gpu_type}:" if self.settings.gpu_type else ""
        return f"--gres=gpu:{kind}{self.settings.gpus_per_task} per task"

    def versions(self) -> dict[str, str]:
        return self.backend.versions() if self.backend else {}

    # --- running -------------------------------------------------------------------------------------------------

    def run(self, task: Task, sink: LineSink) -> TaskResult:
        """Only the fetch step runs as a plain task: on this host, with network (the jobs run offline)."""
        if task.kind != "fetch":
            raise EngineError("the slurm engine runs runners and scoring as jobs (submit_ablation)")
        if self._plan is not None and self._plan.hf_cache is not None:
            # The fetch runs here, not in a container: the cache at its host path, whatever the jobs' runtime sees.
            task.environment = {**task.environment, "HF_HOME": str(self._plan.hf_cache)}
        return self._local.run(task, sink)

    def stop_all(self) -> None:
        if self.backend is not None:
            self.backend.cancel_run(self.run_id)

    # --- jobs ----------------------------------------------------------------------------------------------------

    def _binds(self, plan: Plan, kind: TaskKind) -> list[Bind]:
        return [Bind(source, target, read_only) for source, target, read_only in container_mounts(plan, kind)]

    def _command(self, plan: Plan, image: str, module: str, argv: list[str], shards: int | None) -> str:
        runtime = self.settings.runtime
        image_ref = str(self.sif(image)) if runtime == "apptainer" else image
        return render_command(
            runtime,
            argv,
            module=module,
            python=self.settings.python if runtime == "none" else "python",
            image=None if runtime == "none" else image_ref,
            binds=self._binds(plan, "runner" if module == "runner" else "scoring"),
            gpus=module == "runner" and self.settings.gpus_per_task > 0,
            shard=ShardArguments(shards) if shards else None,
        )

    def submit_ablation(self, ablation: Ablation) -> Submitted:
        """One array per runnable model (its shards), then the scoring job after all of them."""
        from orchestrator.ablation import image_for, runner_argv, scoring_argv

        plan = ablation.plan
        assert plan is not None and self.backend is not None
        settings, options = self.settings, ablation.options
        paths = self.paths(plan)
        logs = plan.output_dir / LOGS_DIR
        logs.mkdir(parents=True, exist_ok=True)
        submitted = Submitted(run_id=self.run_id)
        time_limit = _minutes(options.timeout)
        timed = settings.slurm_args + ((SlurmArg("time", time_limit),) if time_limit else ())
        runner_args = step_args(timed, settings.runner_args)
        shards = options.shards
        for outcome in ablation.outcomes:
            if outcome.record.status == "failed":
                continue  # its fetch failed
            spec, record = outcome.spec, outcome.record
            revision = record.resolved_revision or record.revision
            argv = runner_argv(plan, spec, paths, ablation.gpus, revision)
            estimate = runner_resources(plan, spec, gpu=settings.gpus_per_task > 0, revision=revision)
            memory, cpus, request = resource_request(runner_args, estimate, settings.cpus_per_task)
            job = SlurmJobSpec(
                name=f"vlm-{self.run_id}-{_job_word(spec.name)}",
                comment=f"vlm-ablation run {self.run_id} model {spec.name}",
                script=self._command(plan, image_for(options, spec), "runner", argv, shards if shards > 1 else None),
                array=shards,
                gpus_per_task=settings.gpus_per_task,
                gpu_type=settings.gpu_type,
                cpus_per_task=cpus,
                memory=memory,
                extra_args=runner_args,
                output=str(logs / f"{spec.name}.shard-%a.slurm.log"),
                setup=settings.setup,
                workdir=plan.output_dir,
            )
            job_id = self.backend.submit(job)
            submitted.models[spec.name] = SubmittedModel(job_id=job_id, tasks=shards)
            submitted.requests[spec.name] = request
            record.slurm_job_id = job_id  # type: ignore[attr-defined]
            record.status, record.started_at = "pending", record.started_at or _now()
        if submitted.models:
            names = list(submitted.models)
            argv = scoring_argv(plan, paths, names) + ["--skip-incomplete"]
            scoring_args = step_args(settings.slurm_args, settings.scoring_args)
            estimate = scoring_resources(plan, len(names))
            memory, cpus, request = resource_request(scoring_args, estimate, estimate.cpus)
            job = SlurmJobSpec(
                name=f"vlm-{self.run_id}-scoring",
                comment=f"vlm-ablation run {self.run_id} scoring",
                script=self._command(plan, ablation.scoring_record["image"] or "", "scoring", argv, None),
                cpus_per_task=cpus,
                memory=memory,
                extra_args=scoring_args,
                dependency_afterany=tuple(m.job_id for m in submitted.models.values()),
                output=str(logs / self.scoring_log),
                setup=settings.setup,
                workdir=plan.output_dir,
                offline=True,
            )
            submitted.scoring_job = self.backend.submit(job)
            submitted.requests["scoring"] = request
        ablation.console.line(describe_requests(submitted.requests))
        return submitted

    def watch(self, ablation: Ablation, submitted: Submitted) -> bool | None:
        """Until the scoring job ends: per-model progress, each model's record when its last task ends. Returns
        whether scoring succeeded (None: nothing was scored)."""
        assert self.backend is not None and ablation.plan is not None
        outcomes = {o.spec.name: o for o in ablation.outcomes if o.spec.name in submitted.models}
        for name in outcomes:
            ablation.console.start_progress(name)
        finished: set[str] = set()
        ids = [m.job_id for m in submitted.models.values()] + ([submitted.scoring_job] if submitted.scoring_job else [])
        while True:
            states = self.backend.states(ids)
            for name, outcome in outcomes.items():
                job = submitted.models[name]
                tasks = [states[key] for key in states if key[0] == job.job_id]
                ablation.console.update_progress(name, self._progress(ablation, outcome, tasks))
                if name not in finished and tasks and all(task.finished for task in tasks):
                    finished.add(name)
                    ablation.console.end_progress(name)
                    self._finish(ablation, outcome, tasks, submitted.requests.get(name))
            scoring = [states[key] for key in states if key[0] == submitted.scoring_job]
            if not submitted.scoring_job:
                return None
            if scoring and scoring[0].finished and len(finished) == len(outcomes):
                if not scoring[0].ok:
                    log = ablation.plan.output_dir / LOGS_DIR / self.scoring_log
                    message = failure_reason(scoring[0], log, submitted.requests.get("scoring"), SCORING_ARG_OPTION)
                    ablation.record_scoring("failed", message)
                    ablation.console.line(f"scoring FAILED: {message} ({ablation.scoring_log_hint()})")
                return scoring[0].ok
            time.sleep(POLL_S)

    def _progress(self, ablation: Ablation, outcome: ModelOutcome, tasks: list[TaskState]) -> RunnerProgress:
        """Samples on disk (shard files or the merged file) and the tasks' states, as the console shows them."""
        plan = ablation.plan
        assert plan is not None
        count = ablation.options.shards
        files = [results_file(plan.output_dir, PREDICTIONS_JSONL, outcome.spec.name)] if count == 1 else [
            Shard(index, count).predictions(plan.output_dir, outcome.spec.name) for index in range(count)
        ]  # fmt: skip
        done = sum(_lines(path) for path in files)
        running = sum(1 for task in tasks if task.state == "RUNNING")
        phase = "generating" if running or done else "loading"
        return RunnerProgress(phase=phase, done=min(done, plan.num_samples), total=plan.num_samples)

    def _finish(
        self, ablation: Ablation, outcome: ModelOutcome, tasks: list[TaskState], request: dict[str, Any] | None
    ) -> None:
        record = outcome.record
        assert ablation.plan is not None
        failures = [task for task in tasks if not task.ok]
        if not failures:
            record.status, record.message = "completed", None
        else:
            record.status = "failed"
            record.message = model_failure(ablation.plan.output_dir, record.model_name, failures, len(tasks), request)
        record.finished_at = _now()
        ablation._read_run_manifest(outcome)
        total = len(ablation.outcomes)
        state = "completed" if record.status == "completed" else f"FAILED: {record.message}"
        ablation.console.line(f"[{outcome.index}/{total}] {record.model_name} {state} at {_clock()}")
        ablation.write_manifest()


def describe_requests(requests: dict[str, dict[str, Any]]) -> str:
    """One console line: the memory (and CPUs) the jobs asked for, and how to change it."""
    runners = sorted({str(r["memory"]) for name, r in requests.items() if name != "scoring"})
    words = [f"runner tasks {', '.join(runners)}"] if runners else []
    scoring = requests.get("scoring")
    if scoring:
        cpus = scoring.get("cpus")
        cpus_text = f" {cpus}" if isinstance(cpus, str) else f" --cpus-per-task={cpus}" if cpus else ""
        words.append(f"scoring {scoring['memory']}{cpus_text}")
    return (
        f"asked for: {'; '.join(words)} (change with {RUNNER_ARG_OPTION} / {SCORING_ARG_OPTION} mem=...; "
        "docs/SCALING.md)"
    )


def runner_log(output_dir: Path, model: str, index: int | None) -> Path:
    """The Slurm log of one runner task (the `output=` pattern of submit_ablation, %a filled in)."""
    return output_dir / LOGS_DIR / f"{model}.shard-{index or 0}.slurm.log"


def model_failure(
    output_dir: Path, model: str, failures: list[TaskState], tasks: int, request: dict[str, Any] | None
) -> str:
    """Why a model's tasks failed, one reason per failed task, in the words of the closing block and manifest."""
    return "; ".join(
        failure_reason(task, runner_log(output_dir, model, task.array_index), request, RUNNER_ARG_OPTION, tasks > 1)
        for task in failures
    )


def failure_reason(
    task: TaskState, log: Path | None, request: dict[str, Any] | None, option: str, sharded: bool = False
) -> str:
    """_reason, but a task the cluster killed for memory (OUT_OF_MEMORY, or FAILED with slurmstepd's "exceeded memory
    limit" in its log, as jobacct_gather's OverMemoryKill leaves it) is "out of memory" with the figure it asked for
    and the option that raises it."""
    killed, used, limit = memory_kill_in_log(log, since=JOB_START_MARKER) if not task.ok else (False, None, None)
    if task.state == "OUT_OF_MEMORY" or (killed and task.state in ("FAILED", "CANCELLED")):
        shard = f"shard {task.array_index}: " if sharded and task.array_index is not None else ""
        asked = (request or {}).get("memory")
        return shard + out_of_memory_message(asked, f"{option} mem=", used, limit)
    return _reason(task, sharded=sharded)


def _reason(task: TaskState, sharded: bool = True) -> str:
    """Why a task failed, in the words the closing block and the manifest use: timeout, cancelled, exit code."""
    shard = f"shard {task.array_index}: " if sharded and task.array_index is not None else ""
    words = {
        "TIMEOUT": "timeout (the job ran past its time limit)",
        "CANCELLED": "cancelled",
        "OUT_OF_MEMORY": "out of memory",
        "NODE_FAIL": "its node failed",
    }
    if task.state in words:
        return shard + words[task.state]
    if task.state == "FAILED":
        return shard + f"exited with code {task.exit_code}"
    return shard + task.describe()


def _minutes(seconds: float | None) -> str | None:
    """--timeout in seconds as sbatch --time minutes (Slurm counts whole minutes; rounded up)."""
    return None if seconds is None else str(max(1, math.ceil(seconds / 60)))


def _job_word(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_.+-" else "-" for c in name)[:80]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def _now() -> str:
    from orchestrator.ablation import iso, now

    return iso(now())


def _clock() -> str:
    from orchestrator.console import clock

    return clock()


def submitted_from_manifest(manifest: Any) -> Submitted:
    """The jobs of a (detached) run, as its run_manifest.json recorded them."""
    slurm = getattr(manifest, "slurm", None) or {}
    submitted = Submitted(run_id=slurm.get("run_id", ""), scoring_job=slurm.get("scoring_job"))
    for record in manifest.models:
        job_id = getattr(record, "slurm_job_id", None)
        if job_id:
            submitted.models[record.model_name] = SubmittedModel(job_id=job_id, tasks=int(slurm.get("shards", 1)))
    return submitted
