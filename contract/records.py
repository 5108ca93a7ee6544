"""Every file the runner, scoring and orchestrator exchange, defined once.

The three packages talk only through these files on a shared volume. Nothing here imports torch or docker.
Users' scripts already read `<model>_metrics.json` (`model_name`, `model_id`, `num_samples`,
`metrics.{bleu4,meteor,rougeL,spice,cider}` on a 0-1 scale): those keys never change.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T", bound=BaseModel)

__all__ = [
    "PREDICTIONS_JSONL",
    "PREDICTIONS_CSV",
    "RUN_MANIFEST",
    "METRICS_JSON",
    "SAMPLE_SCORES_JSONL",
    "SUMMARY_JSON",
    "COMPARISON_CSV",
    "ABLATION_MANIFEST",
    "REPORT_HTML",
    "COMPARISON_MD",
    "COMPARISON_TEX",
    "STALE_SUFFIX",
    "mark_derived_stale",
    "RANDOM_WEIGHTS_MARKER",
    "RUNNER_RESULT_PREFIX",
    "RUNNER_PROGRESS_PREFIX",
    "SCORING_RESULT_PREFIX",
    "RunnerProgress",
    "HUMAN_BASELINE",
    "is_human_baseline",
    "ScoringInputs",
    "ScoringResult",
    "HEADLINE_METRICS",
    "COCO_BLEU_METRICS",
    "METRIC_KEYS",
    "results_file",
    "sample_id",
    "file_sha256",
    "Sample",
    "PredictionRecord",
    "RunnerResult",
    "RunManifest",
    "SampleCounts",
    "SubsetInfo",
    "MetricsFile",
    "SampleScores",
    "SummaryEntry",
    "PairDifference",
    "Summary",
    "ModelRunRecord",
    "ScoringRecord",
    "AblationManifest",
    "spreadsheet_safe",
    "write_json_atomic",
    "write_text_atomic",
    "write_jsonl_atomic",
    "read_jsonl",
    "read_json",
]

# ---------------------------------------------------------------------------------------------------------
# File names inside a results folder.

PREDICTIONS_JSONL = "{model}_predictions.jsonl"  # runner, appended per batch
PREDICTIONS_CSV = "{model}_predictions.csv"  # runner, for people
RUN_MANIFEST = "{model}_run.json"  # runner
METRICS_JSON = "{model}_metrics.json"  # scoring
SAMPLE_SCORES_JSONL = "{model}_sample_scores.jsonl"  # scoring, per-sample scores and statistics
SUMMARY_JSON = "all_models_summary.json"  # scoring
COMPARISON_CSV = "comparison.csv"  # scoring
ABLATION_MANIFEST = "run_manifest.json"  # orchestrator
REPORT_HTML = "report.html"  # scoring report
COMPARISON_MD = "comparison.md"  # scoring report, paper-ready tables
COMPARISON_TEX = "comparison.tex"
# Suffix of a result file whose inputs changed: renamed, never deleted, so nothing stale looks current.
STALE_SUFFIX = ".stale"
# A tiny random-weight checkpoint built by `python -m runner.tiny` carries this file; the runner records
# `random_weights: true` in `<model>_run.json` when it loads one, and the report and console say so.
RANDOM_WEIGHTS_MARKER = "vlm-ablation-random-weights.json"

# The runner's last stdout line, for the orchestrator: RUNNER_RESULT_PREFIX + RunnerResult JSON.
RUNNER_RESULT_PREFIX = "RUNNER_RESULT "
# With `--progress json`, the runner's progress on stderr: RUNNER_PROGRESS_PREFIX + RunnerProgress JSON.
RUNNER_PROGRESS_PREFIX = "RUNNER_PROGRESS "
# `python -m scoring score`'s last stdout line, for the orchestrator: SCORING_RESULT_PREFIX + ScoringResult JSON.
SCORING_RESULT_PREFIX = "SCORING_RESULT "

# The leave-one-out human agreement ("human ceiling"): each sample's first reference scored against the others,
# written like a model's results (`human-baseline_metrics.json`, ...) with `human_baseline: true`, and shown as a
# reference row, never ranked among the models nor tested against them. Files written before that flag existed are
# recognised by their model_id, which always started with "human (".
HUMAN_BASELINE = "human-baseline"
_HUMAN_BASELINE_ID_PREFIX = "human ("

# Keys of `metrics` in <model>_metrics.json that users' scripts read (0-1 scale), in comparison.csv's column order.
# Every one is always present; None means "not computed" (left out with --metrics) and is never replaced by 0.0.
# What each one is, and any further metric, is defined once in scoring/metrics.py (the metric registry).
HEADLINE_METRICS = ("bleu4", "meteor", "rougeL", "cider", "spice")
COCO_BLEU_METRICS = ("coco_bleu1", "coco_bleu2", "coco_bleu3", "coco_bleu4")
METRIC_KEYS = (*HEADLINE_METRICS, *COCO_BLEU_METRICS)


def results_file(out_dir: str | Path, pattern: str, model: str | None = None) -> Path:
    """Path of one of the files above, e.g. results_file(out, PREDICTIONS_JSONL, "llava-1.5-7b")."""
    return Path(out_dir) / (pattern.format(model=model) if model is not None else pattern)


def sample_id(image: str, query: str) -> str:
    """Stable id of one (image, query) sample: the same on every run and machine.

    Derived from the image reference exactly as written in the data file (not a resolved absolute path,
    which differs between hosts) and the query.
    """
    return hashlib.sha1(f"{image}\x1f{query}".encode()).hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Records.


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Sample(_Record):
    """One (image, query) pair with ALL its human captions, in data-file order."""

    sample_id: str
    image: str  # as written in the data file (path or URL)
    image_path: str  # resolved local path or http(s) URL the runner opens
    query: str
    references: list[str]
    group: str | None = None  # a breakdown label from the data file (NoCaps' domain, a JSONL "group")


class PredictionRecord(_Record):
    """One line of `<model>_predictions.jsonl`.

    `prediction` is the decoded model output (special tokens skipped, prompt removed), before scoring's
    cleanup. `error` is set (and `prediction` is "") when the sample could not be captioned.
    """

    sample_id: str
    image: str
    query: str
    prediction: str
    references: list[str]
    error: str | None = None
    model_name: str | None = None
    prompt: str | None = None  # the exact text the model was given (chat template applied)


class RunnerResult(_Record):
    """The runner's final machine-readable line (after RUNNER_RESULT_PREFIX)."""

    model_name: str
    status: Literal["completed", "failed"]
    predictions_file: str
    manifest_file: str
    num_samples: int
    num_written: int
    num_errors: int
    samples_per_second: float | None = None
    message: str | None = None


class RunnerProgress(_Record):
    """One progress line of the runner (`--progress json`): the orchestrator renders them live."""

    phase: Literal["loading", "generating", "done"]
    done: int  # samples with a record in the predictions file (this run's and earlier ones)
    total: int  # samples this run is to caption in all
    errors: int = 0  # of `done`, samples recorded with an error
    samples_per_s: float | None = None  # this run's generation speed so far


class RunManifest(BaseModel):
    """`<model>_run.json`: how one model's predictions were made. Extra keys allowed for forward growth."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model_name: str
    model_id: str
    model_path: str | None = None  # local checkpoint used instead of the Hub id
    revision: str | None = "main"  # None for a local checkpoint folder
    resolved_revision: str | None = None
    family: str
    dtype: str
    device: str
    device_name: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    prompt_template: str
    decoding: dict[str, Any] = Field(default_factory=dict)
    data_file: str
    data_sha256: str
    data_format: str = "csv"  # the data file's format (contract.DATA_FORMATS)
    data_split: str | None = None  # the split read from a Karpathy split file
    num_samples: int
    batch_size_requested: int | Literal["auto"]  # auto: chosen from free GPU memory after the model loaded
    batch_size_used: int  # what the run used (the auto choice, then halved on CUDA OOM)
    oom_retries: int = 0
    # load_s: loading the model; generate_s: time inside generate() calls; samples_per_s: samples / generate_s (the
    # model's own speed); wall_s: from the model load to the last sample written; wall_samples_per_s: samples /
    # wall_s, what the console's progress line shows (load, image decoding and preprocessing included).
    timings: dict[str, float] = Field(default_factory=dict)
    peak_gpu_memory_bytes: int | None = None
    num_errors: int = 0
    errors_by_kind: dict[str, int] = Field(default_factory=dict)
    started_at: str | None = None
    finished_at: str | None = None
    # --reuse-images: {"requested": "on"|"off", "active": bool, "reason": why not active (or null),
    # "image_encodings": images the vision tower encoded (null: not counted for this architecture), "cache_hits":
    # images whose features came from an earlier batch, "distinct_images", "samples": generated in this run}.
    image_reuse: dict[str, Any] | None = None
    # True when the checkpoint is a tiny random-weight one (RANDOM_WEIGHTS_MARKER in its folder): its numbers mean
    # nothing about the real model.
    random_weights: bool = False


class SampleCounts(_Record):
    scored: int  # samples that entered the corpus scores (including empty predictions)
    empty: int  # predictions that were empty after cleanup (scored as "")
    failed: int  # samples the runner could not caption (error field set); scored as "" too
    missing: int = 0  # data samples with no prediction (only when scoring the intersection)
    unknown: int = 0  # predictions whose sample_id is not in the data (dropped when scoring the intersection)


class SubsetInfo(_Record):
    """Set when only part of the data file was scored (`--limit N`: its first N samples, in data-file order)."""

    num_samples: int  # samples scored
    data_samples: int  # samples in the data file
    limit: int | None = None  # the --limit that chose them


class ScoringInputs(_Record):
    """Everything a model's scores are computed from, recorded in its metrics file: scoring the same inputs again gives
    the same files, so a rerun whose inputs all match skips it ("scores up to date")."""

    predictions_sha256: str | None  # the predictions file's content; None for the human baseline (the data file's)
    data_sha256: str | None  # None: scored without --data
    model_id: str
    random_weights: bool
    options: dict[str, Any]  # metrics, bootstrap resamples and seed, --limit, --intersection, data columns, ...
    versions: dict[str, str]  # Java, sacreBLEU, pycocoevalcap, SPICE's jars, the scoring code itself


class MetricsFile(BaseModel):
    """`<model>_metrics.json`. The first four keys are what users' scripts already read."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model_name: str
    model_id: str
    num_samples: int
    metrics: dict[str, float | None]  # HEADLINE_METRICS + COCO_BLEU_METRICS at least
    ci: dict[str, tuple[float, float] | None] = Field(default_factory=dict)  # 95% bootstrap interval
    per_query: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    # The same breakdown by the data file's groups (NoCaps' domains, a JSONL "group"); empty when it has none.
    per_group: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    counts: SampleCounts
    signature: dict[str, str] = Field(default_factory=dict)  # sacrebleu signature, tool versions, seed
    unavailable: dict[str, str] = Field(default_factory=dict)  # metric -> why it is None
    warnings: list[str] = Field(default_factory=list)
    subset: SubsetInfo | None = None  # None: every sample of the data file was scored
    random_weights: bool = False  # copied from `<model>_run.json`: a tiny random-weight checkpoint
    human_baseline: bool = False  # the leave-one-out human agreement (HUMAN_BASELINE), not a model
    inputs: ScoringInputs | None = None  # None: written before inputs were recorded (always rescored)


class SampleScores(_Record):
    """One line of `<model>_sample_scores.jsonl`: per-sample scores for the report, and the per-sample
    sufficient statistics from which corpus metrics (and their bootstrap) are recomputed without Java."""

    sample_id: str
    # The image as written in the data file: the unit the bootstrap resamples when an image has several samples.
    # None only in files written before it was recorded (they cannot be summarised again; score them again).
    image: str | None = None
    query: str
    prediction: str  # after cleanup, as scored
    raw_prediction: str
    error: str | None = None
    references: list[str] = Field(default_factory=list)  # as scored (separator-normalised)
    scores: dict[str, float | None]  # sentence-level scores of the metrics that have one; None: not computed
    stats: dict[str, list[float]] = Field(default_factory=dict)  # statistics block (scoring/metrics.py) -> numbers


class SummaryEntry(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model_name: str
    model_id: str
    num_samples: int
    metrics: dict[str, float | None]
    ci: dict[str, tuple[float, float] | None] = Field(default_factory=dict)
    status: Literal["scored", "failed"] = "scored"
    message: str | None = None
    bootstrap_unit: str | None = None  # what its intervals resampled: "image" or "sample"
    human_baseline: bool = False  # the leave-one-out human agreement: a reference row, in no paired test


def is_human_baseline(entry: MetricsFile | SummaryEntry) -> bool:
    """The leave-one-out human agreement row (flagged, or by the model_id of files written before the flag)."""
    return entry.human_baseline or entry.model_id.startswith(_HUMAN_BASELINE_ID_PREFIX)


class ScoringResult(_Record):
    """What one `python -m scoring score` run did, for the orchestrator's console and manifest."""

    scored: list[str]  # models (and the human baseline) scored in this run
    up_to_date: list[str]  # left as they were: their recorded inputs match
    human_baseline: str | None = None  # the name of the human baseline's files, when there is one


class PairDifference(_Record):
    """One metric's difference between two models scored on the same samples (0-1 scale, A minus B)."""

    difference: float  # observed corpus metric of A minus that of B
    ci: tuple[float, float]  # percentile 95% interval of the paired bootstrap differences


class Summary(BaseModel):
    """`all_models_summary.json`."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    models: list[SummaryEntry]
    # paired bootstrap p-values: metric -> "modelA|modelB" -> p
    significance: dict[str, dict[str, float]] = Field(default_factory=dict)
    signature: dict[str, str] = Field(default_factory=dict)
    # The same pairs' differences, resampled with the same indices as the p-values: metric -> "modelA|modelB" -> A - B
    differences: dict[str, dict[str, PairDifference]] = Field(default_factory=dict)


class ModelRunRecord(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model_name: str
    model_id: str
    family: str
    image: str | None = None
    image_digest: str | None = None
    revision: str | None = None
    resolved_revision: str | None = None
    status: Literal["pending", "completed", "failed"] = "pending"
    message: str | None = None
    started_at: str | None = None  # when its predictions were made (an earlier run's, when skipped)
    finished_at: str | None = None
    # A rerun found its predictions complete and made with the same arguments: nothing was generated this time.
    skipped: bool = False


class ScoringRecord(_Record):
    """How the ablation's scoring step ended, as every engine records it in `run_manifest.json`."""

    status: Literal["running", "completed", "failed", "not run"]
    message: str | None = None  # why it failed, or why it did not run
    finished_at: str | None = None
    scored: list[str] | None = None  # what it scored (None: not known, e.g. a Slurm job)
    up_to_date: list[str] | None = None  # what it left as it was: inputs unchanged


class AblationManifest(BaseModel):
    """`run_manifest.json`: everything needed to rerun an ablation on another host. Never holds a token."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    engine: Literal["docker", "local", "slurm"]
    arguments: dict[str, Any]
    data_file: str
    data_sha256: str
    data_format: str = "csv"  # the data file's format (contract.DATA_FORMATS)
    data_split: str | None = None  # the split read from a Karpathy split file
    models: list[ModelRunRecord]
    versions: dict[str, str] = Field(default_factory=dict)
    scoring_image: str | None = None
    scoring_image_digest: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    # The user's own catalogue entries (--models-file) the run used, as written there: reproduce rebuilds the file.
    catalogue_entries: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # None: scoring has not started (or a manifest written before scoring outcomes were recorded).
    scoring: ScoringRecord | None = None
    # The engine's own settings (Slurm: runtime, sbatch options, setup file, GPUs per task; docker: memory, shm
    # size); reproduce uses them unless told otherwise. Never a secret: tokens are never options.
    engine_settings: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------
# Reading and writing.


def mark_derived_stale(out_dir: str | Path, model: str) -> list[Path]:
    """Before a model's predictions change, rename what was computed from them (its metrics and sample scores, and
    the folder's summary, comparison tables and report) to `<name>.stale`, so none of it looks current until scoring
    runs again. Returns the renamed files."""
    out_dir = Path(out_dir)
    derived = [results_file(out_dir, METRICS_JSON, model), results_file(out_dir, SAMPLE_SCORES_JSONL, model)]
    derived += [out_dir / name for name in (SUMMARY_JSON, COMPARISON_CSV, COMPARISON_MD, COMPARISON_TEX, REPORT_HTML)]
    renamed = []
    for path in derived:
        if path.exists():
            target = path.with_name(path.name + STALE_SUFFIX)
            os.replace(path, target)
            renamed.append(target)
    return renamed


# A cell starting with one of these is a formula to a spreadsheet (OWASP, "CSV Injection"): in the CSV files people
# open (`<model>_predictions.csv`, `comparison.csv`) such a cell gets a leading apostrophe, which spreadsheets show
# as text. The JSONL and JSON files keep every text verbatim.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: `'` before a text that starts like a formula; anything else as is."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def write_json_atomic(path: str | Path, payload: BaseModel | dict[str, Any] | list[Any]) -> None:
    """Write JSON next to `path` and rename it into place, so no reader ever sees a partial file."""
    path = Path(path)
    text = payload.model_dump_json(indent=2) if isinstance(payload, BaseModel) else json.dumps(payload, indent=2)
    write_text_atomic(path, text + "\n")


def _current_umask() -> int:
    mask = os.umask(0o022)  # read once at import (os.umask can only be read by setting it)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; results are meant to be shared like any file the user writes (umask).
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:  # a full disk: say which file could not be written
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise


def write_jsonl_atomic(path: str | Path, records: Iterable[BaseModel]) -> None:
    write_text_atomic(path, "".join(record.model_dump_json() + "\n" for record in records))


def _warn_on_stderr(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def read_jsonl(path: str | Path, model: type[T], warn: Callable[[str], None] = _warn_on_stderr) -> Iterator[T]:
    """Read a JSONL file of `model` records; a bad line is an error naming the file and line. A leading UTF-8 BOM
    (some editors write one) is skipped.

    A last line without its newline is a record when it parses (a file written by another tool, `"\n".join(...)`);
    one that does not parse is a write cut off by a kill: it is left out, and `warn` is told (by default a line on
    stderr), never silently.
    """
    path = Path(path)
    with open(path, encoding="utf-8-sig") as handle:
        lines = handle.readlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = model.model_validate_json(line)
        except ValueError as error:
            if number == len(lines) and not line.endswith("\n"):
                warn(
                    f"{path}: line {number} is an incomplete last line (a write cut off?): left out ({len(line)} chars)"
                )
                return
            raise ValueError(f"{path}:{number}: not a valid {model.__name__} record: {error}") from error
        yield record


def read_json(path: str | Path, model: type[T]) -> T:
    path = Path(path)
    try:
        return model.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path}: not a valid {model.__name__} file: {error}") from error
