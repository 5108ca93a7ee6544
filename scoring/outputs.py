"""Result files: `<model>_metrics.json`, `<model>_sample_scores.jsonl`, `all_models_summary.json`,
`comparison.csv`. Every file is written to a temporary name and renamed, so a reader (or a crash) never sees
a partial file. The summary is rebuilt from the files alone (no Java): `python -m scoring summarize DIR`."""

from __future__ import annotations

import csv
import io
import itertools
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
from scoring.engine import ALL_METRICS, MIN_BOOTSTRAP, ModelResult
from scoring.java import ScoringError
from scoring.resample import SampleMatrix, bootstrap_weights, confidence_intervals, corpus_metrics, paired_p_value

_METRICS_SUFFIX = METRICS_JSON.replace("{model}", "")


def write_model_outputs(result: ModelResult, out_dir: Path) -> Path:
    """Sample scores first, metrics file last: a metrics file always has its sample scores next to it."""
    name = result.model.model_name
    write_jsonl_atomic(results_file(out_dir, SAMPLE_SCORES_JSONL, name), result.sample_scores())
    metrics_path = results_file(out_dir, METRICS_JSON, name)
    write_json_atomic(metrics_path, result.metrics_file())
    return metrics_path


CONSOLE_SCALE = 100.0  # people read x100 (the captioning papers' convention); the files keep 0-1


def metric_line(metrics: MetricsFile) -> str:
    """One readable line per model for the terminal, x100 with 95% intervals."""
    parts = []
    for metric in ("cider", "bleu4", "coco_bleu4", "meteor", "rougeL", "spice"):
        value = metrics.metrics.get(metric)
        interval = metrics.ci.get(metric)
        text = "n/a" if value is None else f"{value * CONSOLE_SCALE:.2f}"
        if interval is not None and value is not None:
            text += f" [{interval[0] * CONSOLE_SCALE:.2f}, {interval[1] * CONSOLE_SCALE:.2f}]"
        parts.append(f"{metric}={text}")
    counts = metrics.counts
    return (
        f"{metrics.model_name} ({metrics.model_id}): n={metrics.num_samples} "
        f"(empty {counts.empty}, failed {counts.failed}, missing {counts.missing}) " + "  ".join(parts)
    )


def _matrix_from_sample_scores(rows: list[SampleScores]) -> SampleMatrix:
    spice = [row.scores.get("spice") for row in rows]
    return SampleMatrix(
        sacrebleu=np.array([row.stats["sacrebleu"] for row in rows], dtype=np.float64),
        coco_bleu=np.array([row.stats["coco_bleu"] for row in rows], dtype=np.float64),
        meteor=np.array([row.stats["meteor"] for row in rows], dtype=np.float64),
        rouge=np.array([row.scores["rougeL"] for row in rows], dtype=np.float64),
        cider=np.array([row.scores["cider"] for row in rows], dtype=np.float64),
        spice=None if any(value is None for value in spice) else np.array(spice, dtype=np.float64),
    )


def _read_models(results_dir: Path) -> list[tuple[MetricsFile, list[SampleScores] | None]]:
    models = []
    for path in sorted(results_dir.glob("*" + _METRICS_SUFFIX)):
        metrics = read_json(path, MetricsFile)
        scores_path = results_file(results_dir, SAMPLE_SCORES_JSONL, metrics.model_name)
        rows = list(read_jsonl(scores_path, SampleScores)) if scores_path.is_file() else None
        models.append((metrics, rows))
    return sorted(models, key=lambda model: model[0].model_name)


def build_summary(results_dir: Path, resamples: int = MIN_BOOTSTRAP, seed: int = 0) -> Summary:
    """Summary of every `<model>_metrics.json` in the folder, with paired bootstrap p-values, differences and the
    differences' 95% CIs between every two models scored on the same samples (resampled with the same indices)."""
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
        )
        for metrics, _ in models
    ]
    significance: dict[str, dict[str, float]] = {}
    differences: dict[str, dict[str, PairDifference]] = {}
    bootstrapped: dict[str, tuple[list[str], dict[str, np.ndarray], dict[str, float]]] = {}
    for metrics, rows in models:
        if rows is None:
            continue
        order = sorted(range(len(rows)), key=lambda index: rows[index].sample_id)
        rows = [rows[index] for index in order]
        matrix = _matrix_from_sample_scores(rows)
        values = corpus_metrics(matrix, bootstrap_weights(len(rows), resamples, seed))
        observed = {metric: float(v[0]) for metric, v in corpus_metrics(matrix, np.ones((1, len(rows)))).items()}
        bootstrapped[metrics.model_name] = ([row.sample_id for row in rows], values, observed)
    for (name_a, (ids_a, values_a, observed_a)), (name_b, (ids_b, values_b, observed_b)) in itertools.combinations(
        bootstrapped.items(), 2
    ):
        if ids_a != ids_b:
            continue  # p-values only for models scored on the same samples
        for metric in ALL_METRICS:
            if metric in values_a and metric in values_b:
                pair = f"{name_a}|{name_b}"
                p = paired_p_value(observed_a[metric], observed_b[metric], values_a[metric], values_b[metric])
                significance.setdefault(metric, {})[pair] = p
                difference = observed_a[metric] - observed_b[metric]
                ci = confidence_intervals({metric: values_a[metric] - values_b[metric]})[metric]
                if np.isfinite([difference, *ci]).all():  # JSON has no NaN; a NaN metric has no difference
                    differences.setdefault(metric, {})[pair] = PairDifference(difference=difference, ci=ci)
    signature = dict(models[0][0].signature)
    signature["significance"] = (
        f"paired bootstrap, {resamples} resamples, seed {seed}, two-sided, p=(1+#|d_b-d|>=|d|)/(B+1)"
    )
    return Summary(models=entries, significance=significance, signature=signature, differences=differences)


def comparison_csv(summary: Summary) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model_name", "model_id", "num_samples", *ALL_METRICS])
    for entry in summary.models:
        values = [entry.metrics.get(metric) for metric in ALL_METRICS]
        names = [spreadsheet_safe(entry.model_name), spreadsheet_safe(entry.model_id)]  # never a formula
        writer.writerow([*names, entry.num_samples, *("" if v is None else repr(v) for v in values)])
    return buffer.getvalue()


def write_summary(results_dir: Path, resamples: int = MIN_BOOTSTRAP, seed: int = 0) -> Summary:
    summary = build_summary(results_dir, resamples, seed)
    write_json_atomic(results_dir / SUMMARY_JSON, summary)
    write_text_atomic(results_dir / COMPARISON_CSV, comparison_csv(summary))
    return summary
