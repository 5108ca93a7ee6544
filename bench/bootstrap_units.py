"""Interval widths when the bootstrap resamples images vs samples, on the QuIC-360 human leave-one-out predictions.

QuIC-360 asks about several queries of each panorama; samples of one panorama are not independent, so scoring
resamples panoramas (images). This runs `python -m scoring human-baseline` on the test split (or reads a results
folder that has `human-baseline_sample_scores.jsonl`) and prints each metric's 95% interval width both ways, from the
same per-sample statistics, with the ratio.

    python -m bench.bootstrap_units                                  # scores the human baseline first (about a minute)
    python -m bench.bootstrap_units --results results/                # an existing human-baseline run
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from contract import MetricsFile, SampleScores, read_json, read_jsonl
from scoring.outputs import computed_metrics, matrix_from_sample_scores
from scoring.resample import (
    SAMPLE_UNIT,
    SampleMatrix,
    bootstrap_weights,
    confidence_intervals,
    corpus_metrics,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
QUIC_TEST = REPO_ROOT.parent / "shared" / "data" / "quic360" / "test.tsv"


def widths(results: Path, name: str, resamples: int, seed: int) -> None:
    metrics = read_json(results / f"{name}_metrics.json", MetricsFile)
    path = results / f"{name}_sample_scores.jsonl"
    rows = list(read_jsonl(path, SampleScores))
    computed = computed_metrics(metrics)
    by_image = matrix_from_sample_scores(path, rows, computed)
    by_sample = SampleMatrix(by_image.stats, np.arange(len(rows)), SAMPLE_UNIT)
    print(f"{len(rows)} samples on {by_image.num_units} images ({by_image.unit} unit chosen); {resamples} resamples, "
          f"seed {seed}")  # fmt: skip
    intervals = {}
    for label, matrix in (("samples", by_sample), ("images", by_image)):
        values = corpus_metrics(computed, matrix, bootstrap_weights(matrix.groups, resamples, seed))
        intervals[label] = confidence_intervals(values)
    print(f"{'metric':<12} {'value x100':>10} {'width (samples)':>16} {'width (images)':>15} {'ratio':>6}")
    for metric in computed:
        low_s, high_s = intervals["samples"][metric.key]
        low_i, high_i = intervals["images"][metric.key]
        value = metrics.metrics[metric.key] * metric.scale
        sample_width, image_width = (high_s - low_s) * metric.scale, (high_i - low_i) * metric.scale
        print(f"{metric.key:<12} {value:>10.2f} {sample_width:>16.2f} {image_width:>15.2f} "
              f"{image_width / sample_width:>5.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, help="a folder with human-baseline_sample_scores.jsonl")
    parser.add_argument("--data", type=Path, default=QUIC_TEST)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.results is not None:
        widths(args.results, "human-baseline", args.resamples, args.seed)
        return
    if not args.data.is_file():
        raise SystemExit(f"{args.data} not found (the QuIC-360 test split; --data FILE)")
    with tempfile.TemporaryDirectory(prefix="bootstrap_units_") as temp:
        command = [sys.executable, "-m", "scoring", "human-baseline", "--data", str(args.data), "--output-dir", temp,
                   "--metrics", "all,-spice", "--seed", str(args.seed)]  # fmt: skip
        subprocess.run(command, check=True, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
        widths(Path(temp), "human-baseline", args.resamples, args.seed)


if __name__ == "__main__":
    main()
