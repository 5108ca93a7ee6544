"""The ablation report: files written, numbers and reasons shown, ranking, corrected significance, demo and subset
notes, missing pieces handled, only the requested models read, data embedded safely.

Results folders come from `bench.bench_report.write_synthetic_results` (the contract's formats, synthetic scores)
over generated panoramas, or, in `demo_results_folder`, from the real pipeline (tiny checkpoints -> runner ->
scoring) when those command lines are available.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import WITHOUT_SPICE

from bench.bench_report import SPICE_UNAVAILABLE_REASON, write_synthetic_results
from contract import (
    HEADLINE_METRICS,
    SAMPLE_SCORES_JSONL,
    SUMMARY_JSON,
    MetricsFile,
    PredictionRecord,
    SampleCounts,
    SampleScores,
    Summary,
    load_dataset,
    read_json,
    read_jsonl,
    results_file,
    write_json_atomic,
    write_jsonl_atomic,
)
from scoring.report import (
    COMPARISON_MD,
    COMPARISON_TEX,
    DEMO_SENTENCE,
    REPORT_METRICS,
    SECTIONS,
    THUMB_SIZE,
    ReportInputError,
    build_report,
    holm_adjusted,
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

    def ranked(self, metric: str = "cider") -> list[str]:
        """Scored models by the metrics files' value, highest first: the order the leaderboard must show."""
        return sorted(self.scored_models, key=lambda m: -(self.metrics(m).metrics[metric] or 0.0))

    def rows(self, metric: str = "cider") -> list[str]:
        """Every leaderboard row in order: the ranked models, then the failed/unscored ones."""
        return self.ranked(metric) + [m for m in self.models if m not in self.scored_models]

    def patch_metrics(self, model: str, **fields: Any) -> None:
        """Set top-level keys of `<model>_metrics.json` by hand (e.g. random_weights, subset, metrics)."""
        path = self.results / f"{model}_metrics.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | fields))

    def set_p_values(self, metric: str, p_values: dict[frozenset[str], float], default: float = 0.5) -> None:
        """Give every pair of the summary's `metric` p-value `default`, except those named."""
        path = self.results / SUMMARY_JSON
        summary = json.loads(path.read_text())
        pairs = summary["significance"][metric]
        for key in pairs:
            pairs[key] = p_values.get(frozenset(key.split("|")), default)
        path.write_text(json.dumps(summary))

    def p_values(self, metric: str) -> dict[frozenset[str], float]:
        """The summary's p-values of pairs of scored models."""
        pairs = json.loads((self.results / SUMMARY_JSON).read_text())["significance"][metric]
        return {frozenset(k.split("|")): p for k, p in pairs.items() if set(k.split("|")) <= set(self.scored_models)}

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
             "--model-path-root", str(tiny), "--batch-size", "4", "--max-new-tokens", "12", *WITHOUT_SPICE],
            env,
        )  # fmt: skip
        assert (results / "run_manifest.json").is_file() and (results / "report.html").is_file()
        _run([*python, "scoring", "human-baseline", "--data", str(data_file), "--output-dir", str(results),
              *WITHOUT_SPICE], env)  # fmt: skip
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
        _run([*python, "scoring", "human-baseline", "--data", str(data_file), "--output-dir", str(results),
              *WITHOUT_SPICE], env)  # fmt: skip
        predictions = [str(results / f"{m}_predictions.jsonl") for m in DEMO_MODELS]
        _run(
            [
                *python,
                "scoring",
                "score",
                "--predictions",
                *predictions,
                "--output-dir",
                str(results),
                "--report",
                *WITHOUT_SPICE,
            ],
            env,  # fmt: skip
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
# Helpers that compute what the page must show independently of scoring/report.py.


def holm_significant(p_values: dict[frozenset[str], float], alpha: float = 0.05) -> set[frozenset[str]]:
    """Holm's step-down procedure as its definition reads: the i-th smallest of m p-values must be below
    alpha / (m - i + 1), and the first that is not stops it."""
    ordered = sorted(p_values.items(), key=lambda item: item[1])
    significant = set()
    for index, (pair, p) in enumerate(ordered):
        if p >= alpha / (len(ordered) - index):
            break
        significant.add(pair)
    return significant


def x100(value: float, digits: int = 2, sign: bool = False) -> str:
    """As the page shows a score: x100, a real minus sign, and no "-0.00" (-0.0 + 0.0 is 0.0)."""
    return f"{round(value * 100, digits) + 0.0:{'+' if sign else ''}.{digits}f}".replace("-", "\u2212")


def visible_text(page: str) -> str:
    """The page without the embedded JSON block, tags and attributes: roughly what a person reads."""
    page = re.sub(r'<script type="application/json".*?</script>', "", page, flags=re.S)
    page = re.sub(r"<(script|style)\b.*?</\1>", "", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def leaderboard_rows(page: str) -> list[str]:
    body = page.split('<table id="leaderboard">', 1)[1].split("</tbody>", 1)[0]
    return re.findall(r'<tr data-model="([^"]+)"', body)


def leaderboard_row(page: str, model: str) -> str:
    body = page.split('<table id="leaderboard">', 1)[1].split("</tbody>", 1)[0]
    return body.split(f'<tr data-model="{model}"', 1)[1].split("</tr>", 1)[0]


def significance_cells(page: str, metric: str) -> dict[tuple[str, str], str]:
    """(row model, column model) -> the cell's class list, from the metric's matrix."""
    block = page.split(f'<div class="sig-block" data-metric="{metric}"', 1)[1].split("</table>", 1)[0]
    cells = {}
    for row_model, row in re.findall(r'<tr data-model="([^"]+)">(.*?)</tr>', block, re.S):
        for classes, column_model in re.findall(r'<td class="([^"]*)" data-model="([^"]+)"', row):
            cells[(row_model, column_model)] = classes
    return cells


def significance_fixture(folder: ReportFolder) -> None:
    """CIDEr: the best two models differ with p = 0.03, below the uncorrected 0.05 but not significant after Holm
    over 3 pairs (0.0004 passes 0.05/3, then 0.03 fails 0.05/2). BLEU-4: 0.001, 0.02 and 0.04 all pass Holm
    (0.05/3, 0.05/2, 0.05/1), though Bonferroni (0.05/3 for all) would keep only the first."""
    best, second, third = folder.ranked("cider")
    folder.set_p_values(
        "cider", {frozenset({best, second}): 0.03, frozenset({best, third}): 0.0004, frozenset({second, third}): 0.2}
    )
    folder.set_p_values(
        "bleu4", {frozenset({best, second}): 0.001, frozenset({best, third}): 0.02, frozenset({second, third}): 0.04}
    )


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
    assert data["scoredModels"] == folder.ranked("cider")
    assert [s["id"] for s in data["samples"]] == folder.sample_ids
    # Every model's cleaned prediction and per-sample scores, aligned with the models list.
    for index, model in enumerate(folder.scored_models):
        scores = folder.scores(model)
        for sample in data["samples"]:
            expected = scores[sample["id"]]
            assert sample["pred"][index] == expected.prediction
            assert sample["score"][index] == [round(expected.scores[m], 5) for m in HEADLINE_METRICS]
    # Leaderboard cells: value x100 and its CI, for every metric (COCO BLEU-4 included) of every scored model.
    for model in folder.scored_models:
        metrics = folder.metrics(model)
        row = leaderboard_row(page, model)
        for metric in REPORT_METRICS:
            low, high = metrics.ci[metric]
            cell = f'{x100(metrics.metrics[metric])} <span class="ci">[{x100(low)}, {x100(high)}]</span>'
            assert cell in row, (model, metric)
    header = page.split('<table id="leaderboard">', 1)[1].split("</thead>", 1)[0]
    labels = re.findall(r'data-metric="[^"]+">([^<]+)</th>', header)
    assert labels == ["sacreBLEU BLEU-4", "BLEU-4 (COCO)", "METEOR", "ROUGE-L", "CIDEr", "SPICE"]
    # One chart per metric, as SVG data URIs; the scale said once, near the leaderboard.
    assert len(re.findall(r'<img src="data:image/svg\+xml;base64,', page)) == len(REPORT_METRICS)
    assert visible_text(page).count("scores x100; files keep 0-1") == 1
    # Nav links and section headings are the same words, in the same order, pointing at those sections.
    nav = re.findall(r'<a href="#([a-z-]+)-section">([^<]+)</a>', page.split("<nav>", 1)[1].split("</nav>", 1)[0])
    headings = re.findall(r'<section id="([a-z-]+)-section">\s*<h2>([^<]+)</h2>', page)
    assert nav == headings == list(SECTIONS.items())
    # Not a demo: no banner, no demo sentence anywhere.
    assert DEMO_SENTENCE not in page and 'id="demo-banner"' not in page
    assert DEMO_SENTENCE not in (folder.results / COMPARISON_MD).read_text()


def test_leaderboard_ranks_by_cider_with_gap_and_paired_ci_from_the_summary(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    assert leaderboard_rows(page) == folder.rows("cider")
    summary = read_json(folder.results / SUMMARY_JSON, Summary)
    best, *others = folder.ranked("cider")
    best_cider = folder.metrics(best).metrics["cider"]
    assert '<td class="rank">1</td>' in leaderboard_row(page, best)
    assert '<span class="v">best</span>' in leaderboard_row(page, best)
    for position, model in enumerate(others, start=2):
        row = leaderboard_row(page, model)
        assert f'<td class="rank">{position}</td>' in row
        gap = folder.metrics(model).metrics["cider"] - best_cider
        # The CI of model - best: the summary keys the pair one way; the other way flips the interval.
        if f"{model}|{best}" in summary.differences["cider"]:
            low, high = summary.differences["cider"][f"{model}|{best}"].ci
        else:
            high, low = (-x for x in summary.differences["cider"][f"{best}|{model}"].ci)
        assert (
            f'<span class="v">{x100(gap, sign=True)}</span> <span class="ci">[{x100(low)}, {x100(high)}]</span>' in row
        )
        assert low < gap < high
    # The failed model ranks nowhere.
    assert '<td class="rank">—</td>' in leaderboard_row(page, FAILED)
    # Every metric's ranking is embedded for the selector.
    data = embedded_data(page)
    for metric in REPORT_METRICS:
        assert data["ranking"][metric]["order"] == folder.ranked(metric)
    md_models = [line.split(" | ")[0].strip("| ") for line in (folder.results / COMPARISON_MD).read_text().splitlines()
                 if line.startswith("| ") and not line.startswith(("| Model", "| *Human"))]  # fmt: skip
    assert md_models == folder.ranked("cider")


def test_significance_is_coloured_exactly_where_holm_says(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    significance_fixture(folder)
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    best, second, third = folder.ranked("cider")
    for metric in ("cider", "bleu4"):
        p_values = folder.p_values(metric)
        significant = holm_significant(p_values)
        cells = significance_cells(page, metric)
        assert len(cells) == 6  # 3 models, both orders
        for (a, b), classes in cells.items():
            pair = frozenset({a, b})
            value_a, value_b = (folder.metrics(m).metrics[metric] for m in (a, b))
            expected = ({"sig-better"} if value_a > value_b else {"sig-worse"}) if pair in significant else set()
            assert set(classes.split()) - {"cell"} == expected, (metric, a, b, p_values[pair])
    # The bug this replaces: p = 0.03 < 0.05 between the best two CIDEr models, yet not significant after Holm.
    assert folder.p_values("cider")[frozenset({best, second})] == 0.03
    assert significance_cells(page, "cider")[(best, second)] == "cell"
    assert significance_cells(page, "cider")[(best, third)] == "cell sig-better"
    # Holm, not Bonferroni: p = 0.04 passes as the largest of three.
    assert significance_cells(page, "bleu4")[(second, third)] == "cell sig-better"
    # The leaderboard's gap cells follow the same correction.
    assert '<td class="gap"' in leaderboard_row(page, second)
    assert '<td class="gap sig-worse"' in leaderboard_row(page, third)
    assert "Holm-Bonferroni" in visible_text(page) and "0.05/3" in visible_text(page)


def test_scores_are_shown_x100_without_negative_zero() -> None:
    from scoring.report import fmt

    assert fmt(0.123456) == "12.35" and fmt(1.5, 1) == "150.0" and fmt(None) == "n/a" and fmt(float("nan")) == "n/a"
    assert fmt(-0.0831, sign=True) == "\u22128.31" and fmt(0.0831, sign=True) == "+8.31"
    assert fmt(-0.00001) == "0.00" and fmt(-0.00001, sign=True) == "+0.00"  # [-1.07, -0.00] was shown


def test_holm_adjusted_p_values() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone: 0.02, 0.03, 0.06, 0.06
    assert holm_adjusted([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjusted([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert holm_adjusted([]) == []


def test_summary_stores_paired_differences_with_their_bootstrap_ci(tmp_path: Path) -> None:
    """build_summary resamples every model with the same indices; each pair's difference and the percentile 95%
    CI of the resampled differences are stored next to the p-value (checked here on ROUGE-L and CIDEr, which are
    plain means of the per-sample scores, against a computation that does not use scoring.outputs). Every sample has
    its own image here, so samples are resampled."""
    from scoring.outputs import build_summary
    from scoring.resample import bootstrap_weights

    rng = np.random.default_rng(7)
    n, resamples = 40, 1000
    ids = [f"{i:016x}" for i in range(n)]
    per_model = {}
    for name, shift in (("alpha", 0.0), ("beta", 0.05)):
        rouge, cider = rng.uniform(0.2, 0.6, n) + shift, rng.uniform(0.2, 1.2, n) + shift
        per_model[name] = {"rougeL": rouge, "cider": cider}
        rows = [
            SampleScores(
                sample_id=sid, image=f"img-{sid}.jpg", query="q", prediction="p", raw_prediction="p",
                scores={"rougeL": float(rouge[i]), "cider": float(cider[i]), "spice": None},
                stats={"sacrebleu": [10, 10, 6, 4, 2, 1, 10, 9, 8, 7], "coco_bleu": [10, 10, 10, 9, 8, 7, 6, 4, 2, 1],
                       "meteor": [10, 10, 3, 3, 4, 4, 2, 2] + [0] * 12 + [2, 6, 6],
                       "rougeL": [float(rouge[i]), 1.0], "cider": [float(cider[i]), 1.0]},
            )
            for i, sid in enumerate(reversed(ids))  # file order differs from sample_id order
        ]  # fmt: skip
        write_jsonl_atomic(tmp_path / f"{name}_sample_scores.jsonl", rows)
        metrics = {"rougeL": float(rouge.mean()), "cider": float(cider.mean())}
        write_json_atomic(
            tmp_path / f"{name}_metrics.json",
            MetricsFile(model_name=name, model_id=name, num_samples=n, metrics=metrics,
                        counts=SampleCounts(scored=n, empty=0, failed=0)),
        )  # fmt: skip
    summary = build_summary(tmp_path, resamples=resamples, seed=3)
    weights = bootstrap_weights(np.arange(n), resamples, 3)
    for metric in ("rougeL", "cider"):
        # build_summary orders samples by sample_id: the files hold `ids` reversed, so reverse the values back.
        a, b = (per_model[name][metric][::-1] for name in ("alpha", "beta"))
        resampled = (weights @ a - weights @ b) / n
        observed = a.mean() - b.mean()
        stored = summary.differences[metric]["alpha|beta"]
        assert stored.difference == pytest.approx(observed, abs=1e-12)
        assert stored.ci == pytest.approx(tuple(np.percentile(resampled, [2.5, 97.5])), abs=1e-12)
        # The same resampled differences give the stored p-value: the CI and the test come from one bootstrap.
        p = (1 + np.count_nonzero(np.abs(resampled - observed) >= abs(observed))) / (resamples + 1)
        assert summary.significance[metric]["alpha|beta"] == pytest.approx(p)
    assert "spice" not in summary.differences  # no value, no difference
    assert set(summary.differences) == set(summary.significance)
    # Additive: what the summary held before is still there, under the same keys.
    written = json.loads(summary.model_dump_json())
    assert {"models", "significance", "signature", "differences"} <= set(written)


def test_demo_banner_when_any_model_has_random_weights(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    folder.patch_metrics(folder.scored_models[1], random_weights=True)
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    body = page.split("<body>", 1)[1].lstrip()
    assert body.startswith('<div id="demo-banner" role="alert">')
    assert f"<strong>{DEMO_SENTENCE}</strong>" in body.split("</div>", 1)[0]
    assert DEMO_SENTENCE == "DEMO: random-weight models; these numbers mean nothing"
    assert '<span class="tag">random weights</span>' in leaderboard_row(page, folder.scored_models[1])
    md = (folder.results / COMPARISON_MD).read_text()
    tex = (folder.results / COMPARISON_TEX).read_text()
    assert md.splitlines()[0].startswith(f"**{DEMO_SENTENCE}**")
    assert tex.splitlines()[0].startswith(f"% {DEMO_SENTENCE}")
    assert f"\\textbf{{{DEMO_SENTENCE}}}" in tex.split("\\begin{tabular}", 1)[0]  # printed above the table too


def test_subset_runs_say_so_in_page_and_tables(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    for model in folder.scored_models:
        folder.patch_metrics(model, subset={"num_samples": 12, "data_samples": 1211, "limit": 12})
    text = "subset: first 12 of 1,211 samples (--limit 12)"
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    assert visible_text(page).count(text) == 1  # once for all models (the n cells repeat it only as a tooltip)
    assert f"- {text}" in (folder.results / COMPARISON_MD).read_text()
    assert text.replace("--limit", "--limit") in (folder.results / COMPARISON_TEX).read_text()
    # Only one model on a subset: it is named.
    folder.patch_metrics(folder.scored_models[0], subset=None)
    folder.patch_metrics(folder.scored_models[2], subset=None)
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    assert f"{text} ({folder.scored_models[1]})" in visible_text(page)


def test_failed_model_and_failed_samples_are_listed_with_reasons(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    message = "container exited with code 137 (killed: out of memory) after 25% of samples"
    row = leaderboard_row(page, FAILED)
    assert 'class="status-failed"' in row and f"failed: {message} (3 predictions written)" in row
    assert f"<li><b>{FAILED}</b> (failed): {message}</li>" in page
    for model in folder.scored_models:
        failures = [s for s in folder.scores(model).values() if s.error]
        assert failures, "fixture should have failed samples"
        assert f"<b>{model}</b>: {len(failures)} failed sample(s)" in page
        for failure in failures:
            assert f'<td class="mono">{failure.sample_id}</td>' in page
    md = (folder.results / COMPARISON_MD).read_text()
    assert f"Not shown: {FAILED} (failed: container exited with code 137" in md
    assert f"| {FAILED} |" not in md


def test_comparison_tables_bold_the_best_and_show_ci_half_widths(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    build_report(folder.results, data_file=folder.data_file)
    md = (folder.results / COMPARISON_MD).read_text()
    tex = (folder.results / COMPARISON_TEX).read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "booktabs" in tex
    assert "Scores x100 (files keep 0-1)" in md and "ranked by CIDEr" in md and "ranked by CIDEr" in tex
    assert "| Model | sacreBLEU BLEU-4 | BLEU-4 (COCO) | METEOR | ROUGE-L | CIDEr | SPICE |" in md
    metrics = {m: folder.metrics(m) for m in folder.scored_models}
    for metric in REPORT_METRICS:
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
            column = REPORT_METRICS.index(metric)
            assert md_row.split(" | ")[column + 1].strip(" |") == md_cell
            assert tex_row.removesuffix(" \\\\").split(" & ")[column + 1] == tex_cell
    assert "*Human (leave-one-out)*" in md and "\\textit{Human (leave-one-out)}" in tex


def _md(name: str) -> str:
    return name.replace("_", "\\_")


def test_a_warning_every_model_shares_is_said_once(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request, spice_available=False)
    shared = "METEOR 1.5 ran with -Xmx2G"
    for model in folder.scored_models:
        metrics = folder.metrics(model)
        folder.patch_metrics(model, warnings=[*metrics.warnings, shared])
    folder.patch_metrics(folder.scored_models[0], warnings=[*folder.metrics(folder.scored_models[0]).warnings,
                                                             "3 predictions are empty after cleanup"])  # fmt: skip
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    text = visible_text(page)
    # SPICE's reason (in `unavailable` and restated in each model's warnings) appears once, for every model.
    assert text.count(SPICE_UNAVAILABLE_REASON) == 1
    assert f"SPICE n/a for every model: {SPICE_UNAVAILABLE_REASON}" in text
    assert text.count(shared) == 1 and f"every model: {shared}" in text
    assert f"{folder.scored_models[0]}: 3 predictions are empty after cleanup" in text
    assert SPICE_UNAVAILABLE_REASON not in json.dumps(embedded_data(page))


def test_spice_unavailable_is_na_everywhere(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request, spice_available=False)
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    for model in folder.scored_models:
        assert re.search(
            r'<td class="na" data-metric="spice" title="SPICE: no value \(see the notes below\)">n/a</td>',
            leaderboard_row(page, model),
        )
    assert "SPICE: n/a (no model has a value; see the notes under the leaderboard)" in page  # in place of the chart
    assert len(re.findall(r'<img src="data:image/svg\+xml;base64,', page)) == len(REPORT_METRICS) - 1
    assert 'data-metric="spice"' not in page.split('id="significance-section"', 1)[1].split("</section>", 1)[0]
    md = (folder.results / COMPARISON_MD).read_text()
    assert f"- SPICE n/a for every model: {SPICE_UNAVAILABLE_REASON}" in md
    md_row = next(line for line in md.splitlines() if line.startswith(f"| {folder.scored_models[0]} |"))
    assert md_row.rstrip(" |").endswith("n/a")
    tex = (folder.results / COMPARISON_TEX).read_text()
    assert "SPICE n/a for every model: Stanford CoreNLP 3.6.0 jars not found in" in tex
    data = embedded_data(page)
    assert all(s["score"][0][HEADLINE_METRICS.index("spice")] is None for s in data["samples"])
    assert "spice" not in data["ranking"]["spice"]["order"] and data["ranking"]["spice"]["order"] == []


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
    assert leaderboard_rows(page) == folder.ranked("cider")
    assert "No run_manifest.json in this folder" in page
    assert "no paired p-values in all_models_summary.json" in page  # no summary: no significance, said so
    assert '<td class="gap"' in page and '<span class="ci"></span>' in leaderboard_row(page, folder.ranked()[1])


def test_hostile_text_is_embedded_as_data_not_markup(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    hostile = "</script><script>alert(1)</script> & <b>bold</b> \u2028 line"
    folder.plant_prediction(folder.scored_models[0], 0, hostile)
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    assert "<script>alert(1)" not in page
    assert embedded_data(page)["samples"][0]["pred"][0] == hostile


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ReportInputError, match="results folder not found"):
        build_report(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportInputError, match=r"empty: nothing to report"):
        build_report(empty)
    with pytest.raises(ReportInputError, match=r"rank_by 'bleu': expected one of bleu4, coco_bleu4"):
        build_report(empty, rank_by="bleu")
    assert not (empty / "report.html").exists()  # nothing half-written


def test_unreadable_files_are_skipped_with_a_warning_in_page_and_stderr(tmp_path: Path, request, capsys) -> None:
    folder = synthetic_folder(tmp_path, request)
    broken = folder.results / f"{folder.scored_models[0]}_metrics.json"
    broken.write_text('{"model_name": "x"}')
    junk = folder.results / "notes_predictions.jsonl"
    junk.write_text("this is not JSON\n")
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    stderr = capsys.readouterr().err
    for path, kind in ((broken, "MetricsFile file"), (junk, "PredictionRecord record")):
        assert f"warning: skipped unreadable {path}" in stderr and kind in stderr
        assert f"skipped unreadable {path}" in visible_text(page)
    data = embedded_data(page)
    assert folder.scored_models[0] not in data["scoredModels"]  # its metrics could not be read: not ranked
    assert "status-unscored" in leaderboard_row(page, folder.scored_models[0])
    assert "notes" not in data["models"]


def test_build_report_shows_only_the_models_it_is_given(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    shown = folder.scored_models[:2]
    left_out = folder.scored_models[2]
    (folder.results / f"{left_out}_predictions.jsonl").write_text("unreadable\n")  # never read
    page = build_report(folder.results, models=shown, data_file=folder.data_file).read_text(encoding="utf-8")
    data = embedded_data(page)
    assert data["scoredModels"] == [m for m in folder.ranked() if m in shown]
    assert leaderboard_rows(page) == data["scoredModels"] + [FAILED]  # the ablation's failed model stays visible
    assert left_out not in page  # not in the table, the matrix, the charts' alt texts or the warnings
    assert "human (leave-one-out)" in page  # the folder's human baseline is a reference row, not a model
    assert len(significance_cells(page, "cider")) == 2  # the Holm family is the shown pair only


def test_scoring_score_report_reads_only_the_models_it_scored(tmp_path: Path) -> None:
    """Regression: `score --predictions A B --report` read every *_predictions.jsonl in the output folder, so an
    unrelated unreadable file there crashed it after the metrics were written."""
    from conftest import write_quic_csv
    from test_scoring_cli import ROWS, scoring, write_predictions

    data_file = write_quic_csv(tmp_path / "data.csv", ROWS)
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes_predictions.jsonl").write_text("not a prediction\n")  # unrelated and unreadable
    old = write_predictions(out / "old-model_predictions.jsonl", data_file, {i: ("A street.", None) for i in range(5)})
    alpha = write_predictions(
        tmp_path / "alpha_predictions.jsonl", data_file, {i: ("A sandy beach.", None) for i in range(5)}
    )
    beta = write_predictions(
        tmp_path / "beta_predictions.jsonl", data_file, {i: ("A city street.", None) for i in range(5)}
    )
    completed = scoring(
        "score", "--predictions", alpha, beta, "--data", data_file, "--output-dir", out,
        *WITHOUT_SPICE, "--report",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert f"report: {out / 'report.html'}" in completed.stdout
    data = embedded_data((out / "report.html").read_text(encoding="utf-8"))
    assert sorted(data["models"]) == ["alpha", "beta"] and old.stem.split("_")[0] not in data["models"]
    assert "notes" not in completed.stderr


def test_scoring_cli_report_subcommand_builds_the_page(tmp_path: Path, request) -> None:
    folder = synthetic_folder(tmp_path, request)
    (folder.results / "notes_predictions.jsonl").write_text("not a prediction\n")
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
    assert f"warning: skipped unreadable {folder.results / 'notes_predictions.jsonl'}" in completed.stderr
    page = (folder.results / "report.html").read_text(encoding="utf-8")
    assert [s["id"] for s in embedded_data(page)["samples"]] == folder.sample_ids
    assert leaderboard_rows(page) == folder.rows()


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
    assert "status-unscored" in leaderboard_row(page, model)
    data = embedded_data(page)
    assert model in data["models"] and model not in data["scoredModels"]
    predictions = {
        p.sample_id: p.prediction for p in read_jsonl(folder.results / f"{model}_predictions.jsonl", PredictionRecord)
    }
    index = data["models"].index(model)
    assert {s["id"]: s["pred"][index] for s in data["samples"]} == predictions


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
    assert model not in data["ranking"]["cider"]["order"]  # NaN is never ranked
    assert leaderboard_rows(page)[-2:] == [model, FAILED]  # after the ranked models, before the failed one
    assert leaderboard_row(page, model).count(">n/a</td>") == 1


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
    assert " best" not in re.sub(r'<span class="v">best</span>', "", leaderboard_row(page, MODELS[0]))
    assert '<td class="rank">1</td>' in leaderboard_row(page, MODELS[0])
    assert f"| {MODELS[0]} |" in (folder.results / COMPARISON_MD).read_text()


def test_caption_length_empty_share_and_both_speeds_per_model(tmp_path: Path, request) -> None:
    """The leaderboard's words / empty / failed columns count from the sample scores and the metrics files; the Run
    table shows generate()'s samples/s and the end-to-end one the console showed, each from `<model>_run.json`."""
    folder = synthetic_folder(tmp_path, request)
    model = folder.scored_models[0]
    folder.plant_prediction(model, 0, "")
    folder.plant_prediction(model, 1, "one two three four five six seven")
    run_path = folder.results / f"{model}_run.json"
    run = json.loads(run_path.read_text())
    run["timings"] |= {"samples_per_s": 63.25, "wall_s": 1.86, "wall_samples_per_s": 6.46}
    run_path.write_text(json.dumps(run))
    page = build_report(folder.results, data_file=folder.data_file).read_text(encoding="utf-8")
    row = leaderboard_row(page, model)
    words = [len(s.prediction.split()) for s in folder.scores(model).values() if s.prediction.strip()]
    counts = folder.metrics(model).counts
    assert re.search(rf'<td class="num words">{sum(words) / len(words):.1f}</td>', row), row
    assert re.search(rf'<td class="num empty"[^>]*>{100 * counts.empty / counts.scored:.1f}%</td>', row), row
    assert re.search(rf'<td class="num failed">{counts.failed}</td>', row), row
    run_row = page.split('<table class="manifest">', 1)[1].split(f"<td>{model}</td>", 1)[1].split("</tr>", 1)[0]
    assert ["63.25", "1.86", "6.46"] == [
        v for v in re.findall(r">([0-9.]+)</td>", run_row) if v in {"63.25", "1.86", "6.46"}
    ]
    assert "samples/s end to end" in page and "what the console's progress line showed" in page
