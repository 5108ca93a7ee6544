"""What a new user meets in the first hour: the human reference row by default (console, report, md/tex,
comparison.csv) and --no-human-baseline; a rerun of a finished ablation that skips what is done, does not rescore
unchanged inputs and keeps one earlier manifest; `make demo` with a mistyped model name; `make help` against the
Makefile; `make reproduce` pointing at the demo's run."""

from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path

import pytest
from _orchestrator_helpers import REPO_ROOT, model_root, orchestrator_env, run_orchestrator, statuses

from contract import COMPARISON_CSV, HUMAN_BASELINE, METRICS_JSON, PREDICTIONS_JSONL, MetricsFile, read_json
from scoring.report import COMPARISON_MD, COMPARISON_TEX

MODEL = "blip2-opt-2.7b"
HUMAN_LABEL = "human (leave-one-out)"


def ablation(data_file: Path, out: Path, root: Path, *extra: str):
    return run_orchestrator(
        "ablation", "--engine", "local", "--gpus", "none", "--models", MODEL, "--data", data_file,
        "--output-dir", out, "--model-path-root", root, "--batch-size", "4", "--max-new-tokens", "6", *extra,
    )  # fmt: skip


def human_rows(out: Path) -> list[dict[str, str]]:
    with (out / COMPARISON_CSV).open(encoding="utf-8", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["row"] == "human"]


def mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint):
    """One tiny model over 4 panoramas x 2 queries (3 references each), run to the end once."""
    from conftest import build_panorama_data

    tmp = tmp_path_factory.mktemp("first_hour")
    data = build_panorama_data(tmp / "data", num_images=4)
    root = model_root(tmp, tiny_checkpoint, [MODEL])
    out = tmp / "results"
    first = ablation(data.data_file, out, root)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr
    return data, out, root, first


def test_the_human_reference_row_is_there_by_default(finished) -> None:
    _data, out, _root, first = finished
    human = read_json(out / METRICS_JSON.format(model=HUMAN_BASELINE), MetricsFile)
    assert human.human_baseline and human.num_samples == 8
    lines = first.stdout.splitlines()
    row = next(line for line in lines if line.lstrip().startswith("human (reference)"))
    assert f"CIDEr {human.metrics['cider'] * 100:.2f}" in row
    # Not ranked: it comes after the ranked line.
    assert lines.index(row) > next(i for i, line in enumerate(lines) if line.startswith("  1. "))
    page = (out / "report.html").read_text(encoding="utf-8")
    footer = page.split('<tr class="human">', 1)[1].split("</tr>", 1)[0]
    assert HUMAN_LABEL in footer and f"{human.metrics['cider'] * 100:.2f}" in footer
    assert "*Human (leave-one-out)* | " in (out / COMPARISON_MD).read_text(encoding="utf-8")
    assert "\\textit{Human (leave-one-out)}" in (out / COMPARISON_TEX).read_text(encoding="utf-8")
    [csv_row] = human_rows(out)
    assert csv_row["model_name"] == HUMAN_BASELINE
    assert float(csv_row["cider"]) == pytest.approx(human.metrics["cider"])


def test_a_rerun_of_a_finished_ablation_skips_generation_and_scoring(finished) -> None:
    data, out, root, first = finished
    before = mtimes(out)
    for attempt in (1, 2):
        rerun = ablation(data.data_file, out, root)
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr
        lines = rerun.stdout.splitlines()
        assert any(re.match(rf"\[1/1\] {MODEL} already complete: 8/8, skipped", line) for line in lines), lines
        assert not any(f"{MODEL} started at" in line for line in lines)
        assert any(line.startswith("scores up to date") for line in lines), lines
        after = mtimes(out)
        # Predictions, run record, metrics and sample scores are the first run's files, untouched.
        for name in (
            PREDICTIONS_JSONL.format(model=MODEL), f"{MODEL}_run.json", METRICS_JSON.format(model=MODEL),
            f"{MODEL}_sample_scores.jsonl", METRICS_JSON.format(model=HUMAN_BASELINE),
        ):  # fmt: skip
            assert after[name] == before[name], (attempt, name)
        manifests = sorted(p.name for p in out.glob("run_manifest*.json"))
        assert manifests == ["run_manifest.json", "run_manifest.previous.json"], (attempt, manifests)
        assert statuses(out) == {MODEL: "completed"}
    assert "human (reference)" in rerun.stdout  # still shown on a rerun


def test_no_human_baseline_leaves_the_row_out(finished, tmp_path: Path) -> None:
    data, _out, root, _first = finished
    out = tmp_path / "without"
    run = ablation(data.data_file, out, root, "--no-human-baseline")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr
    assert not (out / METRICS_JSON.format(model=HUMAN_BASELINE)).exists()
    assert "human (reference)" not in run.stdout
    assert HUMAN_LABEL not in (out / "report.html").read_text(encoding="utf-8")
    assert "Human (leave-one-out)" not in (out / COMPARISON_MD).read_text(encoding="utf-8")
    assert "Human (leave-one-out)" not in (out / COMPARISON_TEX).read_text(encoding="utf-8")
    assert human_rows(out) == []


# --- the Makefile ---------------------------------------------------------------------------------------------


def make(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=cwd, env=orchestrator_env(), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_make_demo_with_a_mistyped_model_stops_before_building_anything(tmp_path: Path) -> None:
    tiny, out = tmp_path / "tiny", tmp_path / "demo"
    done = make("demo", "MODELS=llava-1.5-7b,lava-1.5-7b", f"TINY_DIR={tiny}", f"OUTPUT_DIR={out}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "unknown model 'lava-1.5-7b'; did you mean llava-1.5-7b" in done.stderr
    assert "usage:" not in done.stderr  # the orchestrator's message, not an argparse usage
    assert not tiny.exists() and not out.exists()  # nothing built for the valid name either


def makefile_targets_and_variables() -> tuple[list[str], list[str]]:
    text = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    targets = re.findall(r"^([a-z][a-z0-9-]*):(?!=)", text, re.M)
    variables = re.findall(r"^([A-Z][A-Z0-9_]*)\s*\??=", text, re.M)
    return list(dict.fromkeys(targets)), list(dict.fromkeys(variables))


def test_make_help_lists_every_target_and_variable_of_the_makefile() -> None:
    targets, variables = makefile_targets_and_variables()
    assert {"demo", "lint", "wheelhouse", "sample", "help"} <= set(targets)
    assert {"TEST_WORKERS", "TINY_DIR", "MODELS"} <= set(variables)
    done = make("help")
    assert done.returncode == 0, done.stderr
    listed_targets = set(re.findall(r"^\s+make ([a-z0-9-]+)", done.stdout, re.M))
    listed_variables = set(re.findall(r"\b([A-Z][A-Z0-9_]*)=", done.stdout))
    internal = {"DEMO_OUTPUT"}  # computed from OUTPUT_DIR and DEMO_DIR, not a setting
    assert sorted(set(targets) - listed_targets) == []
    assert sorted(set(variables) - internal - listed_variables) == []


def test_make_reproduce_without_a_manifest_points_at_the_demo_run(tmp_path: Path) -> None:
    results = tmp_path / "results"
    (results / "demo").mkdir(parents=True)
    (results / "demo" / "run_manifest.json").write_text("{}")
    done = make("reproduce", f"OUTPUT_DIR={results}")
    assert done.returncode == 2
    assert f"manifest {results}/run_manifest.json not found" in done.stderr
    assert f"make reproduce MANIFEST={results}/demo/run_manifest.json" in done.stderr
