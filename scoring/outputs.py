"""Result files: `<model>_metrics.json`, `<model>_sample_scores.jsonl`, `all_models_summary.json`,
`comparison.csv`. Every file is written to a temporary name and renamed, so a reader (or a crash) never sees
a partial file. The summary is rebuilt from the files alone (no Java): `python -m scoring summarize DIR`."""

from __future__ import annotations

import csv
import io
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract import (
    COMPARISON_CSV,
    METRICS_JSON,
    SAMPLE_SCORES_JSONL,
    SUMMARY_JSON,
    MetricsFile,
    PairDifference,
    SampleScores,
    Summary,
    SummaryEntry,
    read_json,
    read_jsonl,
    results_file,
    spreadsheet_safe,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from scoring.engine import MIN_BOOTSTRAP, ModelResult
from scoring.java import ScoringError
from scoring.metrics import FILE_ORDER, LEFT_OUT, METRICS, TABLE_METRICS, Metric
from scoring.resample import (
    SampleMatrix,
    bootstrap_weights,
    confidence_intervals,
    corpus_metrics,
    paired_p_value,
    resampling_units,
)

_METRICS_SUFFIX = METRICS_JSON.replace("{model}", "")


def write_model_outputs(result: ModelResult, out_dir: Path) -> Path:
    """Sample scores first, metrics file last: a metrics file always has its sample scores next to it."""
    name = result.model.model_name
    write_jsonl_atomic(results_file(out_dir, SAMPLE_SCORES_JSONL, name), result.sample_scores())
    metrics_path = results_file(out_dir, METRICS_JSON, name)
    write_json_atomic(metrics_path, result.metrics_file())
    return metrics_path


def metric_line(metrics: MetricsFile) -> str:
    """One readable line per model for the terminal, on each metric's display scale (x100) with 95% intervals; the
    metrics left out with --metrics are not repeated on every line."""
    parts = []
    for metric in TABLE_METRICS:
        value = metrics.metrics.get(metric.key)
        interval = metrics.ci.get(metric.key)
        if value is None and metrics.unavailable.get(metric.key) == LEFT_OUT:
            continue  # said once for all models, after their lines
        text = "n/a" if value is None else f"{value * metric.scale:.2f}"
        if interval is not None and value is not None:
            text += f" [{interval[0] * metric.scale:.2f}, {interval[1] * metric.scale:.2f}]"
        parts.append(f"{metric.key}={text}")
    counts = metrics.counts
    return (
        f"{metrics.model_name} ({metrics.model_id}): n={metrics.num_samples} "
        f"(empty {counts.empty}, failed {counts.failed}, missing {counts.missing}) " + "  ".join(parts)
    )


def computed_metrics(metrics: MetricsFile) -> list[Metric]:
    """The registry's metrics this model has a value for (the others were left out)."""
    return [m for m in METRICS if metrics.metrics.get(m.key) is not None]


def matrix_from_sample_scores(path: Path, rows: list[SampleScores], metrics: list[Metric]) -> SampleMatrix:
    """The per-sample statistics of `metrics` and each sample's resampling unit, from a sample-scores file."""
    stale = f"{path}: written by an older version of `python -m scoring`; score these predictions again"
    if any(row.image is None for row in rows):
        raise ScoringError(f"{stale} (no image per sample, which the bootstrap resamples)")
    stats = {}
    for m in metrics:
        key = m.statistics.key
        if key in stats:
            continue
        missing = [row.sample_id for row in rows if key not in row.stats]
        if missing:
            raise ScoringError(f"{stale} (no {key!r} statistics for sample {missing[0]})")
        stats[key] = np.array([row.stats[key] for row in rows], dtype=np.float64).reshape(len(rows), -1)
        if stats[key].shape[1] != len(m.statistics.columns):
            raise ScoringError(f"{path}: {key!r} statistics have {stats[key].shape[1]} numbers per sample, "
                               f"expected {len(m.statistics.columns)}")  # fmt: skip
    groups, unit = resampling_units([row.image for row in rows])
    return SampleMatrix(stats=stats, groups=groups, unit=unit)


def _read_models(results_dir: Path) -> list[tuple[MetricsFile, Path, list[SampleScores] | None]]:
    models = []
    for path in sorted(results_dir.glob("*" + _METRICS_SUFFIX)):
        metrics = read_json(path, MetricsFile)
        scores_path = results_file(results_dir, SAMPLE_SCORES_JSONL, metrics.model_name)
        rows = list(read_jsonl(scores_path, SampleScores)) if scores_path.is_file() else None
        models.append((metrics, scores_path, rows))
    return sorted(models, key=lambda model: model[0].model_name)


@dataclass
class _Bootstrapped:
    sample_ids: list[str]
    unit: str
    computed: list[Metric]
    values: dict[str, np.ndarray]
    observed: dict[str, float]


def build_summary(results_dir: Path, resamples: int = MIN_BOOTSTRAP, seed: int = 0) -> Summary:
    """Summary of every `<model>_metrics.json` in the folder, with paired bootstrap p-values, differences and the
    differences' 95% CIs between every two models scored on the same samples (resampled with the same units: the
    same images when an image carries several samples)."""
    models = _read_models(results_dir)
    if not models:
        raise ScoringError(f"{results_dir}: no *{_METRICS_SUFFIX} files to summarise")
    entries = [
        SummaryEntry(
            model_name=metrics.model_name,
            model_id=metrics.model_id,
            num_samples=metrics.num_samples,
            metrics=metrics.metrics,
            ci=metrics.ci,
            counts=metrics.counts.model_dump(),
            unavailable=metrics.unavailable,
            bootstrap_unit=metrics.signature.get("bootstrap_unit"),
        )
        for metrics, _, _ in models
    ]
    significance: dict[str, dict[str, float]] = {}
    differences: dict[str, dict[str, PairDifference]] = {}
    bootstrapped: dict[str, _Bootstrapped] = {}
    for metrics, path, rows in models:
        if rows is None:
            continue
        rows = sorted(rows, key=lambda row: row.sample_id)
        computed = computed_metrics(metrics)
        matrix = matrix_from_sample_scores(path, rows, computed)
        values = corpus_metrics(computed, matrix, bootstrap_weights(matrix.groups, resamples, seed))
        observed = {key: float(v[0]) for key, v in corpus_metrics(computed, matrix, np.ones((1, len(rows)))).items()}
        bootstrapped[metrics.model_name] = _Bootstrapped([row.sample_id for row in rows], matrix.unit, computed,
                                                         values, observed)  # fmt: skip
    units = set()
    for (name_a, a), (name_b, b) in itertools.combinations(bootstrapped.items(), 2):
        if a.sample_ids != b.sample_ids:
            continue  # p-values only for models scored on the same samples (hence the same images)
        units.add(a.unit)
        for m in METRICS:
            if m in a.computed and m in b.computed:
                pair = f"{name_a}|{name_b}"
                key = m.key
                p = paired_p_value(a.observed[key], b.observed[key], a.values[key], b.values[key])
                significance.setdefault(key, {})[pair] = p
                difference = a.observed[key] - b.observed[key]
                ci = confidence_intervals({key: a.values[key] - b.values[key]})[key]
                if np.isfinite([difference, *ci]).all():  # JSON has no NaN; a NaN metric has no difference
                    differences.setdefault(key, {})[pair] = PairDifference(difference=difference, ci=ci)
    signature = dict(models[0][0].signature)
    unit = " or ".join(f"{u}s" for u in sorted(units)) or "images (or samples when no image has two)"
    signature["significance"] = (
        f"paired bootstrap resampling {unit}, the same for both models, {resamples} resamples, seed {seed}, "
        "two-sided, p=(1+#|d_b-d|>=|d|)/(B+1)"
    )
    return Summary(models=entries, significance=significance, signature=signature, differences=differences)


def comparison_csv(summary: Summary) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model_name", "model_id", "num_samples", *FILE_ORDER])
    for entry in summary.models:
        values = [entry.metrics.get(key) for key in FILE_ORDER]
        names = [spreadsheet_safe(entry.model_name), spreadsheet_safe(entry.model_id)]  # never a formula
        writer.writerow([*names, entry.num_samples, *("" if v is None else repr(v) for v in values)])
    return buffer.getvalue()


def write_summary(results_dir: Path, resamples: int = MIN_BOOTSTRAP, seed: int = 0) -> Summary:
    summary = build_summary(results_dir, resamples, seed)
    write_json_atomic(results_dir / SUMMARY_JSON, summary)
    write_text_atomic(results_dir / COMPARISON_CSV, comparison_csv(summary))
    return summary
