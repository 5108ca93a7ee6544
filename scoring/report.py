"""The ablation report: one self-contained `report.html` plus paper-ready `comparison.md` / `comparison.tex`.

Everything is read from a results folder through the contract's file formats and rendered with Jinja2 templates
in `scoring/report_assets/` (HTML autoescaped). The page needs no network: CSS and JS are inlined, charts are
matplotlib SVGs embedded as data URIs, and all per-sample data is embedded ONCE as JSON that plain JS renders page
by page (1,211 samples x 8 models stays responsive because only one page of rows is ever in the DOM).

Panorama thumbnails are small JPEGs written next to the page in `thumbs/` (not embedded): QuIC-360 test has 393
distinct panoramas; a 256x128 photo thumbnail is about 7 kB, so as base64 data URIs they would add about 3.6 MB
(more than the 2.2 MB of data itself) that the browser must parse before showing anything, while files next to
the page load lazily, only for the rows on screen, and are reused on rebuilds.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jinja2
from markupsafe import Markup

from contract import (
    ABLATION_MANIFEST,
    HUMAN_BASELINE,
    METRICS_JSON,
    PREDICTIONS_JSONL,
    REPORT_HTML,
    RUN_MANIFEST,
    SAMPLE_SCORES_JSONL,
    SUMMARY_JSON,
    AblationManifest,
    MetricsFile,
    ModelRunRecord,
    PredictionRecord,
    RunManifest,
    SampleScores,
    SubsetInfo,
    Summary,
    file_sha256,
    is_human_baseline,
    load_dataset,
    read_json,
    read_jsonl,
    results_file,
    write_text_atomic,
)
from contract.dataset import resolve_image
from scoring.metrics import LABELS, METRICS, TABLE_METRICS

COMPARISON_MD = "comparison.md"
COMPARISON_TEX = "comparison.tex"
THUMBS_DIR = "thumbs"
THUMB_SIZE = (256, 128)  # 2:1 like the equirectangular panoramas
# Scoring writes the leave-one-out human agreement as if it were a model (contract.HUMAN_BASELINE, flagged
# `human_baseline`; `python -m scoring human-baseline --name` can name it otherwise): a reference row, never ranked.
# Report columns and labels come from the metric registry (scoring/metrics.py): sacreBLEU's BLEU-4 (the tool's own
# signature) beside pycocoevalcap's, which papers report, then METEOR, ROUGE-L, CIDEr, SPICE.
REPORT_METRICS = tuple(metric.key for metric in TABLE_METRICS)
METRIC_LABELS = LABELS
SCALES = {metric.key: metric.scale for metric in METRICS}  # shown x scale (files keep the 0-1 scale)
# Per-sample scores shown in the sample browser: the metrics with a score of their own per sample.
SAMPLE_METRICS = tuple(metric.key for metric in METRICS if metric.sentence is not None)
DEFAULT_RANK_METRIC = "cider"
# One colour per model in every chart (and its swatch in the leaderboard), by its place in the default ranking:
# Tableau 10, then Tableau 20's light tones for an 11th-20th model, then again.
MODEL_COLOURS = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5", "#c7c7c7",
)  # fmt: skip
CHART_DIGITS = 2  # bars and whiskers are drawn at the precision the tables show: 1e-14 is 0.00, drawn as zero
ALPHA = 0.05  # family-wise error rate of the Holm-Bonferroni correction, per metric
DEMO_SENTENCE = "DEMO: random-weight models; these numbers mean nothing"
MAX_FAILED_SAMPLES_LISTED = 50  # per model in the page; the predictions file has them all
SECTIONS = {  # id -> the nav link's text, which is also the section's heading
    "leaderboard": "Leaderboard",
    "charts": "Charts",
    "per-query": "Per query",
    "significance": "Significance",
    "samples": "Samples",
    "run": "Run",
    "failures": "Failures",
}

# Shown after "per-query" only when the data file has groups (NoCaps' domains, a JSONL "group").
GROUP_SECTION = ("per-group", "Per group")

_ASSETS = Path(__file__).with_name("report_assets")
_T = TypeVar("_T")


class ReportInputError(ValueError):
    """A results folder that cannot be reported; the message names the folder or file."""


# ---------------------------------------------------------------------------------------------------------
# What the report shows, gathered from the results folder.


@dataclass
class ModelView:
    name: str
    model_id: str = ""
    status: str = "scored"  # scored | failed | unscored (predictions but no metrics yet)
    message: str | None = None
    metrics: MetricsFile | None = None
    run: RunManifest | None = None
    record: ModelRunRecord | None = None  # the orchestrator's entry in run_manifest.json
    scores: dict[str, SampleScores] = field(default_factory=dict)
    predictions: dict[str, PredictionRecord] = field(default_factory=dict)

    @property
    def has_outputs(self) -> bool:
        return bool(self.scores or self.predictions)

    @property
    def random_weights(self) -> bool:
        return bool((self.metrics and self.metrics.random_weights) or (self.run and self.run.random_weights))

    def metric(self, name: str) -> float | None:
        value = self.metrics.metrics.get(name) if self.metrics else None
        return value if value is not None and math.isfinite(value) else None  # NaN is shown as n/a, never ranked

    def ci(self, name: str) -> tuple[float, float] | None:
        ci = self.metrics.ci.get(name) if self.metrics else None
        return ci if ci is not None and all(math.isfinite(bound) for bound in ci) else None


@dataclass
class SampleView:
    sample_id: str
    image: str
    query: str
    references: list[str]
    local_image: Path | None = None
    thumb: str | None = None  # path relative to the page


@dataclass
class ReportInputs:
    results_dir: Path
    models: list[ModelView]
    samples: list[SampleView]
    summary: Summary | None = None
    ablation: AblationManifest | None = None
    human: MetricsFile | None = None
    human_view: ModelView | None = None  # the human row's files (its held-out references, for caption lengths)
    skipped: list[str] = field(default_factory=list)  # unreadable files left out, one line each
    image_note: str = ""

    @property
    def scored(self) -> list[ModelView]:
        return [m for m in self.models if m.status == "scored"]


def _read(path: Path, reader: Callable[[Path], _T], skipped: list[str]) -> _T | None:
    """The file, or None when it is absent; an unreadable one is left out with a line saying why."""
    if not path.is_file():
        return None
    try:
        return reader(path)
    except (OSError, ValueError) as error:  # ValueError covers bad JSON, bad records and bad UTF-8
        skipped.append(f"skipped unreadable {path}: {_clip(_one_line(str(error)), 300)}")
        return None


def _suffix(pattern: str) -> str:
    return pattern.replace("{model}", "")


def load_inputs(
    results_dir: Path,
    *,
    models: Sequence[str] | None = None,
    data_file: Path | None = None,
    image_root: Path | None = None,
) -> ReportInputs:
    """Read the folder. `models`: the models to show, plus the ones the orchestrator's run_manifest.json records as
    failed or pending (they cannot be scored, and a report must not hide them) and the human baseline; None: every
    model with a file in the folder. Unreadable files are left out and listed in `skipped`."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ReportInputError(f"{results_dir}: results folder not found")
    skipped: list[str] = []
    summary = _read(results_dir / SUMMARY_JSON, lambda p: read_json(p, Summary), skipped)
    ablation = _read(results_dir / ABLATION_MANIFEST, lambda p: read_json(p, AblationManifest), skipped)
    records = ablation.models if ablation else []

    if models is not None:
        names = [*models, *(r.model_name for r in records if r.status != "completed")]
        # The human-agreement row belongs to every report of the folder.
        names += [HUMAN_BASELINE] if results_file(results_dir, METRICS_JSON, HUMAN_BASELINE).is_file() else []
        names += [e.model_name for e in summary.models if is_human_baseline(e)] if summary else []
    else:  # the summary's order, then the orchestrator's, then whatever files exist (sorted)
        names = [e.model_name for e in summary.models] if summary else []
        names += [r.model_name for r in records]
        for pattern in (METRICS_JSON, SAMPLE_SCORES_JSONL, PREDICTIONS_JSONL, RUN_MANIFEST):
            suffix = _suffix(pattern)
            names += sorted(p.name[: -len(suffix)] for p in results_dir.glob("*" + suffix))
    loaded = [_load_model(results_dir, name, summary, ablation, skipped) for name in dict.fromkeys(names)]
    humans = [m for m in loaded if m.name == HUMAN_BASELINE or (m.metrics is not None and is_human_baseline(m.metrics))]
    human_names = {m.name for m in humans}
    shown = [
        m for m in loaded if m.name not in human_names and (m.metrics or m.run or m.record or m.has_outputs or models)
    ]
    if not shown:
        raise ReportInputError(
            f"{results_dir}: nothing to report: no model's {METRICS_JSON.format(model='*')}, "
            f"{PREDICTIONS_JSONL.format(model='*')} or {SUMMARY_JSON} found"
            + (f" ({'; '.join(skipped)})" if skipped else "")
        )
    samples = _load_samples(shown, ablation, data_file, image_root)
    human = next((m for m in humans if m.metrics is not None), None)
    return ReportInputs(
        results_dir,
        shown,
        samples,
        summary=summary,
        ablation=ablation,
        human=human.metrics if human else None,
        human_view=human,
        skipped=skipped,
    )


def _load_model(
    results_dir: Path, name: str, summary: Summary | None, ablation: AblationManifest | None, skipped: list[str]
) -> ModelView:
    view = ModelView(name=name)
    view.metrics = _read(results_file(results_dir, METRICS_JSON, name), lambda p: read_json(p, MetricsFile), skipped)
    view.run = _read(results_file(results_dir, RUN_MANIFEST, name), lambda p: read_json(p, RunManifest), skipped)
    scores = _read(
        results_file(results_dir, SAMPLE_SCORES_JSONL, name), lambda p: list(read_jsonl(p, SampleScores)), skipped
    )
    predictions = _read(
        results_file(results_dir, PREDICTIONS_JSONL, name), lambda p: list(read_jsonl(p, PredictionRecord)), skipped
    )
    view.scores = {record.sample_id: record for record in scores or []}
    # A resumed run may append a sample again: the last record wins, as in scoring.
    view.predictions = {record.sample_id: record for record in predictions or []}

    entry = next((e for e in summary.models if e.model_name == name), None) if summary else None
    view.record = next((r for r in ablation.models if r.model_name == name), None) if ablation else None
    view.model_id = (
        (view.metrics.model_id if view.metrics else "")
        or (view.run.model_id if view.run else "")
        or (entry.model_id if entry else "")
        or (view.record.model_id if view.record else "")
    )
    if view.record is not None and view.record.status == "failed":
        view.status, view.message = "failed", view.record.message
    elif entry is not None and entry.status == "failed":
        view.status, view.message = "failed", entry.message
    elif view.metrics is None:
        view.status = "unscored"
        pending = view.record is not None and view.record.status == "pending"
        view.message = (view.record.message if view.record else None) or (
            "pending in run_manifest.json (not run, or interrupted)" if pending else "no metrics file (not scored)"
        )
    return view


def _load_samples(
    models: list[ModelView], ablation: AblationManifest | None, data_file: Path | None, image_root: Path | None
) -> list[SampleView]:
    samples: dict[str, SampleView] = {}
    data_file = data_file or _recorded_data_file(models, ablation)
    if data_file is not None:
        # Read as the run read it: its format and Karpathy split, as the manifests recorded them.
        runs = [ablation] if ablation else []
        runs += [m.run for m in models if m.run]
        recorded = next((run for run in runs if Path(run.data_file) == data_file), None)
        data_format = recorded.data_format if recorded else None
        split = recorded.data_split if recorded else None
        for sample in load_dataset(data_file, image_root=image_root, data_format=data_format, split=split).samples:
            local = None if sample.image_path.startswith(("http://", "https://")) else Path(sample.image_path)
            samples[sample.sample_id] = SampleView(
                sample.sample_id, sample.image, sample.query, list(sample.references), local_image=local
            )
    data_dir = _data_dir(models, ablation, data_file)
    for model in models:
        for record in model.predictions.values():
            if record.sample_id not in samples:
                resolved = resolve_image(record.image, data_dir, image_root) if data_dir or image_root else ""
                local = Path(resolved) if resolved and not resolved.startswith(("http://", "https://")) else None
                samples[record.sample_id] = SampleView(
                    record.sample_id, record.image, record.query, list(record.references), local_image=local
                )
        for score in model.scores.values():
            if score.sample_id not in samples:  # scores without predictions: no image known
                samples[score.sample_id] = SampleView(score.sample_id, "", score.query, list(score.references))
    return list(samples.values())


def _recorded_data_file(models: list[ModelView], ablation: AblationManifest | None) -> Path | None:
    """The data file the manifests name, if it is still on disk unchanged (same sha256): it gives the samples
    their file order, all references and the image paths even when no --data was given."""
    recorded = [(ablation.data_file, ablation.data_sha256)] if ablation else []
    recorded += [(m.run.data_file, m.run.data_sha256) for m in models if m.run]
    for path, sha256 in dict.fromkeys(recorded):
        candidate = Path(path)
        if candidate.is_file() and file_sha256(candidate) == sha256:
            return candidate
    return None


def _data_dir(models: list[ModelView], ablation: AblationManifest | None, data_file: Path | None) -> Path | None:
    """The folder relative image paths are resolved against, as the runner did: the data file's folder."""
    candidates = [data_file] if data_file else []
    if ablation:
        candidates.append(Path(ablation.data_file))
    candidates += [Path(m.run.data_file) for m in models if m.run]
    for candidate in candidates:
        if candidate is not None and candidate.parent.is_dir():
            return candidate.parent.resolve()
    return None


# ---------------------------------------------------------------------------------------------------------
# Thumbnails.


def make_thumbnails(inputs: ReportInputs) -> None:
    """Write one small JPEG per distinct local panorama into `thumbs/`, reusing those made before."""
    from PIL import Image

    thumbs = inputs.results_dir / THUMBS_DIR
    made: dict[Path, str | None] = {}
    missing: list[str] = []
    remote = 0
    for sample in inputs.samples:
        if sample.local_image is None:
            remote += bool(sample.image)
            continue
        if sample.local_image not in made:
            made[sample.local_image] = _thumbnail(sample.local_image, thumbs, Image)
            if made[sample.local_image] is None:
                missing.append(str(sample.local_image))
        sample.thumb = made[sample.local_image]
    with_thumb = sum(1 for s in inputs.samples if s.thumb)
    parts = []
    if missing:
        parts.append(f"{len(missing)} image(s) not found or unreadable on disk (e.g. {missing[0]})")
    if remote:
        parts.append(f"{remote} sample(s) have remote image URLs, which the report does not download")
    unknown = sum(1 for s in inputs.samples if not s.image)
    if unknown:
        parts.append(f"{unknown} sample(s) have no image reference (no predictions file)")
    if parts:
        inputs.image_note = f"Thumbnails for {with_thumb} of {len(inputs.samples)} samples; " + "; ".join(parts) + "."


def _thumbnail(image: Path, thumbs: Path, pil_image: Any) -> str | None:
    try:
        stat = image.stat()
    except OSError:
        return None
    key = hashlib.sha1(f"{image}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:20]
    target = thumbs / f"{key}.jpg"
    if not target.is_file():
        try:
            with pil_image.open(image) as opened:
                opened.draft("RGB", (THUMB_SIZE[0] * 2, THUMB_SIZE[1] * 2))  # JPEG: decode at reduced scale
                small = opened.convert("RGB")
                small.thumbnail(THUMB_SIZE)
                buffer = io.BytesIO()
                small.save(buffer, format="JPEG", quality=72, optimize=True)
        except (OSError, ValueError, pil_image.DecompressionBombError):  # unreadable: no thumbnail, said so
            return None
        thumbs.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(target)
    return f"{THUMBS_DIR}/{target.name}"


# ---------------------------------------------------------------------------------------------------------
# Numbers: formatting, significance after correction, rankings.


def fmt(value: float | None, digits: int = 2, sign: bool = False, metric: str | None = None) -> str:
    """On the metric's display scale (x100) with `digits` decimals; a real minus sign so negative gaps read as such."""
    if value is None or not math.isfinite(value):
        return "n/a"
    shown = round(value * _scale(metric), digits) or 0.0  # a tiny negative rounds to 0.00, never to "-0.00"
    return f"{shown:{'+' if sign else ''}.{digits}f}".replace("-", "\u2212")


def fmt_ci(ci: tuple[float, float] | None, digits: int = 2, metric: str | None = None) -> str:
    return "" if ci is None else f"[{fmt(ci[0], digits, metric=metric)}, {fmt(ci[1], digits, metric=metric)}]"


def _scale(metric: str | None) -> float:
    return SCALES.get(metric, SCALES["cider"]) if metric is not None else SCALES["cider"]


def scale_text() -> str:
    """How the tables' numbers are scaled, said once: "x100" when every column shares it."""
    scales = {SCALES[key] for key in REPORT_METRICS}
    return f"x{scales.pop():g}" if len(scales) == 1 else "each on the scale its label gives"


def fmt_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values: the i-th smallest of m is multiplied by (m - i + 1), made monotone.

    A pair is significant at family-wise level ALPHA exactly when its adjusted p is below ALPHA, i.e. when it and
    every smaller p-value beat their step-down thresholds ALPHA/m, ALPHA/(m-1), ...
    """
    count = len(p_values)
    adjusted = [1.0] * count
    running = 0.0
    for rank, index in enumerate(sorted(range(count), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (count - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


@dataclass
class PairTest:
    """One metric, models a and b: the paired bootstrap p-value, its Holm adjustment and a - b with its CI."""

    p: float
    p_holm: float
    difference: float | None  # a - b (0-1 scale), None when the summary predates differences
    ci: tuple[float, float] | None

    @property
    def significant(self) -> bool:
        return self.p_holm < ALPHA

    @property
    def direction(self) -> str | None:
        """Whether a scores higher ("better") or lower ("worse") than b."""
        if self.difference is None or self.difference == 0:
            return None
        return "better" if self.difference > 0 else "worse"


def pair_tests(inputs: ReportInputs, metric: str) -> dict[tuple[str, str], PairTest]:
    """(a, b) -> test, in both orders, over the pairs of SHOWN scored models that have a p-value: this metric's
    Holm family (the summary may hold more pairs, e.g. with models left out of this report)."""
    if inputs.summary is None:
        return {}
    p_values = inputs.summary.significance.get(metric, {})
    differences = inputs.summary.differences.get(metric, {})
    names = [m.name for m in inputs.scored]
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for first, second in ((a, b), (b, a)):  # the summary keys each pair once, in its own order
                p = p_values.get(f"{first}|{second}")
                if p is not None and math.isfinite(p):
                    pairs.append((first, second, p, differences.get(f"{first}|{second}")))
                    break
    values = {m.name: m.metric(metric) for m in inputs.scored}
    tests: dict[tuple[str, str], PairTest] = {}
    for (a, b, p, diff), p_holm in zip(pairs, holm_adjusted([pair[2] for pair in pairs]), strict=True):
        if diff is not None:
            difference, ci = diff.difference, diff.ci
        else:  # a summary written before differences were recorded: the observed difference, no interval
            value_a, value_b = values[a], values[b]
            difference, ci = (value_a - value_b if value_a is not None and value_b is not None else None), None
        tests[(a, b)] = PairTest(p, p_holm, difference, ci)
        flipped = None if ci is None else (-ci[1], -ci[0])
        tests[(b, a)] = PairTest(p, p_holm, None if difference is None else -difference, flipped)
    return tests


@dataclass
class RankCells:
    """What the leaderboard shows for one model when ranked by one metric (display strings)."""

    rank: str  # "3", or "=3" when tied with another model (the same value shares a rank)
    gap: str
    ci: str
    significant: bool
    title: str
    value: str = ""  # the metric's value as shown, beside the model's name on a narrow screen
    rank_title: str = ""  # why a rank is shared


@dataclass
class Ranking:
    """One metric's leaderboard order and its pairwise tests (the significance matrix shows the same tests)."""

    metric: str
    order: list[str]  # scored models with a value, best first
    cells: dict[str, RankCells]
    tests: dict[tuple[str, str], PairTest]

    @property
    def pairs(self) -> int:
        """The size of the Holm family."""
        return len(self.tests) // 2


def rank(inputs: ReportInputs, metric: str) -> Ranking:
    label = METRIC_LABELS[metric]
    tests = pair_tests(inputs, metric)
    valued = sorted(((m.name, v) for m in inputs.scored if (v := m.metric(metric)) is not None), key=lambda x: -x[1])
    cells: dict[str, RankCells] = {}
    for name, value in valued:
        position = str(1 + sum(1 for _, other in valued if other > value))  # ties share a rank
        tied = [other_name for other_name, other in valued if other == value and other_name != name]
        rank_text = f"={position}" if tied else position
        rank_title = f"tied with {', '.join(tied)}: the same {label} ({fmt(value, metric=metric)})" if tied else ""
        shown = fmt(value, metric=metric)
        best_name, best_value = valued[0]
        if name == best_name:
            cells[name] = RankCells(rank_text, "best", "", False, f"highest {label}", shown, rank_title)
            continue
        test = tests.get((name, best_name))
        gap = fmt(value - best_value, sign=True, metric=metric)
        if test is None:
            title = f"no paired test with {best_name} (other samples)"
            cells[name] = RankCells(rank_text, gap, "", False, title, shown, rank_title)
            continue
        verdict = "significant" if test.significant else "not significant"
        title = (
            f"{name} \u2212 {best_name}: p = {test.p:.4f}, Holm-adjusted p = {test.p_holm:.4f} "
            f"({verdict} at {ALPHA} after the correction over {len(tests) // 2} pairs)"
        )
        cells[name] = RankCells(
            rank_text, gap, fmt_ci(test.ci, metric=metric), test.significant, title, shown, rank_title
        )
    return Ranking(metric, [name for name, _ in valued], cells, tests)


def best_values(models: list[ModelView], digits: int) -> dict[str, float]:
    """metric -> the best value rounded as displayed, so ties at the shown precision are all bold. Nothing is
    bold with fewer than two models to compare, nor when every model shows the same value."""
    best: dict[str, float] = {}
    for metric in REPORT_METRICS:
        values = [round(v * SCALES[metric], digits) for m in models if (v := m.metric(metric)) is not None]
        if len(models) >= 2 and len(set(values)) > 1:  # every model alike (all 0.00): none is best
            best[metric] = max(values)
    return best


def is_best(model: ModelView, metric: str, best: dict[str, float], digits: int) -> bool:
    value = model.metric(metric)
    return value is not None and metric in best and round(value * SCALES[metric], digits) == best[metric]


# ---------------------------------------------------------------------------------------------------------
# Notes that apply to many models, said once.


def subset_text(subset: SubsetInfo) -> str:
    text = f"subset: first {subset.num_samples:,} of {subset.data_samples:,} samples"
    return text + (f" (--limit {subset.limit})" if subset.limit is not None else "")


@dataclass
class Notes:
    """What applies to several models, each distinct text once with the models it applies to."""

    unavailable: list[str]  # "SPICE n/a for every model: <reason>"
    subsets: list[str]  # "subset: first 50 of 1,211 samples (--limit 50)", models named unless all
    warnings: list[str]  # "every model: ..." / "a, b: ..."


def notes(inputs: ReportInputs) -> Notes:
    everyone = sorted(m.name for m in inputs.scored)
    unavailable: dict[tuple[str, str], list[str]] = {}
    subsets: dict[str, list[str]] = {}
    warnings: dict[str, list[str]] = {}
    for model in inputs.scored:
        assert model.metrics is not None
        reasons = model.metrics.unavailable
        for metric, reason in reasons.items():
            unavailable.setdefault((METRIC_LABELS.get(metric, metric), _one_line(reason)), []).append(model.name)
        if model.metrics.subset is not None:
            subsets.setdefault(subset_text(model.metrics.subset), []).append(model.name)
        for warning in model.metrics.warnings:
            if not any(reason in warning for reason in reasons.values()):  # restates an n/a reason: said once above
                warnings.setdefault(_one_line(warning), []).append(model.name)

    def every(names: list[str]) -> bool:
        return len(everyone) > 1 and sorted(names) == everyone

    return Notes(
        unavailable=[
            f"{label} n/a for {'every model' if every(names) else ', '.join(names)}: {reason}"
            for (label, reason), names in unavailable.items()
        ],
        subsets=[
            text if len(everyone) == 1 or every(names) else f"{text} ({', '.join(names)})"
            for text, names in subsets.items()
        ],
        warnings=[f"{'every model' if every(names) else ', '.join(names)}: {text}" for text, names in warnings.items()],
    )


def unavailable_metrics(inputs: ReportInputs) -> list[str]:
    """Metrics no scored model has a value for (SPICE without its CoreNLP jars)."""
    return [m for m in REPORT_METRICS if not any(model.metric(m) is not None for model in inputs.scored)]


# ---------------------------------------------------------------------------------------------------------
# Charts (matplotlib, SVG data URIs).


def model_colours(order: Sequence[str]) -> dict[str, str]:
    """One colour per model, by its place in `order` (the ranking): the same in every chart and the leaderboard."""
    return {name: MODEL_COLOURS[index % len(MODEL_COLOURS)] for index, name in enumerate(order)}


def _shown(value: float, metric: str) -> float:
    """A value on the display scale at the tables' precision (1e-14 is 0.0: no bar, no 1e-10 axis)."""
    return round(value * SCALES[metric], CHART_DIGITS) + 0.0  # + 0.0: -0.0 becomes 0.0


def metric_charts(inputs: ReportInputs, order: Sequence[str] | None = None) -> dict[str, str]:
    """metric -> data URI of a horizontal bar chart with 95% CI error bars (only metrics with values). Every chart lists
    the models in `order` (the leaderboard's ranking), best at the top, each in its own colour (model_colours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = list(order or [m.name for m in inputs.scored])
    colours = model_colours(order)
    by_name = {m.name: m for m in inputs.scored}
    charts: dict[str, str] = {}
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "vlm-ablation", "font.size": 9}):
        for metric in REPORT_METRICS:
            rows = [
                (name, _shown(v, metric), by_name[name].ci(metric))
                for name in order
                if name in by_name and (v := by_name[name].metric(metric)) is not None
            ]
            if not rows:
                continue
            rows.reverse()  # barh draws from the bottom: the first of `order` ends up on top
            values = [v for _, v, _ in rows]
            lows = [max(0.0, v - _shown(ci[0], metric)) if ci else 0.0 for _, v, ci in rows]
            highs = [max(0.0, _shown(ci[1], metric) - v) if ci else 0.0 for _, v, ci in rows]
            width, height = 4.6, 0.32 * len(rows) + 0.9
            figure, axes = plt.subplots(figsize=(width, height))
            # Fixed margins sized from the longest name instead of tight_layout, which draws every figure twice.
            label_inches = 0.065 * max(len(name) for name, _, _ in rows) + 0.15
            figure.subplots_adjust(
                left=min(0.55, label_inches / width), right=0.97, top=1 - 0.1 / height, bottom=0.55 / height
            )
            positions = list(range(len(rows)))
            axes.barh(positions, values, color=[colours[name] for name, _, _ in rows], height=0.6)
            # Whiskers only where the interval has a width at the shown precision (no caps drawn on a zero).
            spread = [i for i in positions if lows[i] > 0 or highs[i] > 0]
            if spread:
                axes.errorbar(
                    [values[i] for i in spread],
                    spread,
                    xerr=[[lows[i] for i in spread], [highs[i] for i in spread]],
                    fmt="none",
                    ecolor="#222",
                    capsize=3,
                    linewidth=1,
                )
            axes.set_yticks(positions, [name for name, _, _ in rows])
            human = inputs.human.metrics.get(metric) if inputs.human else None
            shown_human = _shown(human, metric) if human is not None and math.isfinite(human) else None
            if shown_human is not None:  # the figure caption in the page names the line
                axes.axvline(shown_human, color="#e45756", linestyle="--", linewidth=1)
            reach = max([v + h for v, h in zip(values, highs, strict=True)] + [shown_human or 0.0])
            axes.set_xlim(0, reach * 1.05 if reach > 0 else 1)  # bars start at 0; an all-zero chart still has a scale
            # Plain tick labels: never a "1e-10" multiplier or an offset drawn over the axis title.
            axes.ticklabel_format(axis="x", style="plain", useOffset=False)
            axes.set_xlabel(f"{METRIC_LABELS[metric]}, error bars: 95% CI")
            axes.spines[["top", "right"]].set_visible(False)
            buffer = io.StringIO()
            figure.savefig(buffer, format="svg", metadata={"Date": None})
            plt.close(figure)
            charts[metric] = "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue().encode()).decode()
    return charts


# ---------------------------------------------------------------------------------------------------------
# Text helpers shared by the templates.


def _one_line(text: str) -> str:
    """Newlines would end a LaTeX comment or a Markdown list item, and a blank line breaks a LaTeX caption."""
    return " ".join(text.split())


def _clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def _short(value: str | None, length: int = 12) -> str | None:
    return value if value is None or len(value) <= length else value[:length] + "…"


def _join(*values: object) -> str | None:
    present = [str(v) for v in values if v not in (None, "")]
    return " ".join(present) if present else None


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _decoding(decoding: dict[str, Any]) -> str:
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in sorted(decoding.items()))


_LATEX = str.maketrans(
    {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
)


def _latex(text: str) -> str:
    return _one_line(text).translate(_LATEX)


def _markdown(text: str) -> str:
    return _one_line(text).replace("|", r"\|").replace("*", r"\*").replace("_", r"\_")


def _failed_samples(model: ModelView) -> list[tuple[str, str, str]]:
    failures: dict[str, tuple[str, str, str]] = {}
    for record in model.predictions.values():
        if record.error:
            failures[record.sample_id] = (record.sample_id, record.query, record.error)
    for score in model.scores.values():
        if score.error and score.sample_id not in failures:
            failures[score.sample_id] = (score.sample_id, score.query, score.error)
    return list(failures.values())


def _error_kinds(failures: list[tuple[str, str, str]]) -> str:
    kinds = Counter(error for _, _, error in failures)
    return "; ".join(f"{count} x {_clip(kind, 160)}" for kind, count in kinds.most_common(5))


@dataclass
class CaptionStats:
    """How long a model's captions are and how many came out empty (after cleanup, as scored)."""

    mean_words: float | None  # words per non-empty caption; None: no sample scores to count from
    empty: int
    failed: int
    scored: int

    @property
    def empty_text(self) -> str:
        return f"{100 * self.empty / self.scored:.1f}%" if self.scored else "—"

    @property
    def words_text(self) -> str:
        return "—" if self.mean_words is None else f"{self.mean_words:.1f}"


def caption_stats(model: ModelView) -> CaptionStats | None:
    if model.metrics is None:
        return None
    counts = model.metrics.counts
    words = [len(score.prediction.split()) for score in model.scores.values() if score.prediction.strip()]
    mean = sum(words) / len(words) if words else None
    return CaptionStats(mean, counts.empty, counts.failed, counts.scored)


def reference_words(inputs: ReportInputs) -> str:
    """Mean words per reference caption of the shown samples: what a caption's length compares with."""
    words = [len(ref.split()) for sample in inputs.samples for ref in sample.references if ref.strip()]
    return f"{sum(words) / len(words):.1f}" if words else "—"


def paper_cells(model: ModelView, best: dict[str, float], style: str) -> list[str]:
    """One Markdown ("md") or LaTeX ("tex") cell per metric: x100 with one decimal, bold when best, ± the CI's
    half-width (the interval may be asymmetric; the page and the metrics files have its bounds)."""
    cells = []
    for metric in REPORT_METRICS:
        value, ci = model.metric(metric), model.ci(metric)
        text = fmt(value, 1, metric=metric)
        if is_best(model, metric, best, 1):
            text = f"**{text}**" if style == "md" else f"\\textbf{{{text}}}"
        if value is not None and ci is not None:
            half = fmt((ci[1] - ci[0]) / 2, 1, metric=metric)
            text += f" ± {half}" if style == "md" else f" {{\\scriptsize $\\pm$ {half}}}"
        cells.append(text)
    return cells


def _human_cells(human: MetricsFile) -> list[str]:
    return [fmt(human.metrics.get(metric), 1, metric=metric) for metric in REPORT_METRICS]


def _not_shown(model: ModelView) -> str:
    return f"{_one_line(model.name)} ({model.status}: {_one_line(model.message or 'no reason recorded')})"


def _prompts(inputs: ReportInputs) -> dict[str, list[str]]:
    """prompt template -> the models that used it."""
    prompts: dict[str, list[str]] = {}
    for model in inputs.models:
        if model.run:
            prompts.setdefault(model.run.prompt_template, []).append(model.name)
    return prompts


def _num_samples_text(inputs: ReportInputs) -> str:
    counts = sorted({m.metrics.num_samples for m in inputs.scored if m.metrics})
    return "/".join(f"{c:,}" for c in counts) or f"{len(inputs.samples):,}"


_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_ASSETS),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),  # md/tex escape their own way
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
)
# `tojson` escapes <, >, & and ' so no caption can end the <script> block; NaN would make JSON.parse fail.
_ENV.policies["json.dumps_kwargs"] = {"ensure_ascii": False, "separators": (",", ":"), "allow_nan": False}
_ENV.filters.update(
    label=METRIC_LABELS.get,
    one_line=_one_line,
    fmt=fmt,
    fmt_ci=fmt_ci,
    fmt_p=fmt_p,
    latex=_latex,
    md=_markdown,
    clip=_clip,
    short=_short,
)
_ENV.globals.update(
    METRIC_LABELS=METRIC_LABELS,
    DEMO_SENTENCE=DEMO_SENTENCE,
    ALPHA=ALPHA,
    join_present=_join,
    subset_text=subset_text,
    seconds=_seconds,
    decoding=_decoding,
    failed_samples=_failed_samples,
    error_kinds=_error_kinds,
    is_best=is_best,
    paper_cells=paper_cells,
    human_cells=_human_cells,
    not_shown=_not_shown,
    caption_stats=caption_stats,
    MAX_FAILED_SAMPLES_LISTED=MAX_FAILED_SAMPLES_LISTED,
    PREDICTIONS_JSONL=PREDICTIONS_JSONL,
    ABLATION_MANIFEST=ABLATION_MANIFEST,
    scale_text=scale_text,
)


# ---------------------------------------------------------------------------------------------------------
# The page and the paper tables.


def page_data(inputs: ReportInputs, rankings: dict[str, Ranking], ranked: list[str], rank_by: str) -> dict[str, Any]:
    """The JSON the page's JS renders from: embedded once, arrays aligned with `models` and `sampleMetrics`."""
    shown = [m for m in inputs.models if m.has_outputs]
    queries = list(dict.fromkeys(s.query for s in inputs.samples))
    query_index = {q: i for i, q in enumerate(queries)}
    samples = []
    for sample in inputs.samples:
        predictions, scores, errors = [], [], []
        for model in shown:
            score = model.scores.get(sample.sample_id)
            record = model.predictions.get(sample.sample_id)
            if score is not None:
                predictions.append(score.prediction)
                scores.append([_round(score.scores.get(metric)) for metric in SAMPLE_METRICS])
                errors.append(score.error or (record.error if record else None))
            else:
                predictions.append(record.prediction if record else None)
                scores.append(None)
                errors.append(record.error if record else "no prediction")
        samples.append(
            {
                "id": sample.sample_id,
                "q": query_index[sample.query],
                "img": sample.thumb or "",
                "refs": sample.references,
                "pred": predictions,
                "score": scores,
                "err": errors if any(errors) else 0,
            }
        )
    return {
        "scales": SCALES,
        "labels": METRIC_LABELS,
        "sampleMetrics": list(SAMPLE_METRICS),
        "models": [m.name for m in shown],
        "scoredModels": ranked,  # best first, as in the leaderboard
        "colours": model_colours(ranked),
        "rankBy": rank_by,
        "queries": queries,
        "samples": samples,
        "perQuery": _finite({m.name: m.metrics.per_query for m in inputs.scored if m.metrics}),
        "ranking": {
            metric: {"order": r.order, "cells": {name: vars(cells) for name, cells in r.cells.items()}}
            for metric, r in rankings.items()
        },
    }


def _finite(value: Any) -> Any:
    """NaN/inf become None: JSON has no NaN, and the page's JSON.parse would reject the whole report."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    return value


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 5)


def resampled_units(inputs: ReportInputs) -> str:
    """What the bootstrap resampled, from the models' signatures: images when an image carries several samples."""
    units = {m.metrics.signature.get("bootstrap_unit") for m in inputs.scored if m.metrics}
    if units == {"image"}:
        return "images"
    if units == {"sample"}:
        return "samples"
    return "images or samples"


def _context(inputs: ReportInputs, rank_by: str) -> dict[str, Any]:
    """What every template gets: the models ranked, the notes said once, the demo flag."""
    rankings = {metric: rank(inputs, metric) for metric in REPORT_METRICS}
    with_values = [m for m in REPORT_METRICS if m not in unavailable_metrics(inputs)]
    if rank_by not in with_values:
        rank_by = with_values[0] if with_values else rank_by
    order = rankings[rank_by].order
    ranked = sorted(inputs.scored, key=lambda m: order.index(m.name) if m.name in order else len(order))
    tied = any(cells.rank.startswith("=") for ranking in rankings.values() for cells in ranking.cells.values())
    return {
        "colours": model_colours([m.name for m in ranked]),
        "ties": tied,
        "reference_words": reference_words(inputs),
        "inputs": inputs,
        "rank_by": rank_by,
        "ranking": rankings[rank_by],
        "rankings": rankings,
        "ranked": ranked,  # scored models, best first by rank_by
        "rows": ranked + [m for m in inputs.models if m.status != "scored"],
        "not_scored": [m for m in inputs.models if m.status != "scored"],
        "metrics": REPORT_METRICS,
        "with_values": with_values,
        "demo_models": [m.name for m in inputs.models if m.random_weights],
        "notes": notes(inputs),
        "num_samples": _num_samples_text(inputs),
        "prompts": _prompts(inputs),
        "resampled": resampled_units(inputs),
    }


def render_html(inputs: ReportInputs, charts: dict[str, str], rank_by: str = DEFAULT_RANK_METRIC) -> str:
    context = _context(inputs, rank_by)
    rows = [row for m in inputs.scored if m.metrics for row in m.metrics.per_query.values()]
    per_query = [m for m in context["with_values"] if any(row.get(m) is not None for row in rows)]
    groups = per_group_columns(inputs)
    return _ENV.get_template("report.html").render(
        **context,
        groups=groups,
        sections=_sections(bool(groups)),
        title=f"VLM ablation report: {len(inputs.models)} model(s), {len(inputs.samples)} sample(s)",
        charts=charts,
        best=best_values(inputs.scored, 2),
        per_query_metrics=per_query or list(context["with_values"]),
        sample_metrics=[m for m in SAMPLE_METRICS if m in context["with_values"]] or list(SAMPLE_METRICS),
        data=page_data(inputs, context["rankings"], [m.name for m in context["ranked"]], context["rank_by"]),
        css=Markup((_ASSETS / "report.css").read_text(encoding="utf-8")),
        js=Markup((_ASSETS / "report.js").read_text(encoding="utf-8")),
    )


def _sections(with_groups: bool) -> dict[str, str]:
    sections: dict[str, str] = {}
    for key, label in SECTIONS.items():
        sections[key] = label
        if key == "per-query" and with_groups:
            sections[GROUP_SECTION[0]] = GROUP_SECTION[1]
    return sections


def per_group_columns(inputs: ReportInputs) -> dict[str, int]:
    """The groups of the scored models' per-group breakdowns, in order, with their sample counts (the largest count
    any model has: models scored on other samples may differ); empty when the data file has no groups."""
    columns: dict[str, int] = {}
    for model in inputs.scored:
        for group, row in (model.metrics.per_group if model.metrics else {}).items():
            columns[group] = max(columns.get(group, 0), int(row.get("num_samples") or 0))
    return dict(sorted(columns.items()))


def comparison_markdown(inputs: ReportInputs, rank_by: str = DEFAULT_RANK_METRIC) -> str:
    return _ENV.get_template("comparison.md").render(**_context(inputs, rank_by), best=best_values(inputs.scored, 1))


def comparison_latex(inputs: ReportInputs, rank_by: str = DEFAULT_RANK_METRIC) -> str:
    return _ENV.get_template("comparison.tex").render(**_context(inputs, rank_by), best=best_values(inputs.scored, 1))


def build_report(
    results_dir: Path,
    *,
    models: Sequence[str] | None = None,
    data_file: Path | None = None,
    image_root: Path | None = None,
    rank_by: str = DEFAULT_RANK_METRIC,
) -> Path:
    """Write report.html, comparison.md and comparison.tex into `results_dir`; return the report's path.

    `models`: the models to show (`python -m scoring score --report` passes the ones it scored); None shows every
    model in the folder. Files that cannot be read are left out, each named on stderr and at the top of the page.
    """
    if rank_by not in REPORT_METRICS:
        raise ReportInputError(f"rank_by {rank_by!r}: expected one of {', '.join(REPORT_METRICS)}")
    results_dir = Path(results_dir)
    inputs = load_inputs(
        results_dir,
        models=models,
        data_file=Path(data_file) if data_file is not None else None,
        image_root=Path(image_root) if image_root is not None else None,
    )
    for line in inputs.skipped:
        print(f"warning: {line}", file=sys.stderr)
    make_thumbnails(inputs)
    charts = metric_charts(inputs, [m.name for m in _context(inputs, rank_by)["ranked"]])
    write_text_atomic(results_dir / COMPARISON_MD, comparison_markdown(inputs, rank_by))
    write_text_atomic(results_dir / COMPARISON_TEX, comparison_latex(inputs, rank_by))
    report = results_dir / REPORT_HTML
    write_text_atomic(report, render_html(inputs, charts, rank_by))
    return report
