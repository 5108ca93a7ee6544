"""`python -m orchestrator status --output-dir DIR`: what a run did, or (a detached slurm run) is doing now.

Reads DIR/run_manifest.json; for the slurm engine, asks the controller for every job of the run (squeue/scontrol)
and counts the predictions on disk; once every task of a model has ended, its record in the manifest says how.
Exit code: 0 every model completed and scoring succeeded (as the manifest records it, for every engine), 1 something
failed or did not finish, 3 still running (slurm), 2 no run there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from contract import (
    ABLATION_MANIFEST,
    METRICS_JSON,
    AblationManifest,
    MetricsFile,
    ScoringRecord,
    read_json,
    results_file,
    write_json_atomic,
)
from contract.shards import Shard
from orchestrator.console import metric_line
from orchestrator.plan import PlanError

STILL_RUNNING = 3


def status_command(args: argparse.Namespace) -> int:
    out = args.output_dir.expanduser().resolve()
    path = results_file(out, ABLATION_MANIFEST)
    if not path.is_file():
        raise PlanError(f"{path} not found: no run was started in {out}")
    manifest = read_json(path, AblationManifest)
    print(f"run in {out}: engine {manifest.engine}, {len(manifest.models)} model(s), started {manifest.started_at}")
    running = False
    if manifest.engine == "slurm" and getattr(manifest, "slurm", None):
        running, scoring_ok, why = _slurm_status(manifest, out)
        if scoring_ok is not None:
            message = None if scoring_ok else why or "the scoring job failed"
            manifest.scoring = ScoringRecord(status="completed" if scoring_ok else "failed", message=message)
        write_json_atomic(path, manifest)  # the records of models whose tasks ended, and of scoring
    for record in manifest.models:
        message = f": {record.message}" if record.message else ""
        print(f"  {record.model_name:<28} {record.status}{message}")
        metrics = results_file(out, METRICS_JSON, record.model_name)
        if metrics.is_file() and not running:
            print(f"    {metric_line(read_json(metrics, MetricsFile).metrics)}  (x100)")
    if running:
        print("still running: rerun this command to follow it; Ctrl-C of the original command is not needed")
        return STILL_RUNNING
    failed = [r for r in manifest.models if r.status != "completed"]
    scored = _print_scoring(manifest, out)
    return 1 if failed or not scored else 0


def _print_scoring(manifest: AblationManifest, out: Path) -> bool:
    """The scoring step's line; whether it succeeded (what exit code 0 promises)."""
    scoring = manifest.scoring
    if scoring is None:
        # A manifest written before scoring outcomes were recorded: every model's metrics file tells.
        scored = all(results_file(out, METRICS_JSON, r.model_name).is_file() for r in manifest.models)
        print(f"  scoring: {'metrics files present' if scored else 'no outcome recorded'}")
        return scored
    if scoring.status == "running":
        print("  scoring: did not record its end: the orchestrator was stopped while scoring (or is still scoring)")
        return False
    print(f"  scoring: {scoring.status}" + (f": {scoring.message}" if scoring.message else ""))
    return scoring.status == "completed"


def _slurm_status(manifest: AblationManifest, out: Path) -> tuple[bool, bool | None, str | None]:
    """Whether tasks still run, whether scoring succeeded (None: not ended), and why it failed."""
    from orchestrator.ablation import LOGS_DIR
    from orchestrator.slurm import SlurmBackend
    from orchestrator.slurm_engine import (
        SCORING_ARG_OPTION,
        SCORING_LOG,
        SLURM_DIR,
        _lines,
        failure_reason,
        model_failure,
        submitted_from_manifest,
    )

    submitted = submitted_from_manifest(manifest)
    backend = SlurmBackend(out / SLURM_DIR)
    ids = [m.job_id for m in submitted.models.values()] + ([submitted.scoring_job] if submitted.scoring_job else [])
    states = backend.states(ids)
    running = False
    shards = int((manifest.slurm or {}).get("shards", 1))  # type: ignore[attr-defined]
    requests = (manifest.slurm or {}).get("requests") or {}  # type: ignore[attr-defined]
    for record in manifest.models:
        job = submitted.models.get(record.model_name)
        if job is None:
            continue
        tasks = [states[key] for key in states if key[0] == job.job_id]
        counts: dict[str, int] = {}
        for task in tasks:
            counts[task.state] = counts.get(task.state, 0) + 1
        files = [Shard(i, shards).predictions(out, record.model_name) for i in range(shards)] if shards > 1 else [
            results_file(out, "{model}_predictions.jsonl", record.model_name)
        ]  # fmt: skip
        done = sum(_lines(path) for path in files)
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        print(f"  job {job.job_id} ({record.model_name}): {summary}; {done}/{manifest.num_samples} samples on disk")  # type: ignore[attr-defined]
        if tasks and all(task.finished for task in tasks):
            failures = [task for task in tasks if not task.ok]
            record.status = "failed" if failures else "completed"
            request = requests.get(record.model_name)
            record.message = model_failure(out, record.model_name, failures, len(tasks), request) if failures else None
        else:
            running = True
    scoring_ok: bool | None = None
    why: str | None = None
    scoring = [states[key] for key in states if key[0] == submitted.scoring_job]
    if scoring:
        print(f"  scoring job {submitted.scoring_job}: {scoring[0].state}")
        if scoring[0].finished:
            scoring_ok = scoring[0].ok
            if not scoring_ok:
                log = out / LOGS_DIR / SCORING_LOG
                why = failure_reason(scoring[0], log, requests.get("scoring"), SCORING_ARG_OPTION)
        else:
            running = True
    return running, scoring_ok, why
