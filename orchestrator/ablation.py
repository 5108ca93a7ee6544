"""One ablation: fetch weights (network on), run every model (network off), then ONE scoring task over all
predictions, and write `run_manifest.json`. A model that fails is recorded as failed and the ablation goes on;
its partial predictions stay where they are and the next run resumes them."""

from __future__ import annotations

import json
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from contract import (
    ABLATION_MANIFEST,
    COMPARISON_CSV,
    COMPARISON_MD,
    COMPARISON_TEX,
    HUMAN_BASELINE,
    METRICS_JSON,
    PREDICTIONS_CSV,
    PREDICTIONS_JSONL,
    REPORT_HTML,
    RUN_MANIFEST,
    RUNNER_RESULT_PREFIX,
    SAMPLE_SCORES_JSONL,
    SCORING_RESULT_PREFIX,
    STALE_SUFFIX,
    SUMMARY_JSON,
    AblationManifest,
    MetricsFile,
    ModelRunRecord,
    PredictionRecord,
    RunManifest,
    RunnerResult,
    ScoringRecord,
    ScoringResult,
    read_json,
    read_jsonl,
    results_file,
    write_json_atomic,
)
from contract.shards import Shard, shards_on_disk
from orchestrator.console import DEMO_NOTICE, Console, clock, duration, metric_line
from orchestrator.engines import HF_TOKEN_VARIABLES, Engine, RunPaths, Task, TaskResult
from orchestrator.hub_fetch import FETCH_RESULT_PREFIX
from orchestrator.plan import (
    AblationOptions,
    GpuSelection,
    Plan,
    PlanError,
    build_plan,
    check_scoring_here,
    parse_gpus,
)
from runner.registry import BUILTIN_CATALOGUE, HUB_PREFIX, ModelSpec

SCORING_IMAGE = "vlm-ablation/scoring:latest"
LOGS_DIR = "logs"
HUMAN_ROW_LABEL = "human (reference)"  # the human baseline's line under the ranked ones
PREVIOUS_MANIFEST = "run_manifest.previous.json"  # the folder's one earlier manifest


def now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


@dataclass
class ModelOutcome:
    spec: ModelSpec
    index: int
    record: ModelRunRecord
    seconds: float = 0.0
    written: int = 0  # predictions on disk after the run (all shards)
    started_clock: float = 0.0
    shard_results: dict[int, tuple[bool, str | None, RunnerResult | None]] = field(default_factory=dict)


@dataclass
class AblationOutcome:
    plan: Plan
    manifest_path: Path
    models: list[ModelOutcome]
    scoring_ok: bool | None
    seconds: float
    interrupted: bool = False
    detached: bool = False  # slurm --detach: submitted, not waited for
    result_files: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> list[ModelOutcome]:
        return [m for m in self.models if m.record.status != "completed"]

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        if self.detached:
            return 0
        return 0 if not self.failed and self.scoring_ok is not False else 1


def make_engine(
    name: str, container_user: str | None = None, memory: str | None = None, options: AblationOptions | None = None
) -> Engine:
    """`docker`, `local`, `slurm`, or `auto` (docker when an engine answers at DOCKER_HOST, else local)."""
    from orchestrator.engines import LocalEngine

    if name == "local":
        return LocalEngine()
    if name == "slurm":
        from orchestrator.slurm import parse_slurm_args
        from orchestrator.slurm_engine import SlurmEngine, SlurmSettings

        options = options or AblationOptions(models=[], data_file=Path(), output_dir=Path())
        if options.container_runtime not in ("none", "apptainer", "pyxis"):
            raise PlanError(f"--container-runtime {options.container_runtime!r}: one of none, apptainer, pyxis")
        settings = SlurmSettings(
            runtime=options.container_runtime,  # type: ignore[arg-type]
            slurm_args=parse_slurm_args(options.slurm_args),
            runner_args=parse_slurm_args(options.slurm_runner_args),
            scoring_args=parse_slurm_args(options.slurm_scoring_args),
            setup=options.slurm_setup.resolve() if options.slurm_setup else None,
            gpus_per_task=options.slurm_gpus,
            gpu_type=options.slurm_gpu_type,
            sif_dir=options.sif_dir.resolve() if options.sif_dir else None,
        )
        return SlurmEngine(settings)
    from orchestrator import docker_engine

    if name == "docker" or (name == "auto" and docker_engine.engine_answers()):
        return docker_engine.DockerEngine(user=container_user, memory=memory)
    if name == "auto":
        return LocalEngine()
    raise PlanError(f"--engine {name!r}: expected auto, docker, local or slurm")


def image_for(options: AblationOptions, spec: ModelSpec) -> str:
    return options.images.get(spec.family, spec.image_ref)


def data_format_argv(plan: Plan) -> list[str]:
    """--data-format and --split as the user gave them (the runner and scoring detect the format as the plan did)."""
    options = plan.options
    return (["--data-format", options.data_format] if options.data_format else []) + (
        ["--split", options.split] if options.split else []
    )


def runner_argv(
    plan: Plan, spec: ModelSpec, paths: RunPaths, gpus: GpuSelection, revision: str | None, shard: int | None = None
) -> list[str]:
    """The runner CLI's arguments; the same for every engine but for the paths (and the shard)."""
    options = plan.options
    argv = ["--model", spec.reference, "--data", paths.data_file, "--output-dir", paths.output_dir]
    argv += data_format_argv(plan)
    if paths.models_file:
        argv += ["--models-file", paths.models_file]
    batch_size = options.batch_sizes.get(spec.name, options.batch_size)
    argv += ["--batch-size", str(batch_size), "--max-new-tokens", str(options.max_new_tokens)]
    if paths.model_root:
        argv += ["--model-path", f"{paths.model_root}/{spec.name}"]
    elif revision:
        argv += ["--revision", revision]
    if gpus.mode == "none":
        argv += ["--device", "cpu"]
    if options.dtype:
        argv += ["--dtype", options.dtype]
    if options.prompt_template:
        argv += ["--prompt-template", options.prompt_template]
    if paths.image_root:
        argv += ["--image-root", paths.image_root]
    if options.limit:
        argv += ["--limit", str(options.limit)]
    if options.decode:
        argv += ["--decode", options.decode]
    if options.reuse_images:
        argv += ["--reuse-images", options.reuse_images]
    if options.shards > 1 and shard is not None:
        argv += ["--shard", f"{shard}/{options.shards}"]
    return argv + ["--progress", "json"]  # rendered live by the console


def scoring_argv(plan: Plan, paths: RunPaths, models: list[str]) -> list[str]:
    predictions = [f"{paths.output_dir}/{PREDICTIONS_JSONL.format(model=m)}" for m in models]
    argv = ["score", "--predictions", *predictions, "--output-dir", paths.output_dir, "--data", paths.data_file]
    argv += data_format_argv(plan)
    if plan.options.limit:
        argv += ["--limit", str(plan.options.limit)]  # score exactly the subset the runners captioned
    if plan.options.shards > 1:
        argv += ["--merge-shards", str(plan.options.shards)]
    if plan.options.metrics:
        argv += ["--metrics", plan.options.metrics]
    if not plan.options.human_baseline:
        argv += ["--no-human-baseline"]
    return argv + (["--report"] if plan.options.report else [])


def last_prefixed(lines: list[str], prefix: str) -> str | None:
    for line in reversed(lines):
        if line.startswith(prefix):
            return line[len(prefix) :]
    return None


@contextmanager
def hf_token_file(owner: tuple[int, int] | None) -> Iterator[Path | None]:
    """The Hub token of this process's environment (HF_TOKEN), as a private file for the fetch step only, removed
    afterwards: a file is never shown by `docker inspect` or /proc/<pid>/environ. None when there is no token.
    `owner`: the uid:gid the fetch container runs as (it must read the file)."""
    token = next((os.environ[name] for name in HF_TOKEN_VARIABLES if os.environ.get(name)), None)
    if token is None:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="vlm-ablation-token-"))
    path = folder / "token"
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(token)
        if owner is not None and os.getuid() == 0 and owner != (0, 0):
            os.chown(path, *owner)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class Ablation:
    def __init__(self, options: AblationOptions, engine: Engine, console: Console | None = None):
        self.options = options
        self.engine = engine
        self.console = console or Console()
        self.plan: Plan | None = None
        self.outcomes: list[ModelOutcome] = []
        self.started = now()
        self.scoring_record: dict[str, str | None] = {"image": None, "digest": None}
        self.gpus = GpuSelection("none")
        self.versions: dict[str, str] = {}
        self.random_weights = False  # a tiny random-weight checkpoint ran: the closing block says so
        self._lock = threading.Lock()  # tasks of one model may end on several worker threads
        self.slurm_record: dict[str, Any] | None = None  # the slurm engine's run id and scoring job
        self.scoring_state: ScoringRecord | None = None  # how the scoring step ended (None: not reached yet)
        self.human_baseline: str | None = None  # the human reference row's name, when scoring made one

    # --- manifest ------------------------------------------------------------------------------------------

    def manifest(self, finished: datetime | None = None) -> AblationManifest:
        assert self.plan is not None
        arguments = self.options.as_arguments() | {"engine": self.engine.name, "gpus_resolved": self.gpus.describe()}
        return AblationManifest(
            engine=self.engine.name,  # type: ignore[arg-type]
            arguments=arguments,
            data_file=str(self.plan.data_file),
            data_sha256=self.plan.data_sha256,
            data_format=self.plan.data_format,
            data_split=self.plan.data_split,
            models=[outcome.record for outcome in self.outcomes],
            versions=self.versions,
            scoring_image=self.scoring_record["image"],
            scoring_image_digest=self.scoring_record["digest"],
            started_at=iso(self.started),
            finished_at=iso(finished) if finished else None,
            num_samples=self.plan.num_samples,
            slurm=self.slurm_record,
            catalogue_entries={
                spec.name: spec.model_dump(exclude={"name", "source"}, exclude_defaults=True)
                for spec in self.plan.specs
                if spec.source not in (str(BUILTIN_CATALOGUE), HUB_PREFIX)
            },
            scoring=self.scoring_state,
            engine_settings=self.options.engine_settings(self.engine.name),
        )

    def record_scoring(self, status: str, message: str | None = None, result: ScoringResult | None = None) -> None:
        """The scoring step's state in the manifest: running, then how it ended (every engine), and what it scored
        or found up to date when it said so."""
        finished = None if status == "running" else iso(now())
        self.scoring_state = ScoringRecord(
            status=status,  # type: ignore[arg-type]
            message=message,
            finished_at=finished,
            scored=result.scored if result else None,
            up_to_date=result.up_to_date if result else None,
        )
        self.write_manifest()

    def scoring_log_hint(self) -> str:
        """Where the scoring step's output is, as a path that exists (or that none was written)."""
        assert self.plan is not None
        name = getattr(self.engine, "scoring_log", "scoring.scoring.log")
        log = self.plan.output_dir / LOGS_DIR / name
        return f"see {LOGS_DIR}/{name}" if log.is_file() else "it wrote no log"

    def write_manifest(self, finished: datetime | None = None) -> Path:
        assert self.plan is not None
        path = results_file(self.plan.output_dir, ABLATION_MANIFEST)
        write_json_atomic(path, self.manifest(finished))
        # The scoring report reads it, possibly as another uid (containers never run as root); it holds no secret.
        path.chmod(0o644)
        return path

    def _move_previous_results(self) -> None:
        """--overwrite: the planned models' earlier result files, and the folder's summary and report made from
        them, go into `replaced-<time>/` in the results folder (never deleted); the console says where."""
        assert self.plan is not None
        out = self.plan.output_dir
        patterns = (PREDICTIONS_JSONL, PREDICTIONS_CSV, RUN_MANIFEST, METRICS_JSON, SAMPLE_SCORES_JSONL)
        paths: list[Path] = []
        for spec in self.plan.specs:
            paths += [results_file(out, pattern, spec.name) for pattern in patterns]
            for shard in shards_on_disk(out, spec.name):
                paths += [shard.predictions(out, spec.name), shard.manifest(out, spec.name)]
        paths += [out / name for name in (SUMMARY_JSON, COMPARISON_CSV, COMPARISON_MD, COMPARISON_TEX, REPORT_HTML)]
        paths += [path.with_name(path.name + STALE_SUFFIX) for path in list(paths)]
        present = [path for path in dict.fromkeys(paths) if path.is_file()]
        if not present:
            return
        target = out / f"replaced-{now().strftime('%Y%m%dT%H%M%SZ')}"
        target.mkdir()
        for path in present:
            os.replace(path, target / path.name)
        self.console.line(f"--overwrite: moved {len(present)} earlier result file(s) to {target}/")

    def _keep_previous_manifest(self) -> None:
        """The folder's earlier manifest (a finished ablation, or the run this one resumes) is kept as ONE previous
        manifest, replacing an older one: reruns never pile up dated copies."""
        assert self.plan is not None
        path = results_file(self.plan.output_dir, ABLATION_MANIFEST)
        if path.exists():
            kept = path.with_name(PREVIOUS_MANIFEST)
            os.replace(path, kept)
            self.console.line(f"previous {ABLATION_MANIFEST} kept as {kept.name}")

    # --- steps ---------------------------------------------------------------------------------------------

    def prepare(self) -> Plan:
        """Every check, before any work: plan (models, data, results folder), then the engine (images, mounts)."""
        return self.attach(build_plan(self.options))

    def attach(self, plan: Plan, *, scoring: bool = True) -> Plan:
        """The engine's checks (images, mounts) for a checked plan, and one pending record per model."""
        self.plan = plan
        requested_gpus = parse_gpus(self.options.gpus)
        images = [image_for(self.options, spec) for spec in plan.specs]
        scoring_image = self.options.images.get("scoring", SCORING_IMAGE)
        if scoring and self.engine.scores_with_host_files():
            check_scoring_here(plan)  # SPICE's jars: before the models run, not after all of them
        self.engine.preflight(plan, images + ([scoring_image] if scoring else []))
        self.gpus = self.engine.resolve_gpus(requested_gpus)
        self.versions = {"orchestrator": _version("vlm-ablation")}
        if self.engine.name == "docker":
            self.versions["docker_sdk"] = _version("docker")
        self.versions |= self.engine.versions()
        if self.options.parallel and self.gpus.mode != "ids":
            raise PlanError(
                "--parallel runs one model per GPU and needs the GPUs listed: --gpus 0,1,... "
                "(or CUDA_VISIBLE_DEVICES=0,1 with --gpus auto)"
            )
        if scoring:
            image = scoring_image if self.engine.name == "docker" else None  # the local engine runs no image
            self.scoring_record = {"image": image, "digest": self.engine.image_digest(scoring_image)}
        for index, spec in enumerate(plan.specs, start=1):
            image = image_for(self.options, spec)
            record = ModelRunRecord(
                model_name=spec.name,
                model_id=spec.hub_id,
                family=spec.family,
                reference=spec.reference,
                image=image if self.engine.name == "docker" else None,
                image_digest=self.engine.image_digest(image),
                revision=None if plan.model_path_root else self.options.revisions.get(spec.name, spec.revision),
                model_path=str(plan.model_path(spec.name)) if plan.model_path_root else None,
            )
            self.outcomes.append(ModelOutcome(spec=spec, index=index, record=record))
        return plan

    def fetch(self) -> None:
        """Download each Hub model's weights into the cache, network on; records the resolved commits."""
        assert self.plan is not None
        paths = self.engine.paths(self.plan)
        with hf_token_file(self.engine.container_owner()) as token_file:
            self._fetch_all(paths, token_file)

    def _fetch_all(self, paths: RunPaths, token_file: Path | None) -> None:
        total = len(self.outcomes)
        for outcome in self.outcomes:
            record = outcome.record
            self.console.line(f"[{outcome.index}/{total}] fetch {record.model_id}@{record.revision} into the cache")
            task = Task(
                name=f"fetch-{record.model_name}",
                kind="fetch",
                image=record.image or image_for(self.options, outcome.spec),
                argv=["--model-id", record.model_id, "--revision", record.revision or "main"],
                gpus=GpuSelection("none"),
                timeout=None,
                network=True,
                environment={"HF_HOME": paths.hf_cache} if paths.hf_cache else {},
                token_file=token_file,
            )
            sink = self.console.model_sink(record.model_name, self._log_file(record.model_name, "fetch"))
            try:
                result = self.engine.run(task, sink)
            finally:
                sink.close()
            payload = last_prefixed(result.lines, FETCH_RESULT_PREFIX)
            if result.ok and payload:
                record.resolved_revision = json.loads(payload)["resolved_revision"]
            else:
                record.status = "failed"
                record.message = f"fetch failed: {result.message or 'no result line'}"
                self.console.line(f"[{outcome.index}/{total}] {record.model_name}: {record.message}")

    def _log_file(self, model: str, step: str) -> Path:
        assert self.plan is not None
        return self.plan.output_dir / LOGS_DIR / f"{model}.{step}.log"

    def task_label(self, outcome: ModelOutcome, shard: int) -> str:
        """A model's name, or `<model>#<shard>` for one of its shards (console rows, log files)."""
        return outcome.spec.name if self.options.shards == 1 else f"{outcome.spec.name}#{shard}"

    def run_task(self, outcome: ModelOutcome, shard: int, gpus: GpuSelection) -> None:
        """One runner process: a model, or one shard of it. The model's record is final when its last shard ends."""
        assert self.plan is not None
        record, spec, total = outcome.record, outcome.spec, len(self.outcomes)
        paths = self.engine.paths(self.plan)
        label = self.task_label(outcome, shard)
        count = self.options.shards
        task = Task(
            name=label,
            kind="runner",
            image=image_for(self.options, spec),
            argv=runner_argv(self.plan, spec, paths, gpus, record.resolved_revision or record.revision, shard),
            gpus=gpus,
            timeout=self.options.timeout,
            environment={"HF_HOME": paths.hf_cache} if paths.hf_cache else {},
        )
        with self._lock:
            if record.started_at is None:
                record.started_at = iso(now())
                outcome.started_clock = time.monotonic()
            record.status = "pending"
        self.console.line(f"[{outcome.index}/{total}] {label} started at {clock()} ({gpus.describe()})")
        sink = self.console.model_sink(label, self._log_file(label, "runner"))
        self.console.start_progress(label)
        try:
            result = self.engine.run(task, sink)
        finally:
            self.console.end_progress(label)
            sink.close()
        ok, message, runner_result = self._task_result(result)
        if ok and result.timed_out:
            self.console.line(f"[{outcome.index}/{total}] {label}: its time limit expired after it had completed")
        if count > 1:
            state = "completed" if ok else f"FAILED: {message}"
            written = f" ({_predictions_count(runner_result.num_written, ok)})" if runner_result else ""
            self.console.line(f"[{outcome.index}/{total}] {label} {state} at {clock()}{written}")
        if not ok:
            for line in sink.tail()[-8:]:
                self.console.line(f"  | {line}")
            self.console.line(f"  (full output: {self._log_file(label, 'runner')})")
        with self._lock:
            outcome.shard_results[shard] = (ok, message, runner_result)
            finished = len(outcome.shard_results) == count
        if finished:
            self._finish_model(outcome)

    def _task_result(self, result: TaskResult) -> tuple[bool, str | None, RunnerResult | None]:
        payload = last_prefixed(result.lines, RUNNER_RESULT_PREFIX)
        runner_result = None
        if payload:
            try:
                runner_result = RunnerResult.model_validate_json(payload)
            except ValueError:
                runner_result = None
        # A completed result line is printed after every file is written: a time limit that expires while the runner
        # exits (or a kill after that line) takes nothing away.
        if runner_result is not None and runner_result.status == "completed" and (result.ok or result.timed_out):
            return True, None, runner_result
        reasons = [result.message, runner_result.message if runner_result else None]
        return False, "; ".join(r for r in reasons if r) or "no result line from the runner", runner_result

    def _finish_model(self, outcome: ModelOutcome) -> None:
        assert self.plan is not None
        record, total = outcome.record, len(self.outcomes)
        results = [outcome.shard_results[index] for index in sorted(outcome.shard_results)]
        failures = [(index, message) for index, (ok, message, _) in enumerate(results) if not ok]
        runner_results = [r for _, _, r in results if r is not None]
        outcome.written = sum(r.num_written for r in runner_results)
        if not failures:
            record.status, record.message = "completed", None
        else:
            record.status = "failed"
            if self.options.shards == 1:
                record.message = failures[0][1]
            else:
                record.message = "; ".join(f"shard {index}: {message}" for index, message in failures)
        record.finished_at = iso(now())
        outcome.seconds = time.monotonic() - outcome.started_clock
        self._read_run_manifest(outcome)
        state = "completed" if record.status == "completed" else f"FAILED: {record.message}"
        self.console.line(
            f"[{outcome.index}/{total}] {record.model_name} {state} at {clock()} after {duration(outcome.seconds)}"
            + (f" ({_predictions_count(outcome.written, record.status == 'completed')})" if runner_results else "")
        )
        self.write_manifest()

    def _read_run_manifest(self, outcome: ModelOutcome) -> None:
        """What the runner recorded (resolved revision, versions, device) into the model's manifest record."""
        assert self.plan is not None
        record = outcome.record
        run_file = results_file(self.plan.output_dir, RUN_MANIFEST, record.model_name)
        if self.options.shards > 1:
            run_file = Shard(0, self.options.shards).manifest(self.plan.output_dir, record.model_name)
        if not run_file.exists():
            return
        try:
            run = read_json(run_file, RunManifest)
        except ValueError:
            return
        record.resolved_revision = run.resolved_revision or record.resolved_revision
        self.random_weights = self.random_weights or run.random_weights
        extra = {"versions": run.versions, "device_name": run.device_name, "num_errors": run.num_errors}
        for key, value in extra.items():
            setattr(record, key, value)

    def already_complete(self, outcome: ModelOutcome) -> RunManifest | None:
        """The runner's own check (runner.loop.finished_run) of the task it would be started with: its predictions
        are complete and were made with the same arguments. Asked with this host's paths, before any process starts;
        where it cannot tell (another engine's paths, a GPU device it cannot see), the runner starts and decides."""
        from runner.cli import run_config
        from runner.loop import finished_run

        assert self.plan is not None
        record = outcome.record
        argv = runner_argv(self.plan, outcome.spec, RunPaths.on_host(self.plan), self.gpus,
                           record.resolved_revision or record.revision)  # fmt: skip
        device = "cpu" if self.gpus.mode == "none" else "cuda"
        return finished_run(run_config(argv), device)

    def skip_complete(self, outcome: ModelOutcome, finished: RunManifest) -> None:
        """A model with nothing left to do: recorded as completed when its predictions were made, not started."""
        assert self.plan is not None
        record = outcome.record
        record.status, record.message, record.skipped = "completed", None, True
        record.started_at, record.finished_at = finished.started_at, finished.finished_at
        outcome.written = self.plan.num_samples
        self._read_run_manifest(outcome)
        made = f"made {finished.finished_at}" if finished.finished_at else "made earlier"
        self.console.line(
            f"[{outcome.index}/{len(self.outcomes)}] {record.model_name} already complete: "
            f"{self.plan.num_samples}/{self.plan.num_samples}, skipped (predictions {made})"
        )
        self.write_manifest()

    def run_models(self) -> None:
        """Every (model, shard) task: one at a time, or one per listed GPU at a time (--parallel, or --shards). A model
        whose predictions are already complete is not started."""
        runnable = []
        for outcome in (o for o in self.outcomes if o.record.status != "failed"):
            finished = self.already_complete(outcome)
            if finished is None:
                runnable.append(outcome)
            else:
                self.skip_complete(outcome, finished)
        tasks = [(outcome, shard) for outcome in runnable for shard in range(self.options.shards)]
        spread = self.gpus.mode == "ids" and (self.options.parallel or self.options.shards > 1)
        if not spread:
            for outcome, shard in tasks:
                self.run_task(outcome, shard, self.gpus)
            return
        # One queue of tasks; each worker holds one GPU id and takes the next task when its own ends.
        work: queue.Queue[tuple[ModelOutcome, int]] = queue.Queue()
        for item in tasks:
            work.put(item)
        errors: list[BaseException] = []
        stopping = threading.Event()

        def worker(gpu_id: str) -> None:
            while not stopping.is_set():
                try:
                    outcome, shard = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    self.run_task(outcome, shard, GpuSelection("ids", (gpu_id,)))
                except BaseException as error:  # noqa: BLE001  (re-raised in the main thread)
                    errors.append(error)
                    return

        threads = [threading.Thread(target=worker, args=(gpu,), daemon=True) for gpu in self.gpus.ids]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=0.5)  # short joins keep Ctrl-C responsive
        except BaseException:
            # Ctrl-C: no worker takes another task; what runs is stopped, then the workers are waited for.
            stopping.set()
            self.engine.stop_all()
            for thread in threads:
                thread.join(timeout=60)
            raise
        if errors:
            raise errors[0]

    def score(self) -> bool | None:
        """ONE scoring task over every completed model's predictions. None when there is nothing to score."""
        assert self.plan is not None
        completed = [o.record.model_name for o in self.outcomes if o.record.status == "completed"]
        if not completed:
            self.console.line("no model completed: nothing to score")
            self.record_scoring("not run", "no model completed")
            return None
        paths = self.engine.paths(self.plan)
        self.console.line(f"scoring step for {len(completed)} model(s) at {clock()}")
        task = Task(
            name="scoring",
            kind="scoring",
            image=self.scoring_record["image"],
            argv=scoring_argv(self.plan, paths, completed),
            gpus=GpuSelection("none"),
            timeout=None,
        )
        self.record_scoring("running")
        sink = self.console.model_sink("scoring", self._log_file("scoring", "scoring"))
        try:
            result = self.engine.run(task, sink)
        finally:
            sink.close()
        payload = last_prefixed(result.lines, SCORING_RESULT_PREFIX)
        outcome = ScoringResult.model_validate_json(payload) if payload and result.ok else None
        self.record_scoring("completed" if result.ok else "failed", result.message, outcome)
        if not result.ok:
            self.console.line(f"scoring FAILED: {result.message}")
        elif outcome is not None:
            self.human_baseline = outcome.human_baseline
            if outcome.up_to_date:
                what = "every model" if not outcome.scored else ", ".join(outcome.up_to_date)
                self.console.line(f"scores up to date ({what}): inputs unchanged, not rescored")
        return result.ok

    def banner_lines(self) -> list[tuple[str, str]]:
        assert self.plan is not None
        plan, options = self.plan, self.options
        mode = "one model per GPU, in parallel" if options.parallel else "sequential"
        if self.engine.name == "slurm":
            mode = f"one job array per model, {options.shards} shard task(s) each, runtime {options.container_runtime}"
        elif options.shards > 1:
            mode = f"{options.shards} shards per model, one task per listed GPU at a time"
        lines = [
            ("data file", str(plan.data_file)),
            ("output dir", str(plan.output_dir)),
            ("batch size", str(options.batch_size)),
            ("engine", f"{self.engine.name} ({self.engine_gpus()}; {mode})"),
        ]
        if options.limit:
            lines.append(("subset", f"the first {plan.num_samples} samples (--limit {options.limit})"))
        for outcome in self.outcomes:
            record = outcome.record
            where = f"folder {record.model_path}" if getattr(record, "model_path", None) else (
                f"{record.model_id}@{record.revision or 'main'}"
            )  # fmt: skip
            image = f", image {record.image}" if record.image else ""
            lines.append(("model" if outcome.index == 1 else "", f"{record.model_name}: {where}{image}"))
        return lines

    def engine_gpus(self) -> str:
        describe = getattr(self.engine, "describe_gpus", None)
        return describe() if describe else self.gpus.describe()

    def _interrupted_message(self, outcome: ModelOutcome) -> str:
        """What an interruption left of one model, counted from its predictions file."""
        assert self.plan is not None
        if outcome.record.started_at is None:
            return "not started: the run was interrupted before this model"
        model, count = outcome.record.model_name, self.options.shards
        paths = [results_file(self.plan.output_dir, PREDICTIONS_JSONL, model)] if count == 1 else [
            Shard(index, count).predictions(self.plan.output_dir, model) for index in range(count)
        ]  # fmt: skip
        try:
            written = sum(len({r.sample_id for r in read_jsonl(p, PredictionRecord)}) for p in paths if p.is_file())
        except (OSError, ValueError):
            written = 0
        return f"interrupted after {written} of {self.plan.num_samples} samples" + (
            " (partial predictions kept; rerun to resume)" if written else ""
        )

    def print_metrics(self) -> None:
        """One line per scored model, best CIDEr first, x100 (the files keep 0-1), then the human reference row."""
        from scoring.metrics import LEFT_OUT

        assert self.plan is not None
        scored: list[tuple[ModelOutcome, MetricsFile]] = []
        for outcome in self.outcomes:
            path = results_file(self.plan.output_dir, METRICS_JSON, outcome.record.model_name)
            if outcome.record.status != "completed" or not path.exists():
                continue
            metrics = read_json(path, MetricsFile)
            outcome.record.metrics = metrics.metrics  # type: ignore[attr-defined]
            self.random_weights = self.random_weights or metrics.random_weights
            scored.append((outcome, metrics))
        if not scored:
            return
        subset = next((m.subset for _, m in scored if m.subset is not None), None)
        note = f"; subset: first {subset.num_samples} of {subset.data_samples} samples" if subset else ""
        self.console.line(f"scores x100 (the JSON files keep 0-1), ranked by CIDEr{note}:")
        scored.sort(key=lambda pair: -(pair[1].metrics.get("cider") or -1.0))
        human_path = results_file(self.plan.output_dir, METRICS_JSON, self.human_baseline or HUMAN_BASELINE)
        human = read_json(human_path, MetricsFile) if self.human_baseline and human_path.is_file() else None
        width = max([len(outcome.record.model_name) for outcome, _ in scored] + [len(HUMAN_ROW_LABEL)] * bool(human))
        for rank, (outcome, metrics) in enumerate(scored, start=1):
            self.console.line(f"  {rank}. {outcome.record.model_name:<{width}}  {metric_line(metrics)}")
        if human is not None:
            self.console.line(f"     {HUMAN_ROW_LABEL:<{width}}  {metric_line(human)}")
            self.console.line(
                f"     (not ranked: each sample's first reference scored against the others, {human.num_samples} "
                "samples with two or more references, one reference fewer than the models had)"
            )
        left_out = sorted({key for _, m in scored for key, why in m.unavailable.items() if why == LEFT_OUT})
        if left_out:
            self.console.line(f"  {LEFT_OUT} (null in the files): {', '.join(left_out)}")

    def result_files(self) -> list[Path]:
        assert self.plan is not None
        out = self.plan.output_dir
        names = [SUMMARY_JSON, COMPARISON_CSV, REPORT_HTML, ABLATION_MANIFEST]
        for outcome in self.outcomes:
            names += [pattern.format(model=outcome.record.model_name) for pattern in (METRICS_JSON, PREDICTIONS_JSONL)]
        return [out / name for name in names if (out / name).exists()]

    def closing(self, outcome: AblationOutcome) -> None:
        rule = "=" * 78
        total = len(outcome.models)
        completed = total - len(outcome.failed)
        self.console.line(rule)
        if self.random_weights:
            self.console.line(DEMO_NOTICE)
        self.console.line(("INTERRUPTED" if outcome.interrupted else "Ablation finished") + f" at {clock()}")
        self.console.line(f"  total time: {duration(outcome.seconds)}")
        self.console.line(f"  completed : {completed}/{total}")
        self.console.line(f"  failed    : {len(outcome.failed)}/{total}")
        for failed in outcome.failed:
            self.console.line(f"    - {failed.record.model_name}: {failed.record.message}")
        if outcome.scoring_ok is False:
            why = self.scoring_state.message if self.scoring_state is not None else None
            self.console.line(f"  scoring   : FAILED{f': {why}' if why else ''} ({self.scoring_log_hint()})")
        self.console.line(f"  results in {outcome.plan.output_dir}:")
        for path in outcome.result_files:
            self.console.line(f"    {path.name}")
        self.console.line(rule)

    # --- the whole run -------------------------------------------------------------------------------------

    def run(self) -> AblationOutcome:
        """prepare() must have run. Ctrl-C / SIGTERM (KeyboardInterrupt) stops every task this run started."""
        assert self.plan is not None, "prepare() first"
        plan = self.plan
        self.console.banner(self.banner_lines(), f"VLM captioning ablation: {len(plan.specs)} model(s), "
                            f"{plan.num_samples} sample(s)")  # fmt: skip
        for warning in plan.dataset_warnings:
            self.console.warn_once(f"WARNING: {warning}")  # the runners repeat it: shown once
        if self.options.overwrite:
            self._move_previous_results()
        self._keep_previous_manifest()
        self.write_manifest()
        clock_start = time.monotonic()
        interrupted = False
        scoring_ok: bool | None = None
        detached = False
        try:
            if not plan.model_path_root and not self.options.skip_fetch:
                self.fetch()
            if getattr(self.engine, "batch_jobs", False):
                scoring_ok, detached = self.run_as_jobs()
            else:
                self.run_models()
                scoring_ok = self.score()
            if not detached:
                self.print_metrics()
        except KeyboardInterrupt:
            interrupted = True
            self.console.line("interrupted: stopping and removing everything this run started ...")
            self.engine.stop_all()
            for outcome in self.outcomes:
                if outcome.record.status == "pending":
                    outcome.record.status = "failed"
                    outcome.record.message = self._interrupted_message(outcome)
            if self.scoring_state is not None and self.scoring_state.status == "running":
                scoring_ok = False
                self.scoring_state = ScoringRecord(status="failed", message="interrupted", finished_at=iso(now()))
        finally:
            if not detached:  # a detached slurm run's jobs go on without us
                self.engine.stop_all()
        outcome = AblationOutcome(
            plan=plan,
            manifest_path=self.write_manifest(finished=None if detached else now()),
            models=self.outcomes,
            scoring_ok=scoring_ok,
            seconds=time.monotonic() - clock_start,
            interrupted=interrupted,
            detached=detached,
        )
        outcome.result_files = self.result_files()
        if not detached:
            self.closing(outcome)
        return outcome

    def run_as_jobs(self) -> tuple[bool | None, bool]:
        """The slurm engine: submit every job, then watch them (or return at once with --detach)."""
        assert self.plan is not None
        submitted = self.engine.submit_ablation(self)  # type: ignore[attr-defined]
        self.slurm_record = {
            "run_id": submitted.run_id,
            "scoring_job": submitted.scoring_job,
            "shards": self.options.shards,
            "runtime": self.options.container_runtime,
            "requests": submitted.requests,  # what each job asked for (--mem, --cpus-per-task) and why
        }
        self.write_manifest()
        jobs = ", ".join(f"{name} {job.job_id}" for name, job in submitted.models.items())
        self.console.line(f"submitted run {submitted.run_id}: {jobs}; scoring {submitted.scoring_job}")
        if self.options.detach:
            self.console.line(
                f"detached: `python -m orchestrator status --output-dir {self.plan.output_dir}` reports it; "
                "rerunning the same command resumes what is missing"
            )
            return None, True
        self.record_scoring("running")
        scoring_ok = self.engine.watch(self, submitted)  # type: ignore[attr-defined]
        if scoring_ok is None:
            self.record_scoring("not run", "no model was submitted")
        elif scoring_ok:
            self.record_scoring("completed")
        elif self.scoring_state is None or self.scoring_state.status != "failed":  # watch() records why when it can
            self.record_scoring("failed", "the scoring job failed")
        return scoring_ok, False


def _predictions_count(number: int, ok: bool) -> str:
    """What a finished task left: written by it, or (it failed or was refused) whatever is on disk."""
    return f"{number} predictions {'written' if ok else 'on disk'}"


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"
