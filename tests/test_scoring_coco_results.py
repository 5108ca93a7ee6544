"""`python -m scoring score --coco-results R.json --annotations A.json`: another tool's COCO caption results scored
against a COCO annotations file, compared with pycocotools + pycocoevalcap's COCOEvalCap run directly on the same
two files (real Java, real jars): BLEU-1..4, METEOR, ROUGE-L and CIDEr-D per file, per image and per NoCaps-like
domain; SPICE against pycocoevalcap's own `Spice` on COCOEvalCap's tokenized texts of the same files (skipped, with the
reason, where the project's SPICE cannot run here)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, WITHOUT_SPICE, runner_env
from data_formats import SAMPLE_DIR
from scoring_reference import Corpus, cocoevalcap_harness, pycocoevalcap_spice

from contract import CAPTION_QUERY, SUMMARY_JSON, MetricsFile, SampleScores, Summary, read_json, read_jsonl, sample_id
from scoring.cli import main as scoring_main
from scoring.metrics import LEFT_OUT

TOLERANCE = 1e-9
COCO_METRICS = {"Bleu_1": "coco_bleu1", "Bleu_2": "coco_bleu2", "Bleu_3": "coco_bleu3", "Bleu_4": "coco_bleu4"}
COCO_METRICS |= {"METEOR": "meteor", "ROUGE_L": "rougeL", "CIDEr": "cider"}
DOMAINS = ("in-domain", "near-domain", "out-domain")
UNCOVERED = 3  # annotated images the results leave out


def _perturb(caption: str, index: int, model: int) -> str:
    words = caption.rstrip(".").split()
    if model == 0:
        words = words[1:] + (words[-1:] if index % 3 == 0 else [])
    else:
        words = ["maybe", *words[: max(3, len(words) - 2)]]
    return " ".join(words)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """data/sample's 24 (image, query) samples as a COCO annotations file (an image per sample, NoCaps-like domains,
    annotations interleaved, one image without captions), and two models' results files over all but 3 images."""
    folder = tmp_path_factory.mktemp("coco_results")
    samples: dict[tuple[str, str], list[str]] = {}
    with open(SAMPLE_DIR / "sample.csv", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            samples.setdefault((row["url"], row["query"]), []).append(row["annotation"])
    images, annotations = [], []
    for index, (image, query) in enumerate(samples):
        name = f"{query}/{Path(image).name}"
        images.append({"id": 500 + 7 * index, "file_name": name, "domain": DOMAINS[index % 3], "width": 1024})
    images.append({"id": 9, "file_name": "unannotated.jpg", "domain": "in-domain"})
    for position in range(max(map(len, samples.values()))):
        for index, captions in enumerate(samples.values()):
            if position < len(captions):
                annotations.append({"image_id": 500 + 7 * index, "id": len(annotations), "caption": captions[position]})
    paths = {"annotations": folder / "captions_sample.json"}
    paths["annotations"].write_text(json.dumps({"images": images, "annotations": annotations}), encoding="utf-8")
    for model in (0, 1):
        results = [
            {"image_id": 500 + 7 * index, "caption": _perturb(captions[model], index, model), "score": 0.5}
            for index, captions in enumerate(samples.values())
            if index >= UNCOVERED
        ]
        results.reverse()  # order in the file does not matter
        paths[f"model-{model}"] = folder / f"model-{model}.json"
        paths[f"model-{model}"].write_text(json.dumps(results), encoding="utf-8")
    return paths


def _score_files(files: dict[str, Path], out: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`python -m scoring score` on both results files against the annotations, as two models named first, second."""
    command = [sys.executable, "-m", "scoring", "score", "--annotations", str(files["annotations"])]
    command += ["--coco-results", str(files["model-0"]), "--coco-results", str(files["model-1"])]
    command += ["--name", "first", "--name", "second", "--output-dir", str(out), *options]
    return subprocess.run(command, capture_output=True, text=True, env=runner_env(), cwd=REPO_ROOT, timeout=1800)


@pytest.fixture(scope="module")
def scored(files: dict[str, Path]) -> tuple[Path, str]:
    """Every metric but SPICE (left out deliberately: test_spice_equals_... checks it on its own), with the report."""
    out = files["annotations"].parent / "results"
    completed = _score_files(files, out, "--report", *WITHOUT_SPICE)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return out, completed.stdout


@pytest.fixture(scope="module")
def direct(files: dict[str, Path]) -> dict[str, dict]:
    """COCOEvalCap on the two files as its users run it: COCO(annotations), loadRes(results), params image_id =
    cocoRes.getImgIds(), evaluate(); once over every covered image (its tokenized texts kept for SPICE) and once per
    domain. One METEOR JVM for all; SPICE is test_spice_equals_...'s."""
    import pycocoevalcap.eval
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocotools.coco import COCO

    meteor = Meteor()
    results: dict[str, dict] = {}
    with cocoevalcap_harness(meteor) as tokenized:
        coco = COCO(str(files["annotations"]))
        domain_of = {image["id"]: image["domain"] for image in coco.dataset["images"]}
        for name, key in (("first", "model-0"), ("second", "model-1")):
            coco_res = coco.loadRes(str(files[key]))
            evaluation = pycocoevalcap.eval.COCOEvalCap(coco, coco_res)
            evaluation.params["image_id"] = coco_res.getImgIds()
            tokenized.clear()
            evaluation.evaluate()
            gts, res = tokenized  # what evaluate() gave its scorers (SPICE included): references, then predictions
            per_domain = {}
            for domain in DOMAINS:
                subset = pycocoevalcap.eval.COCOEvalCap(coco, coco_res)
                subset.params["image_id"] = [i for i in coco_res.getImgIds() if domain_of[i] == domain]
                subset.evaluate()
                per_domain[domain] = {
                    "eval": dict(subset.eval),
                    "mean_cider_of_images": float(
                        np.mean([evaluation.imgToEval[i]["CIDEr"] for i in subset.params["image_id"]])
                    ),
                }
            results[name] = {
                "eval": dict(evaluation.eval),
                "images": dict(evaluation.imgToEval),
                "file_names": {i: coco.imgs[i]["file_name"] for i in evaluation.params["image_id"]},
                "domains": {i: domain_of[i] for i in evaluation.params["image_id"]},
                "tokenized": {i: (res[i][0], list(gts[i])) for i in evaluation.params["image_id"]},
                "per_domain": per_domain,
            }
    return results


@pytest.mark.parametrize("name", ["first", "second"])
def test_every_metric_equals_cocoevalcap_on_the_same_files(scored, direct, name: str) -> None:
    out, _ = scored
    metrics = read_json(out / f"{name}_metrics.json", MetricsFile)
    assert metrics.num_samples == 24 - UNCOVERED == len(direct[name]["images"])
    for method, key in COCO_METRICS.items():
        assert metrics.metrics[key] == pytest.approx(direct[name]["eval"][method], abs=TOLERANCE, rel=0), key
    assert metrics.metrics["spice"] is None and metrics.unavailable["spice"] == LEFT_OUT  # checked on its own below
    # Per image too: each sample's METEOR, ROUGE-L and CIDEr are COCOEvalCap's imgToEval values for that image.
    rows = {row.sample_id: row for row in read_jsonl(out / f"{name}_sample_scores.jsonl", SampleScores)}
    for image_id, scores in direct[name]["images"].items():
        row = rows[sample_id(direct[name]["file_names"][image_id], CAPTION_QUERY)]
        for method in ("METEOR", "ROUGE_L", "CIDEr"):
            assert row.scores[COCO_METRICS[method]] == pytest.approx(scores[method], abs=TOLERANCE, rel=0), method


def test_annotated_images_without_a_prediction_are_counted_and_said(scored) -> None:
    out, stdout = scored
    metrics = read_json(out / "first_metrics.json", MetricsFile)
    assert metrics.counts.missing == UNCOVERED and metrics.counts.scored == 21
    warning = "scored the 21 images model-0.json covers, as COCOEvalCap does; 3 annotated images of "
    assert any(line.startswith(warning) for line in metrics.warnings)
    assert "[first] 21 of 24 annotated images have a prediction (3 without one, not scored)" in stdout
    assert "24 samples from 92 captions" in stdout and "1 samples without any reference dropped" in stdout
    assert metrics.model_id == "first"


@pytest.mark.parametrize("name", ["first", "second"])
def test_per_domain_breakdown(scored, direct, name: str) -> None:
    """BLEU, METEOR and ROUGE-L of a domain are COCOEvalCap's on that domain's images; CIDEr is the mean of the
    domain's per-image CIDEr with document frequencies from every scored image (as the per-query table)."""
    out, _ = scored
    per_group = read_json(out / f"{name}_metrics.json", MetricsFile).per_group
    assert list(per_group) == list(DOMAINS)
    assert sum(row["num_samples"] for row in per_group.values()) == 21
    for domain, expected in direct[name]["per_domain"].items():
        row = per_group[domain]
        for method in ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L"):
            assert row[COCO_METRICS[method]] == pytest.approx(expected["eval"][method], abs=TOLERANCE, rel=0), method
        assert row["cider"] == pytest.approx(expected["mean_cider_of_images"], abs=TOLERANCE, rel=0)


def test_spice_equals_cocoevalcaps_spice_on_the_same_files(
    files: dict[str, Path], direct, tmp_path: Path, spice_jars: Path
) -> None:
    """SPICE of both results files in one scoring run against pycocoevalcap's own `Spice` on exactly the texts
    COCOEvalCap.evaluate hands it for these files (its PTB tokenization of the covered images), in one run: per image,
    per file (the mean, as COCOEvalCap reports it) and per domain (the mean of the domain's images, which is what
    COCOEvalCap reports on the domain's images alone: SPICE scores each image on its own)."""
    jar_dir = spice_jars
    out = tmp_path / "results"
    completed = _score_files(files, out, "--metrics", "spice", "--spice-jars", str(jar_dir))
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    names = ("first", "second")
    image_ids = {name: list(direct[name]["tokenized"]) for name in names}
    corpora, tokenized = [], []
    for name in names:
        texts = [direct[name]["tokenized"][image_id] for image_id in image_ids[name]]
        corpora.append(Corpus(name, [prediction for prediction, _ in texts], [refs for _, refs in texts]))
        tokenized.append((corpora[-1].predictions, corpora[-1].references))
    expected = pycocoevalcap_spice(corpora, tokenized, jar_dir, tmp_path / "reference")
    for name, (mean, values) in zip(names, expected, strict=True):
        assert not any(np.isnan(values)), "every image of these files has a SPICE F-score"
        metrics = read_json(out / f"{name}_metrics.json", MetricsFile)
        assert metrics.metrics["spice"] == pytest.approx(mean, abs=TOLERANCE, rel=0)
        rows = {row.sample_id: row for row in read_jsonl(out / f"{name}_sample_scores.jsonl", SampleScores)}
        by_domain: dict[str, list[float]] = {}
        for image_id, value in zip(image_ids[name], values, strict=True):
            row = rows[sample_id(direct[name]["file_names"][image_id], CAPTION_QUERY)]
            assert row.scores["spice"] == pytest.approx(value, abs=TOLERANCE, rel=0), image_id
            by_domain.setdefault(direct[name]["domains"][image_id], []).append(value)
        assert list(metrics.per_group) == list(DOMAINS)
        for domain, domain_values in by_domain.items():
            assert metrics.per_group[domain]["spice"] == pytest.approx(
                float(np.mean(domain_values)), abs=TOLERANCE, rel=0
            )


def test_several_results_files_give_one_report_with_significance(scored) -> None:
    out, _ = scored
    summary = read_json(out / SUMMARY_JSON, Summary)
    assert [entry.model_name for entry in summary.models] == ["first", "second"]
    for metric in ("coco_bleu4", "meteor", "rougeL", "cider"):
        assert 0 < summary.significance[metric]["first|second"] <= 1
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<th>near-domain (7)</th>" in page
    nav = re.findall(r'<a href="#([a-z-]+)-section">', page.split("<nav>", 1)[1].split("</nav>", 1)[0])
    assert nav == re.findall(r'<section id="([a-z-]+)-section">', page)
    assert nav[nav.index("per-query") + 1] == "per-group"
    assert '<tr data-model="second"><th>second</th>' in page  # a significance matrix of the two


def _score(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    code = scoring_main(["score", *map(str, args), *WITHOUT_SPICE])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_refusals_name_the_file_entry_and_value(files: dict[str, Path], tmp_path: Path, capsys) -> None:
    annotations = files["annotations"]
    out = tmp_path / "out"

    def results(name: str, entries: object) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(entries), encoding="utf-8")
        return path

    twice = results("twice.json", [{"image_id": 500, "caption": "a"}, {"image_id": 507, "caption": "b"}] * 2)
    code, text = _score(capsys, "--coco-results", twice, "--annotations", annotations, "--output-dir", out)
    assert (
        code == 2 and f"{twice}: 2 image id(s) have more than one caption (first: image_id 500 in entries 0, 2)" in text
    )
    unknown = results("unknown.json", [{"image_id": 500, "caption": "a"}, {"image_id": "507", "caption": "b"}])
    code, text = _score(capsys, "--coco-results", unknown, "--annotations", annotations, "--output-dir", out)
    assert code == 2 and "1 result(s) name an image id that is not an image with captions" in text
    assert (
        "(first: entry 1, image_id '507' (the annotations' id is 507: a number and a string are different ids))" in text
    )
    uncaptioned = results("uncaptioned.json", [{"image_id": 9, "caption": "a"}])
    code, text = _score(capsys, "--coco-results", uncaptioned, "--annotations", annotations, "--output-dir", out)
    assert code == 2 and "(first: entry 0, image_id 9)" in text
    no_caption = results("no_caption.json", [{"image_id": 500, "caption": "a"}, {"image_id": 507, "text": "b"}])
    code, text = _score(capsys, "--coco-results", no_caption, "--annotations", annotations, "--output-dir", out)
    assert code == 2 and f"{no_caption}: entry 1: field 'caption' is missing" in text
    as_object = results("object.json", {"annotations": []})
    code, text = _score(capsys, "--coco-results", as_object, "--annotations", annotations, "--output-dir", out)
    assert code == 2 and "a COCO results file is a JSON list" in text
    hidden = results(".hidden.json", [{"image_id": 500, "caption": "a"}])
    code, text = _score(capsys, "--coco-results", hidden, "--annotations", annotations, "--output-dir", out)
    assert code == 2 and "model name '.hidden'" in text and "give another with --name" in text
    good = files["model-0"]
    code, text = _score(capsys, "--coco-results", good, "--coco-results", good, "--name", "a", "--output-dir", out,
                        "--annotations", annotations)  # fmt: skip
    assert code == 2 and "--name given 1 time(s) for 2 --coco-results file(s)" in text
    code, text = _score(capsys, "--coco-results", good, "--output-dir", out)
    assert code == 2 and "--coco-results needs --annotations FILE" in text
    code, text = _score(capsys, "--coco-results", good, "--annotations", good, "--output-dir", out)
    assert code == 2 and f"{good}: field 'images' must be a list of records" in text
    code, text = _score(capsys, "--coco-results", good, "--annotations", annotations, "--data", annotations,
                        "--output-dir", out)  # fmt: skip
    assert code == 2 and "--coco-results takes --annotations, not --data" in text
    assert not out.exists()  # nothing was written for any of them
