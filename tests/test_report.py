"""The ablation report: files written, numbers and reasons shown, missing pieces handled, data embedded safely.

Results folders come from `bench.bench_report.write_synthetic_results` (the contract's formats, synthetic scores)
over generated panoramas, or, in `demo_results_folder`, from the real pipeline (tiny checkpoints -> runner ->
scoring) when those command lines are available.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.bench_report import SPICE_UNAVAILABLE_REASON, write_synthetic_results
from contract import (
    HEADLINE_METRICS,
    SAMPLE_SCORES_JSONL,
    MetricsFile,
    PredictionRecord,
    SampleScores,
    load_dataset,
    read_json,
    read_jsonl,
    results_file,
    write_jsonl_atomic,
)
from scoring.report import (
    COMPARISON_MD,
    COMPARISON_TEX,
    THUMB_SIZE,
    ReportInputError,
    build_report,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS = ["blip2-opt-2.7b", "qwen2.5-vl-3b", "llava-1.5-7b", "gemma-3-4b"]
FAILED = "gemma-3-4b"


@dataclass
class ReportFolder:
    results: Path
    data_file: Path
    models: list[str]  # every model, in report order
    scored_models: list[str]
    sample_ids: list[str] = field(default_factory=list)  # data-file order
    sample_queries: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)  # distinct, first-seen order

    def scores(self, model: str) -> dict[str, SampleScores]:
        path = results_file(self.results, SAMPLE_SCORES_JSONL, model)
        return {s.sample_id: s for s in read_jsonl(path, SampleScores)}

    def metrics(self, model: str) -> MetricsFile:
        return read_json(self.results / f"{model}_metrics.json", MetricsFile)

    def most_disagreed(self, metric: str) -> str:
        """The sample whose per-sample scores spread most across models, computed as the page does (values
        rounded to 5 decimals as embedded, population standard deviation, first in file order on ties)."""
        all_scores = [self.scores(m) for m in self.scored_models]
        best_id, best_spread = "", -1.0
        for sid in self.sample_ids:
            values = [round(v, 5) for s in all_scores if sid in s and (v := s[sid].scores.get(metric)) is not None]
            if len(values) < 2:
                continue
            mean = sum(values) / len(values)
            spread = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
            if spread > best_spread:
                best_id, best_spread = sid, spread
        return best_id

    def plant_prediction(self, model: str, index: int, prediction: str) -> str:
        """Replace one sample's cleaned prediction in the scores file; returns the sample id."""
        path = results_file(self.results, SAMPLE_SCORES_JSONL, model)
        records = list(read_jsonl(path, SampleScores))
        records[index] = records[index].model_copy(update={"prediction": prediction})
        write_jsonl_atomic(path, records)
        return records[index].sample_id


def _folder(results: Path, data_file: Path, models: list[str], scored: list[str]) -> ReportFolder:
    dataset = load_dataset(data_file)
    return ReportFolder(
        results=results,
        data_file=data_file,
        models=models,
        scored_models=scored,
        sample_ids=[s.sample_id for s in dataset.samples],
        sample_queries=[s.query for s in dataset.samples],
        queries=list(dict.fromkeys(s.query for s in dataset.samples)),
    )


def synthetic_folder(tmp_path: Path, request: pytest.FixtureRequest, **options: object) -> ReportFolder:
    """4 generated panoramas x 3 queries; 3 scored models and 1 failed; every 5th sample failed; human row."""
    make_panorama_data = request.getfixturevalue("make_panorama_data")
    data = make_panorama_data(tmp_path / "data", num_images=4, queries=("location", "people", "weather"))
    results = tmp_path / "results"
    settings: dict[str, object] = {"failed_model": FAILED, "failed_sample_every": 5} | options
    dataset = load_dataset(data.data_file)
    write_synthetic_results(results, dataset.samples, MODELS, data_file=data.data_file, **settings)  # type: ignore[arg-type]
    failed = settings.get("failed_model")
    return _folder(results, data.data_file, MODELS, [m for m in MODELS if m != failed])


DEMO_MODELS = ("blip2-opt-2.7b", "qwen2.5-vl-3b")


def demo_results_folder(tmp_path: Path, request: pytest.FixtureRequest) -> ReportFolder:
    """A results folder made by the real pipeline on data/sample with tiny random-weight checkpoints, as
    `make demo` makes it (two models, to keep the test near a minute): `python -m orchestrator tiny` and
    `python -m orchestrator ablation --engine local` (runner, scoring, report), then
    `python -m scoring human-baseline` and `python -m scoring report` to add the human row. Without the
    orchestrator: `python -m runner` per model and `python -m scoring score --report`. Skips, naming what is
    missing, while those command lines do not exist."""
    data_file = REPO_ROOT / "data" / "sample" / "sample.csv"
    needed = [REPO_ROOT / "runner" / "__main__.py", REPO_ROOT / "scoring" / "__main__.py", data_file]
    missing = [str(p.relative_to(REPO_ROOT)) for p in needed if not p.is_file()]
    if missing:
        pytest.skip(f"demo pipeline not available yet (missing {', '.join(missing)})")
    env = _pipeline_env()
    results, tiny = tmp_path / "demo-results", tmp_path / "tiny"
    python = [sys.executable, "-m"]
    if (REPO_ROOT / "orchestrator" / "__main__.py").is_file():
        _run([*python, "orchestrator", "tiny", "--models", ",".join(DEMO_MODELS), "--out", str(tiny)], env)
        _run(
            [*python, "orchestrator", "ablation", "--engine", "local", "--gpus", "none",
             "--models", ",".join(DEMO_MODELS), "--data", str(data_file), "--output-dir", str(results),
             "--model-path-root", str(tiny), "--batch-size", "4", "--max-new-tokens", "12"],
            env,
        )  # fmt: skip
        assert (results / "run_manifest.json").is_file() and (results / "report.html").is_file()
        _run([*python, "scoring", "human-baseline", "--data", str(data_file), "--output-dir", str(results)], env)
        _run([*python, "scoring", "report", str(results)], env)
    else:
        for model in DEMO_MODELS:
            _run([*python, "runner.tiny", "--model", model, "--out", str(tiny / model)], env)
            _run(
                [*python, "runner", "--model", model, "--model-path", str(tiny / model), "--data", str(data_file),
                 "--output-dir", str(results), "--device", "cpu", "--batch-size", "4", "--max-new-tokens", "12",
                 "--no-progress"],
                env,
            )  # fmt: skip
        _run([*python, "scoring", "human-baseline", "--data", str(data_file), "--output-dir", str(results)], env)
        predictions = [str(results / f"{m}_predictions.jsonl") for m in DEMO_MODELS]
        _run(
            [*python, "scoring", "score", "--predictions", *predictions, "--output-dir", str(results), "--report"], env
        )
    return _folder(results, data_file, list(DEMO_MODELS), list(DEMO_MODELS))


def _pipeline_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    return env


def _run(command: list[str], env: dict[str, str]) -> None:
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600)
    if completed.returncode != 0:
        pytest.fail(f"{' '.join(command[:4])} failed ({completed.returncode}):\n{completed.stderr[-3000:]}")


def embedded_data(html_text: str) -> dict:
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html_text, re.S)
    assert match, "report data block not found"
    return json.loads(match.group(1))


# ---------------------------------------------------------------------------------------------------------


def test_build_report_writes_the_three_files_and_shows_every_model(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    report = build_report(folder.results, data_file=folder.data_file)
    assert report == folder.results / "report.html"
    assert (folder.results / COMPARISON_MD).is_file() and (folder.results / COMPARISON_TEX).is_file()
    page = report.read_text(encoding="utf-8")
    # Self-contained: no external script, stylesheet or http(s) resource.
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="https?:', page)
    data = embedded_data(page)
    assert data["models"] == folder.scored_models + [FAILED]  # the failed model has partial predictions
    assert data["scoredModels"] == folder.scored_models
    assert [s["id"] for s in data["samples"]] == folder.sample_ids
    # Every model's cleaned prediction and per-sample scores, aligned with the models list.
    for index, model in enumerate(folder.scored_models):
        scores = folder.scores(model)
        for sample in data["samples"]:
            expected = scores[sample["id"]]
            assert sample["pred"][index] == expected.prediction
            assert sample["score"][index] == [round(expected.scores[m], 5) for m in HEADLINE_METRICS]
    # Leaderboard cells: value x100 and its CI, for every metric of every scored model.
    for model in folder.scored_models:
        metrics = folder.metrics(model)
        for metric in HEADLINE_METRICS:
            low, high = metrics.ci[metric]
            assert f'{metrics.metrics[metric] * 100:.2f} <span class="ci">[{low * 100:.2f}, {high * 100:.2f}]' in page
    # Significance is embedded exactly as the summary has it.
    summary = json.loads((folder.results / "all_models_summary.json").read_text())
    assert data["significance"] == summary["significance"]
    # One chart per metric, as SVG data URIs.
    assert len(re.findall(r'<img src="data:image/svg\+xml;base64,', page)) == len(HEADLINE_METRICS)


def test_failed_model_and_failed_samples_are_listed_with_reasons(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    assert "container exited with code 137 (killed: out of memory) after 25% of samples" in page
    assert '<tr data-model="gemma-3-4b">' in page and "status-failed" in page
    for model in folder.scored_models:
        failures = [s for s in folder.scores(model).values() if s.error]
        assert failures, "fixture should have failed samples"
        assert f"<b>{model}</b>: {len(failures)} failed sample(s)" in page
        for failure in failures:
            assert f"<td class='mono'>{failure.sample_id}</td>" in page
    md = (folder.results / COMPARISON_MD).read_text()
    assert f"Not shown: {FAILED} (failed: container exited with code 137" in md
    assert f"| {FAILED} |" not in md


def test_comparison_tables_bold_the_best_and_show_ci_half_widths(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    build_report(folder.results, data_file=folder.data_file)
    md = (folder.results / COMPARISON_MD).read_text()
    tex = (folder.results / COMPARISON_TEX).read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "booktabs" in tex
    metrics = {m: folder.metrics(m) for m in folder.scored_models}
    for metric in HEADLINE_METRICS:
        best = max(folder.scored_models, key=lambda m: metrics[m].metrics[metric])
        for model in folder.scored_models:
            value = metrics[model].metrics[metric]
            low, high = metrics[model].ci[metric]
            shown, half = f"{value * 100:.1f}", f"{(high - low) / 2 * 100:.1f}"
            is_best = f"{value * 100:.1f}" == f"{metrics[best].metrics[metric] * 100:.1f}"
            md_cell = f"**{shown}** ± {half}" if is_best else f"{shown} ± {half}"
            tex_cell = (f"\\textbf{{{shown}}}" if is_best else shown) + f" {{\\scriptsize $\\pm$ {half}}}"
            md_row = next(line for line in md.splitlines() if line.startswith(f"| {_md(model)} |"))
            tex_row = next(line for line in tex.splitlines() if line.startswith(model.replace("_", "\\_") + " &"))
            column = HEADLINE_METRICS.index(metric)
            assert md_row.split(" | ")[column + 1].strip(" |") == md_cell
            assert tex_row.removesuffix(" \\\\").split(" & ")[column + 1] == tex_cell
    assert "*Human (leave-one-out)*" in md and "\\textit{Human (leave-one-out)}" in tex


def _md(name: str) -> str:
    return name.replace("_", "\\_")


def test_spice_unavailable_is_na_with_its_reason_everywhere(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request, spice_available=False)
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    reason_html = SPICE_UNAVAILABLE_REASON.replace("`", "&#x60;")
    assert f'class="na" title="{SPICE_UNAVAILABLE_REASON}">n/a</td>' in page or reason_html in page
    assert f"<b>SPICE n/a</b>: {SPICE_UNAVAILABLE_REASON}" in page
    assert f"SPICE: n/a ({SPICE_UNAVAILABLE_REASON})" in page  # in place of the chart
    assert len(re.findall(r'<img src="data:image/svg\+xml;base64,', page)) == len(HEADLINE_METRICS) - 1
    md = (folder.results / COMPARISON_MD).read_text()
    assert f"- SPICE n/a: {SPICE_UNAVAILABLE_REASON}" in md
    md_row = next(line for line in md.splitlines() if line.startswith(f"| {folder.scored_models[0]} |"))
    assert md_row.rstrip(" |").endswith("n/a")
    data = embedded_data(page)
    assert data["unavailable"] == {"spice": SPICE_UNAVAILABLE_REASON}
    assert all(s["score"][0][HEADLINE_METRICS.index("spice")] is None for s in data["samples"])


def test_thumbnails_made_once_small_and_linked(tmp_path: Path, request) -> None:
    from PIL import Image

    folder = synthetic_folder(tmp_path, request)
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    thumbs = sorted((folder.results / "thumbs").glob("*.jpg"))
    assert len(thumbs) == 4  # one per distinct panorama, shared by its 3 queries
    for thumb in thumbs:
        with Image.open(thumb) as image:
            assert image.format == "JPEG" and image.width <= THUMB_SIZE[0] and image.height <= THUMB_SIZE[1]
            assert max(image.size) == THUMB_SIZE[0] or image.height == THUMB_SIZE[1]
    data = embedded_data(page)
    assert {s["img"] for s in data["samples"]} == {f"thumbs/{t.name}" for t in thumbs}
    assert 'id="image-note"></p>' in page  # nothing to apologise for
    # A rebuild reuses them (same files, not rewritten).
    before = {t.name: t.stat().st_mtime_ns for t in thumbs}
    build_report(folder.results, data_file=folder.data_file)
    assert {t.name: t.stat().st_mtime_ns for t in (folder.results / "thumbs").glob("*.jpg")} == before


def test_images_not_on_disk_means_no_thumbnails_and_says_so(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    for image in (folder.data_file.parent / "images").iterdir():
        image.unlink()
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    assert not (folder.results / "thumbs").exists()
    assert "Thumbnails for 0 of 12 samples; 4 image(s) not found or unreadable on disk" in page
    assert all(s["img"] == "" for s in embedded_data(page)["samples"])


def test_without_data_file_images_resolve_through_the_run_manifest(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    page = build_report(folder.results).read_text(encoding="utf-8")  # data file found via run_manifest.json
    data = embedded_data(page)
    assert [s["id"] for s in data["samples"]] == folder.sample_ids
    assert all(s["img"].startswith("thumbs/") for s in data["samples"])
    refs = {s.sample_id: s.references for s in load_dataset(folder.data_file).samples}
    assert all(s["refs"] == refs[s["id"]] for s in data["samples"])


def test_minimal_folder_metrics_only(tmp_path: Path, request) -> None:
    """Only metrics files (as from an older run): a leaderboard, no samples, no crash."""
    folder = synthetic_folder(tmp_path, request, failed_model=None, human_baseline=False)
    for path in folder.results.iterdir():
        if not path.name.endswith("_metrics.json"):
            path.unlink()
    page = build_report(folder.results).read_text(encoding="utf-8")
    assert embedded_data(page)["samples"] == []
    for model in MODELS:
        assert f'<tr data-model="{model}">' in page
    assert "No run_manifest.json in this folder" in page


def test_hostile_text_is_embedded_as_data_not_markup(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    hostile = "</script><script>alert(1)</script> & <b>bold</b> \u2028 line"
    folder.plant_prediction(folder.scored_models[0], 0, hostile)
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    assert "<script>alert(1)" not in page
    assert embedded_data(page)["samples"][0]["pred"][0] == hostile


def test_bad_inputs_are_clear_errors(tmp_path: Path, request) -> None:
    with pytest.raises(ReportInputError, match="results folder not found"):
        build_report(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportInputError, match=r"empty: nothing to report"):
        build_report(empty)
    folder = synthetic_folder(tmp_path, request)
    broken = folder.results / f"{MODELS[0]}_metrics.json"
    broken.write_text('{"model_name": "x"}')
    with pytest.raises(ValueError, match=re.escape(str(broken)) + ": not a valid MetricsFile"):
        build_report(folder.results)
    assert not (folder.results / "report.html").exists()  # nothing half-written


def test_partial_predictions_of_failed_model_are_browsable(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    data = embedded_data(page)
    failed_index = data["models"].index(FAILED)
    written = {p.sample_id: p for p in read_jsonl(folder.results / f"{FAILED}_predictions.jsonl", PredictionRecord)}
    for sample in data["samples"]:
        if sample["id"] in written:
            assert sample["pred"][failed_index] == written[sample["id"]].prediction
            assert sample["score"][failed_index] is None
        else:
            assert sample["pred"][failed_index] is None and sample["err"][failed_index] == "no prediction"


def test_model_with_predictions_but_no_metrics_is_shown_unscored(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request, failed_model=None)
    model = folder.scored_models[-1]
    (folder.results / f"{model}_metrics.json").unlink()
    results_file(folder.results, SAMPLE_SCORES_JSONL, model).unlink()
    summary_path = folder.results / "all_models_summary.json"
    summary = json.loads(summary_path.read_text())
    summary["models"] = [m for m in summary["models"] if m["model_name"] != model]
    summary_path.write_text(json.dumps(summary))
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    assert f'<tr data-model="{model}">' in page
    assert "status-unscored" in page
    data = embedded_data(page)
    assert model in data["models"] and model not in data["scoredModels"]
    predictions = {
        p.sample_id: p.prediction for p in read_jsonl(folder.results / f"{model}_predictions.jsonl", PredictionRecord)
    }
    index = data["models"].index(model)
    assert {s["id"]: s["pred"][index] for s in data["samples"]} == predictions


def test_scoring_cli_report_subcommand_builds_the_page(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    if not (REPO_ROOT / "scoring" / "__main__.py").is_file():
        pytest.skip("python -m scoring does not exist yet")
    completed = subprocess.run(
        [sys.executable, "-m", "scoring", "report", str(folder.results)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=_pipeline_env(),
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert str(folder.results / "report.html") in completed.stdout
    page = (folder.results / "report.html").read_text(encoding="utf-8")
    assert [s["id"] for s in embedded_data(page)["samples"]] == folder.sample_ids


def test_nan_values_are_na_and_the_page_data_stays_valid_json(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    model = folder.scored_models[0]
    path = folder.results / f"{model}_metrics.json"
    metrics = folder.metrics(model)
    metrics.metrics["cider"] = float("nan")
    metrics.per_query[folder.queries[0]]["cider"] = float("nan")
    path.write_text(metrics.model_dump_json())  # pydantic writes NaN as null; force a literal NaN as Python would
    path.write_text(json.dumps(json.loads(path.read_text()) | {"metrics": metrics.metrics}))
    assert "NaN" in path.read_text()
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert match and "NaN" not in match.group(1)
    data = embedded_data(page)
    assert data["corpus"][model]["cider"] is None
    assert f'<tr data-model="{model}"><td class="model" data-value="{model}">{model}</td>' in page
    row = page.split(f'<tr data-model="{model}">', 1)[1].split("</tr>", 1)[0]
    assert row.count(">n/a</td>") == 1


def test_multiline_reasons_stay_inside_latex_comments_and_markdown_items(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request, spice_available=False)
    manifest_path = folder.results / "run_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for record in manifest["models"]:
        if record["model_name"] == FAILED:
            record["message"] = "Traceback:\n\n  RuntimeError: boom\n"
    manifest_path.write_text(json.dumps(manifest))
    build_report(folder.results, data_file=folder.data_file)
    tex = (folder.results / COMPARISON_TEX).read_text()
    after_table = tex.split("\\end{table}\n", 1)[1]
    assert after_table == f"% not shown: {FAILED} (failed: Traceback: RuntimeError: boom)\n"
    assert "\n\n" not in tex  # a blank line would end the caption's paragraph
    md = (folder.results / COMPARISON_MD).read_text()
    assert f"- Not shown: {FAILED} (failed: Traceback: RuntimeError: boom)\n" in md


def test_single_model_has_nothing_bold(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request, failed_model=None, human_baseline=False)
    for path in folder.results.iterdir():
        if path.is_file() and not path.name.startswith(MODELS[0]):
            path.unlink()
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    assert "**" not in (folder.results / COMPARISON_MD).read_text()
    assert "\\textbf" not in (folder.results / COMPARISON_TEX).read_text()
    assert 'class="num best"' not in page
    assert f"| {MODELS[0]} |" in (folder.results / COMPARISON_MD).read_text()
