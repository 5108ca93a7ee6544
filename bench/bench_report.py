"""Benchmark: build the ablation report for the QuIC-360 test size (1,211 samples x 8 models).

    .venv/bin/python -m bench.bench_report [--data /work/shared/data/quic360/test.tsv] [--out bench/out/report]

Predictions are synthetic (each model's caption is a seeded perturbation of one of the sample's real human
captions) and the scores are synthetic numbers in the contract's file formats, so no Java and no model is needed:
this measures the report, not the metrics. Prints the time to build and the size of every file written.

`write_synthetic_results` is also what tests/test_report*.py use as their results-folder fixture.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from contract import (
    ABLATION_MANIFEST,
    HEADLINE_METRICS,
    METRICS_JSON,
    PREDICTIONS_JSONL,
    RUN_MANIFEST,
    SAMPLE_SCORES_JSONL,
    SUMMARY_JSON,
    AblationManifest,
    MetricsFile,
    ModelRunRecord,
    PairDifference,
    PredictionRecord,
    RunManifest,
    Sample,
    SampleCounts,
    SampleScores,
    Summary,
    SummaryEntry,
    file_sha256,
    load_dataset,
    results_file,
    write_json_atomic,
    write_jsonl_atomic,
)

QUIC360_TEST = Path("/work/shared/data/quic360/test.tsv")
EIGHT_MODELS = (
    "blip2-opt-2.7b",
    "internvl2-2b",
    "blip2-flan-t5-xl",
    "qwen2.5-vl-3b",
    "gemma-3-4b",
    "llava-1.5-7b",
    "llava-1.6-mistral-7b",
    "instructblip-vicuna-7b",
)
SPICE_UNAVAILABLE_REASON = (
    "Stanford CoreNLP 3.6.0 jars not found in ~/.cache/spice (run `python -m scoring spice-jars`)"
)
PROMPT = "In this 360-degree panoramic image, describe the {query} in one or two sentences."
FILLERS = ("image", "panorama", "view", "there", "is", "a", "the", "scene", "of", "with")


def synthetic_prediction(references: Sequence[str], rng: random.Random, quality: float) -> str:
    """A caption derived from one reference: words dropped or replaced with probability (1 - quality)."""
    words = rng.choice(list(references)).split()
    out = [w if rng.random() < quality else rng.choice(FILLERS) for w in words if rng.random() < 0.5 + quality / 2]
    return " ".join(out[:30]) or "a panorama"


# Synthetic corpus metrics: the sentence-level ones plus COCO BLEU-4 (here a fixed multiple of sacreBLEU's).
SYNTHETIC_METRICS = (*HEADLINE_METRICS, "coco_bleu4")
COCO_BLEU4_FACTOR = 1.08


def _sample_scores(prediction: str, references: Sequence[str], rng: random.Random, spice: bool) -> dict:
    """Plausible sentence-level numbers (word overlap with the references plus noise): synthetic, not metrics."""
    predicted = set(prediction.lower().split())
    overlap = max((len(predicted & set(r.lower().split())) / max(1, len(predicted)) for r in references), default=0.0)
    noise = rng.uniform(-0.05, 0.05)
    base = max(0.0, min(1.0, overlap + noise))
    return {
        "bleu4": round(base**3, 6),
        "meteor": round(base * 0.6, 6),
        "rougeL": round(base * 0.9, 6),
        "cider": round(base * 2.5, 6),
        "spice": round(base * 0.5, 6) if spice else None,
    }


def _mean_ci(values: list[float], rng: random.Random, resamples: int = 200) -> tuple[float, tuple[float, float]]:
    mean = statistics.fmean(values)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(resamples))
    return mean, (means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1])


def write_synthetic_results(
    results_dir: Path,
    samples: Sequence[Sample],
    models: Sequence[str],
    *,
    data_file: Path,
    failed_model: str | None = None,
    spice_available: bool = True,
    failed_sample_every: int = 0,
    human_baseline: bool = True,
    seed: int = 0,
) -> None:
    """A results folder in the contract's formats, as the runner, scoring and orchestrator would leave it.

    `failed_model` gets a few predictions and a failed status in run_manifest.json but no metrics; every
    `failed_sample_every`-th sample of the other models has a runner error; SPICE can be marked unavailable.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    data_sha = file_sha256(data_file)
    entries: list[SummaryEntry] = []
    records: list[ModelRunRecord] = []
    per_sample: dict[str, dict[str, dict]] = {}
    for model_index, model in enumerate(models):
        rng = random.Random(f"{seed}-{model}")
        quality = 0.35 + 0.5 * (model_index + 1) / (len(models) + 1)
        failed = model == failed_model
        chosen = samples[: max(1, len(samples) // 4)] if failed else samples
        predictions, scores = [], []
        for index, sample in enumerate(chosen):
            error = None
            if failed_sample_every and not failed and index % failed_sample_every == failed_sample_every - 1:
                error = "RuntimeError: CUDA out of memory while generating (batch of 1)"
            prediction = "" if error else synthetic_prediction(sample.references, rng, quality)
            prompt = PROMPT.format(query=sample.query)
            predictions.append(
                PredictionRecord(
                    sample_id=sample.sample_id,
                    image=sample.image,
                    query=sample.query,
                    prediction=prediction,
                    references=sample.references,
                    error=error,
                    model_name=model,
                    prompt=f"USER: <image>\n{prompt} ASSISTANT:",
                )
            )
            sentence = _sample_scores(prediction, sample.references, rng, spice_available)
            scores.append(
                SampleScores(
                    sample_id=sample.sample_id,
                    image=sample.image,
                    query=sample.query,
                    prediction=prediction,
                    raw_prediction=prediction,
                    error=error,
                    scores=sentence,
                )
            )
        write_jsonl_atomic(results_file(results_dir, PREDICTIONS_JSONL, model), predictions)
        write_json_atomic(
            results_file(results_dir, RUN_MANIFEST, model),
            RunManifest(
                model_name=model,
                model_id=f"synthetic/{model}",
                resolved_revision=f"{rng.getrandbits(160):040x}",
                family=model.split("-")[0],
                dtype="bfloat16",
                device="cuda",
                device_name="NVIDIA H100 80GB HBM3",
                prompt_template=PROMPT,
                decoding={"do_sample": False, "num_beams": 1, "max_new_tokens": 60},
                data_file=str(data_file),
                data_sha256=data_sha,
                num_samples=len(samples),
                batch_size_requested=16,
                batch_size_used=16 if model_index % 3 else 8,
                oom_retries=0 if model_index % 3 else 1,
                timings={"load_s": 10.0 + model_index, "generate_s": 60.0 + 5 * model_index, "samples_per_s": 20.0},
                num_errors=sum(1 for p in predictions if p.error),
            ),
        )
        records.append(
            ModelRunRecord(
                model_name=model,
                model_id=f"synthetic/{model}",
                family=model.split("-")[0],
                image=f"vlm-ablation/{model.split('-')[0]}:latest",
                image_digest=f"sha256:{rng.getrandbits(256):064x}",
                status="failed" if failed else "completed",
                message="container exited with code 137 (killed: out of memory) after 25% of samples"
                if failed
                else None,
            )
        )
        if failed:
            entries.append(
                SummaryEntry(
                    model_name=model, model_id=f"synthetic/{model}", num_samples=0, metrics={}, status="failed"
                )
            )
            continue
        write_jsonl_atomic(results_file(results_dir, SAMPLE_SCORES_JSONL, model), scores)
        with_coco = [s.scores | {"coco_bleu4": round(s.scores["bleu4"] * COCO_BLEU4_FACTOR, 6)} for s in scores]
        per_sample[model] = {s.sample_id: row for s, row in zip(scores, with_coco, strict=True)}
        metrics: dict[str, float | None] = {}
        ci: dict[str, tuple[float, float] | None] = {}
        for metric in SYNTHETIC_METRICS:
            values = [row[metric] for row in with_coco]
            if any(v is None for v in values):
                metrics[metric], ci[metric] = None, None
                continue
            metrics[metric], ci[metric] = _mean_ci([float(v) for v in values if v is not None], rng)
        per_query: dict[str, dict[str, float | None]] = {}
        for query in dict.fromkeys(s.query for s in scores):
            chosen_scores = [row for s, row in zip(scores, with_coco, strict=True) if s.query == query]
            per_query[query] = {
                m: None if metrics[m] is None else statistics.fmean(c[m] for c in chosen_scores)
                for m in SYNTHETIC_METRICS
            }
        write_json_atomic(
            results_file(results_dir, METRICS_JSON, model),
            MetricsFile(
                model_name=model,
                model_id=f"synthetic/{model}",
                num_samples=len(scores),
                metrics=metrics,
                ci=ci,
                per_query=per_query,
                counts=SampleCounts(
                    scored=len(scores),
                    empty=sum(1 for s in scores if not s.prediction),
                    failed=sum(1 for s in scores if s.error),
                ),
                unavailable={} if spice_available else {"spice": SPICE_UNAVAILABLE_REASON},
                warnings=[] if spice_available else [f"SPICE not computed: {SPICE_UNAVAILABLE_REASON}"],
            ),
        )
        entries.append(
            SummaryEntry(
                model_name=model, model_id=f"synthetic/{model}", num_samples=len(scores), metrics=metrics, ci=ci
            )
        )

    significance, differences = _significance(per_sample, spice_available, seed)
    write_json_atomic(
        results_dir / SUMMARY_JSON, Summary(models=entries, significance=significance, differences=differences)
    )
    write_json_atomic(
        results_dir / ABLATION_MANIFEST,
        AblationManifest(
            engine="docker",
            arguments={"models": list(models), "batch_size": 16},
            data_file=str(data_file),
            data_sha256=data_sha,
            models=records,
            versions={"orchestrator": "0.1.0", "docker": "26.1.5"},
            scoring_image="vlm-ablation/scoring:latest",
            scoring_image_digest=f"sha256:{random.Random(seed).getrandbits(256):064x}",
            started_at="2026-11-27T01:00:00Z",
            finished_at="2026-11-27T01:20:00Z",
        ),
    )
    if human_baseline:
        write_json_atomic(
            results_file(results_dir, METRICS_JSON, "human-baseline"),
            MetricsFile(
                model_name="human-baseline",
                model_id="human (leave-one-out: first reference vs the rest)",
                num_samples=len(samples),
                metrics={
                    "bleu4": 0.21,
                    "coco_bleu4": 0.23,
                    "meteor": 0.24,
                    "rougeL": 0.41,
                    "cider": 0.78,
                    "spice": None,
                },
                counts=SampleCounts(scored=len(samples), empty=0, failed=0),
                unavailable={"spice": SPICE_UNAVAILABLE_REASON},
            ),
        )


def _significance(
    per_sample: dict[str, dict[str, dict]], spice: bool, seed: int, resamples: int = 1000
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, PairDifference]]]:
    """Paired bootstrap on the synthetic per-sample scores, as scoring does it: every model resampled with the same
    indices; two-sided p-values and each pair's difference with the percentile 95% CI of the resampled ones."""
    import numpy as np

    from scoring.resample import bootstrap_weights, confidence_intervals, paired_p_value

    names = list(per_sample)
    sample_ids = sorted(set.intersection(*(set(per_sample[name]) for name in names))) if names else []
    weights = bootstrap_weights(np.arange(len(sample_ids)), resamples, seed) / max(1, len(sample_ids))
    p_values: dict[str, dict[str, float]] = {}
    differences: dict[str, dict[str, PairDifference]] = {}
    for metric in SYNTHETIC_METRICS:
        if metric == "spice" and not spice or not sample_ids:
            continue
        values = {n: np.array([per_sample[n][sid][metric] for sid in sample_ids], dtype=np.float64) for n in names}
        observed = {name: float(v.mean()) for name, v in values.items()}
        resampled = {name: weights @ v for name, v in values.items()}
        p_values[metric], differences[metric] = {}, {}
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                pair = f"{a}|{b}"
                p_values[metric][pair] = paired_p_value(observed[a], observed[b], resampled[a], resampled[b])
                ci = confidence_intervals({metric: resampled[a] - resampled[b]})[metric]
                differences[metric][pair] = PairDifference(difference=observed[a] - observed[b], ci=ci)
    return p_values, differences


def write_local_panoramas(data: Path, folder: Path, size: tuple[int, int] = (2048, 1024)) -> Path:
    """A copy of the data file whose image URLs point at generated local JPEG panoramas (QuIC-360's Flickr `_k`
    images are 2048 px wide), so the benchmark also measures making the thumbnails. Returns the new data file."""
    import csv

    import numpy as np
    from PIL import Image

    with open(data, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t" if data.suffix == ".tsv" else ","))
    images: dict[str, str] = {}
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3), np.float32)
    for url in dict.fromkeys(row["url"] for row in rows):
        index = len(images)
        rng = np.random.default_rng(index)
        pixels = gradient * rng.uniform(0.3, 1.0, size=3)
        for _ in range(12):
            x, y = int(rng.integers(0, width - 200)), int(rng.integers(0, height - 200))
            pixels[y : y + int(rng.integers(40, 200)), x : x + int(rng.integers(40, 400))] = rng.integers(0, 256, 3)
        name = f"pano_{index:04d}.jpg"
        Image.fromarray(pixels.astype(np.uint8), "RGB").save(folder / name, quality=85)
        images[url] = f"{folder.name}/{name}"
    local = folder.parent / "data_local.csv"
    with open(local, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["url", "query", "annotation"])
        writer.writeheader()
        for row in rows:
            writer.writerow({"url": images[row["url"]], "query": row["query"], "annotation": row["annotation"]})
    return local


def time_in_chromium(report: Path) -> None:
    """Open the page in headless Chromium (the tests' DevTools driver) and time load and browser interactions."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_report_browser import CHROMIUM, Chromium, Page

    if CHROMIUM is None:
        print("chromium not installed: browser timings skipped")
        return
    with tempfile.TemporaryDirectory() as profile:
        browser = Chromium(Path(profile))
        try:
            page = Page(browser)
            started = time.perf_counter()
            page.open(report)
            loaded = time.perf_counter() - started
            timings = page.evaluate(
                """(() => { const t = (f) => { const t0 = performance.now(); f(); return performance.now() - t0; };
                  const sort = document.getElementById('sort-order'), text = document.getElementById('filter-text');
                  return {
                    sortDisagreement: t(() => { sort.value = 'spread-desc'; sort.dispatchEvent(new Event('change')); }),
                    search: t(() => { text.value = 'building'; applyFilters(); }),
                    nextPage: t(() => document.getElementById('page-next').click()),
                    errors: document.getElementById('js-errors').textContent,
                  }; })()"""
            )
            print(
                f"chromium: page load {loaded:.2f} s; sort by disagreement {timings['sortDisagreement']:.0f} ms; "
                f"text search {timings['search']:.0f} ms; next page {timings['nextPage']:.0f} ms; "
                f"errors: {page.errors() or 'none'}"
            )
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=QUIC360_TEST, help="QuIC-360 test split (TSV)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/report"), help="folder to (re)create")
    parser.add_argument("--models", type=int, default=8, help="how many of the eight model names to use")
    parser.add_argument("--repeats", type=int, default=3, help="builds to time (the best and all are printed)")
    parser.add_argument("--with-images", action="store_true", help="generate local 2048x1024 panoramas too")
    parser.add_argument("--browser", action="store_true", help="also time the page in headless Chromium")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"{args.data}: QuIC-360 test split not found", file=sys.stderr)
        return 2

    from scoring.report import build_report

    if args.out.exists():
        shutil.rmtree(args.out)
    data = args.data
    if args.with_images:
        started = time.perf_counter()
        data = write_local_panoramas(args.data, args.out / "images")
        print(f"generated panoramas for {data} in {time.perf_counter() - started:.1f} s")
    results = args.out / "results"
    dataset = load_dataset(data)
    started = time.perf_counter()
    write_synthetic_results(
        results, dataset.samples, EIGHT_MODELS[: args.models], data_file=data, failed_sample_every=97
    )
    elapsed = time.perf_counter() - started
    print(f"synthetic results: {len(dataset.samples)} samples x {args.models} models written in {elapsed:.1f} s")

    # Wall time, and this process's CPU time, which a busy shared machine inflates much less.
    walls, cpus = [], []
    for _ in range(args.repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        report = build_report(results, data_file=data)
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - started_cpu)
    note = " (the first build makes the thumbnails, later ones reuse them)" if args.with_images else ""
    print(
        f"build_report wall: {', '.join(f'{t:.2f}' for t in walls)} s; "
        f"CPU: {', '.join(f'{t:.2f}' for t in cpus)} s{note}"
    )
    for name in (report.name, "comparison.md", "comparison.tex"):
        size = (results / name).stat().st_size
        print(f"{name}: {size:,} bytes ({size / 1e6:.2f} MB)")
    thumbs = list((results / "thumbs").glob("*.jpg"))
    if thumbs:
        total = sum(t.stat().st_size for t in thumbs)
        each = total / len(thumbs) / 1e3
        print(f"thumbs/: {len(thumbs)} files, {total:,} bytes ({total / 1e6:.2f} MB), {each:.1f} kB each")
    if args.browser:
        time_in_chromium(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
