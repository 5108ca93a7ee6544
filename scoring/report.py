"""The ablation report: one self-contained `report.html` plus paper-ready `comparison.md` / `comparison.tex`.

Everything is read from a results folder through the contract's file formats. The page needs no network: CSS
and JS are inlined from `scoring/report_assets/`, charts are matplotlib SVGs embedded as data URIs, and all
per-sample data is embedded ONCE as JSON that plain JS renders page by page (1,211 samples x 8 models stays
responsive because only one page of rows is ever in the DOM).

Panorama thumbnails are small JPEGs written next to the page in `thumbs/` (not embedded): QuIC-360 test has 393
distinct panoramas; a 256x128 photo thumbnail is about 7 kB, so as base64 data URIs they would add about 3.6 MB
(more than the 2.2 MB of data itself) that the browser must parse before showing anything, while files next to
the page load lazily, only for the rows on screen, and are reused on rebuilds.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract import (
    ABLATION_MANIFEST,
    HEADLINE_METRICS,
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
    Summary,
    file_sha256,
    load_dataset,
    read_json,
    read_jsonl,
    results_file,
    write_text_atomic,
)
from contract.dataset import resolve_image

COMPARISON_MD = "comparison.md"
COMPARISON_TEX = "comparison.tex"
THUMBS_DIR = "thumbs"
THUMB_SIZE = (256, 128)  # 2:1 like the equirectangular panoramas
# `python -m scoring human-baseline` writes leave-one-out human agreement as if it were a model, by default named
# "human-baseline" (its --name can change that; its model_id always starts with "human (").
HUMAN_BASELINE_NAME = "human-baseline"
HUMAN_BASELINE_ID_PREFIX = "human ("
METRIC_LABELS = {"bleu4": "BLEU-4", "meteor": "METEOR", "rougeL": "ROUGE-L", "cider": "CIDEr", "spice": "SPICE"}
SCALE = 100.0  # scores are shown x100, the captioning papers' convention (files keep the 0-1 scale)
MAX_FAILED_SAMPLES_LISTED = 50  # per model in the page; the predictions file has them all

_ASSETS = Path(__file__).with_name("report_assets")


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
    image_note: str = ""

    @property
    def scored(self) -> list[ModelView]:
        return [m for m in self.models if m.status == "scored"]

    def unavailable(self) -> dict[str, str]:
        """metric -> why it has no value, merged over models (the first reason given wins)."""
        reasons: dict[str, str] = {}
        for model in self.scored:
            for metric, reason in (model.metrics.unavailable if model.metrics else {}).items():
                reasons.setdefault(metric, reason)
        return reasons


def _model_name_from(path: Path, suffix: str) -> str:
    return path.name[: -len(suffix)]


def _suffix(pattern: str) -> str:
    return pattern.replace("{model}", "")


def load_inputs(results_dir: Path, *, data_file: Path | None = None, image_root: Path | None = None) -> ReportInputs:
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ReportInputError(f"{results_dir}: results folder not found")

    summary = read_json(results_dir / SUMMARY_JSON, Summary) if (results_dir / SUMMARY_JSON).is_file() else None
    ablation_path = results_dir / ABLATION_MANIFEST
    ablation = read_json(ablation_path, AblationManifest) if ablation_path.is_file() else None

    # Model order: the summary's, then the orchestrator's, then whatever files exist (sorted).
    names: list[str] = []
    if summary:
        names += [entry.model_name for entry in summary.models]
    if ablation:
        names += [record.model_name for record in ablation.models]
    for pattern in (METRICS_JSON, SAMPLE_SCORES_JSONL, PREDICTIONS_JSONL, RUN_MANIFEST):
        suffix = _suffix(pattern)
        names += sorted(_model_name_from(p, suffix) for p in results_dir.glob("*" + suffix))
    loaded = [_load_model(results_dir, name, summary, ablation) for name in dict.fromkeys(names)]
    humans = [m for m in loaded if m.name == HUMAN_BASELINE_NAME or m.model_id.startswith(HUMAN_BASELINE_ID_PREFIX)]
    human = next((m.metrics for m in humans if m.metrics is not None), None)
    models = [m for m in loaded if m.name not in {h.name for h in humans}]
    if not models:
        raise ReportInputError(
            f"{results_dir}: nothing to report: no model's {METRICS_JSON.format(model='*')}, "
            f"{PREDICTIONS_JSONL.format(model='*')} or {SUMMARY_JSON} found"
        )
    samples = _load_samples(models, ablation, data_file, image_root)
    inputs = ReportInputs(results_dir, models, samples, summary=summary, ablation=ablation, human=human)
    return inputs


def _load_model(results_dir: Path, name: str, summary: Summary | None, ablation: AblationManifest | None) -> ModelView:
    view = ModelView(name=name)
    path = results_file(results_dir, METRICS_JSON, name)
    if path.is_file():
        view.metrics = read_json(path, MetricsFile)
        view.model_id = view.metrics.model_id
    path = results_file(results_dir, RUN_MANIFEST, name)
    if path.is_file():
        view.run = read_json(path, RunManifest)
        view.model_id = view.model_id or view.run.model_id
    path = results_file(results_dir, SAMPLE_SCORES_JSONL, name)
    if path.is_file():
        view.scores = {record.sample_id: record for record in read_jsonl(path, SampleScores)}
    path = results_file(results_dir, PREDICTIONS_JSONL, name)
    if path.is_file():
        # A resumed run may append a sample again: the last record wins, as in scoring.
        view.predictions = {record.sample_id: record for record in read_jsonl(path, PredictionRecord)}

    entry = next((e for e in summary.models if e.model_name == name), None) if summary else None
    view.record = next((r for r in ablation.models if r.model_name == name), None) if ablation else None
    view.model_id = view.model_id or (entry.model_id if entry else "") or (view.record.model_id if view.record else "")
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
        dataset = load_dataset(data_file, image_root=image_root)
        for sample in dataset.samples:
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
# Numbers and formatting.


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value * SCALE:.{digits}f}"


def _half_width(ci: tuple[float, float] | None) -> float | None:
    return None if ci is None else (ci[1] - ci[0]) / 2


def best_values(models: list[ModelView], digits: int) -> dict[str, float]:
    """metric -> the best value rounded as displayed, so ties at the shown precision are all bold. Nothing is
    bold with fewer than two models to compare."""
    best: dict[str, float] = {}
    if len(models) < 2:
        return best
    for metric in HEADLINE_METRICS:
        values = [round(v * SCALE, digits) for m in models if (v := m.metric(metric)) is not None]
        if values:
            best[metric] = max(values)
    return best


def _is_best(model: ModelView, metric: str, best: dict[str, float], digits: int) -> bool:
    value = model.metric(metric)
    return value is not None and metric in best and round(value * SCALE, digits) == best[metric]


# ---------------------------------------------------------------------------------------------------------
# Paper tables.


def _latex_escape(text: str) -> str:
    replacements = {
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
    return "".join(replacements.get(char, char) for char in text)


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|").replace("*", r"\*").replace("_", r"\_")


def comparison_markdown(inputs: ReportInputs, digits: int = 1) -> str:
    scored = inputs.scored
    best = best_values(scored, digits)
    header = "| Model | " + " | ".join(METRIC_LABELS[m] for m in HEADLINE_METRICS) + " |"
    lines = [
        f"Scores x100 with 95% bootstrap CI half-widths (±); best in bold; n = {_num_samples_text(inputs)}.",
        "",
        header,
        "|:--|" + "--:|" * len(HEADLINE_METRICS),
    ]
    for model in scored:
        cells = []
        for metric in HEADLINE_METRICS:
            value = _fmt(model.metric(metric), digits)
            if _is_best(model, metric, best, digits):
                value = f"**{value}**"
            half = _half_width(model.ci(metric))
            cells.append(value if half is None or model.metric(metric) is None else f"{value} ± {_fmt(half, digits)}")
        lines.append(f"| {_md_escape(model.name)} | " + " | ".join(cells) + " |")
    if inputs.human:
        cells = [_fmt(inputs.human.metrics.get(m), digits) for m in HEADLINE_METRICS]
        lines.append("| *Human (leave-one-out)* | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {METRIC_LABELS.get(m, m)} n/a: {_one_line(reason)}" for m, reason in inputs.unavailable().items()]
    lines += [f"- Not shown: {_not_shown(m)}" for m in _not_scored(inputs)]
    if inputs.human:
        lines.append("- Human: each sample's first reference scored against the others (one reference fewer).")
    return "\n".join(lines).rstrip() + "\n"


def comparison_latex(inputs: ReportInputs, digits: int = 1) -> str:
    scored = inputs.scored
    best = best_values(scored, digits)
    lines = [
        "% Generated by `python -m scoring report`. Needs \\usepackage{booktabs}.",
        "\\begin{table}[t]",
        "\\centering",
        "\\begin{tabular}{l" + "r" * len(HEADLINE_METRICS) + "}",
        "\\toprule",
        "Model & " + " & ".join(METRIC_LABELS[m] for m in HEADLINE_METRICS) + " \\\\",
        "\\midrule",
    ]
    for model in scored:
        cells = []
        for metric in HEADLINE_METRICS:
            value = _fmt(model.metric(metric), digits)
            if _is_best(model, metric, best, digits):
                value = f"\\textbf{{{value}}}"
            half = _half_width(model.ci(metric))
            if half is not None and model.metric(metric) is not None:
                value += f" {{\\scriptsize $\\pm$ {_fmt(half, digits)}}}"
            cells.append(value)
        lines.append(f"{_latex_escape(model.name)} & " + " & ".join(cells) + " \\\\")
    if inputs.human:
        lines.append("\\midrule")
        cells = [_fmt(inputs.human.metrics.get(m), digits) for m in HEADLINE_METRICS]
        lines.append("\\textit{Human (leave-one-out)} & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    notes = [f"{METRIC_LABELS.get(m, m)} n/a: {_one_line(reason)}" for m, reason in inputs.unavailable().items()]
    caption = (
        f"Captioning scores ($\\times$100, n = {_num_samples_text(inputs)}) with 95\\% bootstrap confidence "
        "interval half-widths; best in bold."
    )
    if notes:
        caption += " " + " ".join(_latex_escape(n) + "." for n in notes)
    lines += [f"\\caption{{{caption}}}", "\\label{tab:vlm-ablation}", "\\end{table}"]
    lines += [f"% not shown: {_not_shown(m)}" for m in _not_scored(inputs)]  # one line each: stays a comment
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    """Newlines would end a LaTeX comment or a Markdown list item, and a blank line breaks a LaTeX caption."""
    return " ".join(text.split())


def _not_shown(model: ModelView) -> str:
    return f"{_one_line(model.name)} ({model.status}: {_one_line(model.message or 'no reason recorded')})"


def _not_scored(inputs: ReportInputs) -> list[ModelView]:
    return [m for m in inputs.models if m.status != "scored"]


def _num_samples_text(inputs: ReportInputs) -> str:
    counts = sorted({m.metrics.num_samples for m in inputs.scored if m.metrics})
    return "/".join(str(c) for c in counts) or str(len(inputs.samples))


# ---------------------------------------------------------------------------------------------------------
# Charts (matplotlib, SVG data URIs).


def metric_charts(inputs: ReportInputs) -> dict[str, str]:
    """metric -> data URI of a horizontal bar chart with 95% CI error bars (only metrics with values)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts: dict[str, str] = {}
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "vlm-ablation", "font.size": 9}):
        for metric in HEADLINE_METRICS:
            rows = [(m.name, v, m.ci(metric)) for m in inputs.scored if (v := m.metric(metric)) is not None]
            if not rows:
                continue
            rows.sort(key=lambda row: row[1])
            values = [v * SCALE for _, v, _ in rows]
            low = [max(0.0, (v - ci[0]) * SCALE) if ci else 0.0 for _, v, ci in rows]
            high = [max(0.0, (ci[1] - v) * SCALE) if ci else 0.0 for _, v, ci in rows]
            width, height = 4.6, 0.32 * len(rows) + 0.9
            figure, axes = plt.subplots(figsize=(width, height))
            # Fixed margins sized from the longest name instead of tight_layout, which draws every figure twice.
            label_inches = 0.065 * max(len(name) for name, _, _ in rows) + 0.15
            figure.subplots_adjust(
                left=min(0.55, label_inches / width), right=0.97, top=1 - 0.1 / height, bottom=0.55 / height
            )
            positions = range(len(rows))
            axes.barh(positions, values, xerr=[low, high], color="#4c78a8", ecolor="#222", capsize=3, height=0.6)
            axes.set_yticks(list(positions), [name for name, _, _ in rows])
            human = inputs.human.metrics.get(metric) if inputs.human else None
            if human is not None:  # the figure caption in the page names the line
                axes.axvline(human * SCALE, color="#e45756", linestyle="--", linewidth=1)
            reach = max([v + h for v, h in zip(values, high, strict=True)] + [human * SCALE if human else 0.0])
            axes.set_xlim(0, reach * 1.05 if reach > 0 else 1)  # bars start at 0; an all-zero chart still has a scale
            axes.set_xlabel(f"{METRIC_LABELS[metric]} (x100), error bars: 95% CI")
            axes.spines[["top", "right"]].set_visible(False)
            buffer = io.StringIO()
            figure.savefig(buffer, format="svg", metadata={"Date": None})
            plt.close(figure)
            charts[metric] = "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue().encode()).decode()
    return charts


# ---------------------------------------------------------------------------------------------------------
# The page.


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _leaderboard(inputs: ReportInputs) -> str:
    best = best_values(inputs.scored, 2)
    unavailable = inputs.unavailable()
    head = "".join(f'<th data-sort="num" title="click to sort">{_e(METRIC_LABELS[m])}</th>' for m in HEADLINE_METRICS)
    rows = []
    for model in inputs.models:
        cells = [f'<td class="model" data-value="{_e(model.name)}">{_e(model.name)}</td>']
        for metric in HEADLINE_METRICS:
            value = model.metric(metric)
            if model.status != "scored":
                cells.append('<td data-value="-1" class="na">—</td>')
                continue
            if value is None:
                reason = (model.metrics.unavailable.get(metric) if model.metrics else None) or unavailable.get(metric)
                cells.append(f'<td data-value="-1" class="na" title="{_e(reason)}">n/a</td>')
                continue
            ci = model.ci(metric)
            bold = " best" if _is_best(model, metric, best, 2) else ""
            ci_text = f'<span class="ci">[{_fmt(ci[0])}, {_fmt(ci[1])}]</span>' if ci else ""
            cells.append(f'<td data-value="{value:.6f}" class="num{bold}">{_fmt(value)} {ci_text}</td>')
        counts = model.metrics.counts if model.metrics else None
        num = model.metrics.num_samples if model.metrics else len(model.predictions)
        cells.append(f'<td data-value="{num}" class="num">{num}</td>')
        if counts:
            cells.append(f'<td data-value="{counts.failed}" class="num">{counts.failed} / {counts.empty}</td>')
        else:
            cells.append('<td data-value="-1" class="na">—</td>')
        message = model.message if model.message and model.status != "scored" else ""
        status = _e(model.status) + (f": {_e(_clip(message, 160))}" if message else "")
        cells.append(
            f'<td data-value="{_e(model.status)}" class="status-{_e(model.status)}" title="{_e(message)}">{status}</td>'
        )
        rows.append(f'<tr data-model="{_e(model.name)}">' + "".join(cells) + "</tr>")
    foot = ""
    if inputs.human:
        human_cells = "".join(f'<td class="num">{_fmt(inputs.human.metrics.get(m))}</td>' for m in HEADLINE_METRICS)
        foot = (
            '<tfoot><tr class="human"><td>human (leave-one-out)</td>'
            f"{human_cells}<td class='num'>{inputs.human.num_samples}</td><td></td><td>reference agreement</td></tr>"
            "</tfoot>"
        )
    notes = "".join(f"<li><b>{_e(METRIC_LABELS.get(m, m))} n/a</b>: {_e(r)}</li>" for m, r in unavailable.items())
    if inputs.human:
        notes += (
            "<li>The human row scores each sample's first reference against the others (leave-one-out), so it "
            "has one reference fewer than the models had: a rough ceiling, not an exact comparison.</li>"
        )
    return (
        '<table id="leaderboard" class="sortable"><thead><tr><th data-sort="text">Model</th>'
        f'{head}<th data-sort="num">n</th><th data-sort="num" title="failed / empty predictions">failed / empty</th>'
        f'<th data-sort="text">status</th></tr></thead><tbody>{"".join(rows)}</tbody>{foot}</table>'
        f'<p class="hint">Scores x100; <span class="ci">[95% bootstrap CI]</span>; best in bold; click a header to '
        f"sort.</p>" + (f'<ul class="notes">{notes}</ul>' if notes else "")
    )


def _charts_html(inputs: ReportInputs, charts: dict[str, str]) -> str:
    figures = []
    for metric in HEADLINE_METRICS:
        label = _e(METRIC_LABELS[metric])
        if metric in charts:
            human = inputs.human.metrics.get(metric) if inputs.human else None
            caption = label + ("; red dashed line: human (leave-one-out)" if human is not None else "")
            figures.append(
                f'<figure><img src="{charts[metric]}" alt="{label} per model with 95% CI">'
                f"<figcaption>{caption}</figcaption></figure>"
            )
        else:
            reason = inputs.unavailable().get(metric, "no model has a value")
            figures.append(f'<figure class="na"><figcaption>{label}: n/a ({_e(reason)})</figcaption></figure>')
    return '<div class="charts">' + "".join(figures) + "</div>"


def _manifest_html(inputs: ReportInputs) -> str:
    parts = []
    ablation = inputs.ablation
    if ablation:
        facts = [
            ("engine", ablation.engine),
            ("data file", ablation.data_file),
            ("data sha256", ablation.data_sha256),
            ("started", ablation.started_at),
            ("finished", ablation.finished_at),
            ("scoring image", _join(ablation.scoring_image, ablation.scoring_image_digest)),
        ]
        facts += [(k, v) for k, v in sorted(ablation.versions.items())]
        parts.append(_facts_table(facts))
    else:
        parts.append(f"<p class='note'>No {ABLATION_MANIFEST} in this folder (not run through the orchestrator).</p>")
    head = (
        "<tr><th>model</th><th>model id</th><th>revision</th><th>image digest</th><th>dtype / device</th>"
        '<th title="used / requested">batch</th><th>decoding</th><th>data sha256</th><th>load s</th><th>generate s</th>'
        "<th>samples/s</th><th>status</th></tr>"
    )
    rows = []
    for model in inputs.models:
        run, record = model.run, model.record
        timings = run.timings if run else {}
        revision = (run.resolved_revision or run.revision) if run else (record.resolved_revision if record else None)
        digest = record.image_digest if record else None
        rows.append(
            "<tr>"
            f"<td>{_e(model.name)}</td><td>{_e(model.model_id)}{_local_checkpoint(run)}</td>"
            f"<td class='mono'>{_e(_short(revision))}</td>"
            f"<td class='mono' title='{_e(digest)}'>{_e(_short(digest, 19))}</td>"
            f"<td>{_e(_join(run.dtype, run.device_name or run.device) if run else None)}</td>"
            f"<td class='num'>{_e(_batch(run) if run else None)}</td>"
            f"<td class='mono'>{_e(_decoding(run.decoding) if run else None)}</td>"
            f"<td class='mono' title='{_e(run.data_sha256 if run else None)}'>"
            f"{_e(_short(run.data_sha256 if run else None))}</td>"
            f"<td class='num'>{_seconds(timings.get('load_s'))}</td>"
            f"<td class='num'>{_seconds(timings.get('generate_s'))}</td>"
            f"<td class='num'>{_seconds(timings.get('samples_per_s'))}</td>"
            f"<td class='status-{_e(model.status)}'>{_e(model.status)}</td></tr>"
        )
    parts.append(f"<table class='manifest'>{head}{''.join(rows)}</table>")
    prompts: dict[str, list[str]] = {}
    for model in inputs.models:
        if model.run:
            prompts.setdefault(model.run.prompt_template, []).append(model.name)
    for template, names in prompts.items():
        who = "all models" if len(names) == len(inputs.models) else ", ".join(names)
        parts.append(f"<p>Prompt template ({_e(who)}):</p><pre>{_e(template)}</pre>")
    return "".join(parts)


def _failures_html(inputs: ReportInputs) -> str:
    parts = []
    failed_models = [m for m in inputs.models if m.status != "scored"]
    if failed_models:
        items = "".join(
            f"<li><b>{_e(m.name)}</b> ({_e(m.status)}): {_e(m.message or 'no reason recorded')}</li>"
            for m in failed_models
        )
        parts.append(f"<h3>Models</h3><ul class='failed-models'>{items}</ul>")
    else:
        parts.append("<p>No model failed.</p>")
    sample_parts = []
    for model in inputs.models:
        failures = _failed_samples(model)
        if not failures:
            continue
        kinds = Counter(error for _, _, error in failures)
        kinds_text = "; ".join(f"{count} x {_e(_clip(kind, 160))}" for kind, count in kinds.most_common(5))
        rows = "".join(
            f"<tr><td class='mono'>{_e(sid)}</td><td>{_e(query)}</td><td>{_e(_clip(error, 400))}</td></tr>"
            for sid, query, error in failures[:MAX_FAILED_SAMPLES_LISTED]
        )
        more = len(failures) - MAX_FAILED_SAMPLES_LISTED
        more_text = f"<p>and {more} more in {_e(PREDICTIONS_JSONL.format(model=model.name))}</p>" if more > 0 else ""
        sample_parts.append(
            f"<details><summary><b>{_e(model.name)}</b>: {len(failures)} failed sample(s): {kinds_text}</summary>"
            f"<table><tr><th>sample</th><th>query</th><th>reason</th></tr>{rows}</table>{more_text}</details>"
        )
    parts.append("<h3>Samples</h3>" + ("".join(sample_parts) or "<p>No sample failed.</p>"))
    return "".join(parts)


def _failed_samples(model: ModelView) -> list[tuple[str, str, str]]:
    failures: dict[str, tuple[str, str, str]] = {}
    for record in model.predictions.values():
        if record.error:
            failures[record.sample_id] = (record.sample_id, record.query, record.error)
    for score in model.scores.values():
        if score.error and score.sample_id not in failures:
            failures[score.sample_id] = (score.sample_id, score.query, score.error)
    return list(failures.values())


def _join(*values: object, separator: str = " ") -> str | None:
    present = [str(v) for v in values if v not in (None, "")]
    return separator.join(present) if present else None


def _short(value: str | None, length: int = 12) -> str | None:
    return value if value is None or len(value) <= length else value[:length] + "…"


def _clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _local_checkpoint(run: RunManifest | None) -> str:
    """Weights loaded from a local folder instead of the Hub id (e.g. the demo's tiny random checkpoints)."""
    if run is None or not run.model_path:
        return ""
    return f"<div class='note' title='{_e(run.model_path)}'>local weights: {_e(_clip(run.model_path, 60))}</div>"


def _batch(run: RunManifest) -> str:
    return f"{run.batch_size_used} / {run.batch_size_requested}"


def _decoding(decoding: dict[str, Any]) -> str:
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in sorted(decoding.items()))


def _facts_table(facts: list[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td class='mono'>{_e(v)}</td></tr>" for k, v in facts if v is not None)
    return f"<table class='facts'>{rows}</table>"


def page_data(inputs: ReportInputs) -> dict[str, Any]:
    """The JSON the page's JS renders from: embedded once, arrays aligned with `models` and `metrics`."""
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
                scores.append([_round(score.scores.get(metric)) for metric in HEADLINE_METRICS])
                errors.append(score.error or (record.error if record else None))
            elif record is not None:
                predictions.append(record.prediction)
                scores.append(None)
                errors.append(record.error)
            else:
                predictions.append(None)
                scores.append(None)
                errors.append("no prediction")
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
        "metrics": list(HEADLINE_METRICS),
        "metricLabels": METRIC_LABELS,
        "scale": SCALE,
        "models": [m.name for m in shown],
        "scoredModels": [m.name for m in inputs.scored],
        "queries": queries,
        "samples": samples,
        "perQuery": _finite({m.name: m.metrics.per_query for m in inputs.scored if m.metrics}),
        "corpus": _finite({m.name: {k: m.metric(k) for k in HEADLINE_METRICS} for m in inputs.scored}),
        "significance": _finite(inputs.summary.significance if inputs.summary else {}),
        "unavailable": inputs.unavailable(),
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


def _json_for_script(payload: object) -> str:
    # Inside a <script> element "</script" ends it and "<!--" changes how it is parsed: escape every <, > and &
    # as JSON unicode escapes, which JSON.parse turns back into the same characters.
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(inputs: ReportInputs, charts: dict[str, str]) -> str:
    template = (_ASSETS / "report.html").read_text(encoding="utf-8")
    title = f"VLM ablation report: {len(inputs.models)} model(s), {len(inputs.samples)} sample(s)"
    subtitle_bits = [str(inputs.results_dir.resolve())]
    if inputs.ablation:
        subtitle_bits.append(f"data {inputs.ablation.data_file}")
    warnings = sorted({w for m in inputs.scored if m.metrics for w in m.metrics.warnings})
    warnings_html = "".join(f"<li>{_e(w)}</li>" for w in warnings)
    replacements = {
        "@TITLE@": _e(title),
        "@SUBTITLE@": _e(" · ".join(subtitle_bits)),
        "@CSS@": (_ASSETS / "report.css").read_text(encoding="utf-8"),
        "@JS@": (_ASSETS / "report.js").read_text(encoding="utf-8"),
        "@WARNINGS@": f"<ul class='warnings'>{warnings_html}</ul>" if warnings else "",
        "@LEADERBOARD@": _leaderboard(inputs),
        "@CHARTS@": _charts_html(inputs, charts),
        "@MANIFEST@": _manifest_html(inputs),
        "@FAILURES@": _failures_html(inputs),
        "@IMAGE_NOTE@": _e(inputs.image_note),
        "@DATA@": _json_for_script(page_data(inputs)),
    }
    # One pass (re.sub) so a replacement's text, which holds user data, is never itself searched for markers.
    return re.sub(r"@[A-Z_]+@", lambda match: replacements[match.group(0)], template)


def build_report(results_dir: Path, *, data_file: Path | None = None, image_root: Path | None = None) -> Path:
    """Write report.html, comparison.md and comparison.tex into `results_dir`; return the report's path."""
    results_dir = Path(results_dir)
    data_file = Path(data_file) if data_file is not None else None
    image_root = Path(image_root) if image_root is not None else None
    inputs = load_inputs(results_dir, data_file=data_file, image_root=image_root)
    make_thumbnails(inputs)
    charts = metric_charts(inputs)
    write_text_atomic(results_dir / COMPARISON_MD, comparison_markdown(inputs))
    write_text_atomic(results_dir / COMPARISON_TEX, comparison_latex(inputs))
    report = results_dir / REPORT_HTML
    write_text_atomic(report, render_html(inputs, charts))
    return report
