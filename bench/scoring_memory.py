"""The scoring step's peak memory (all its processes summed, as Slurm counts a job) for 1..N models on a real data
set, next to what `scoring.resources.scoring_requirements` asks for.

    python -m bench.scoring_memory --data /work/shared/data/quic360/test.tsv --models 1 8 16 [--spice-jars DIR]

Each synthetic model k captions sample i with a human caption of sample i+k+1 plus one word (a real caption's length
and vocabulary, and distinct texts per model as real models have), written as `<model>_predictions.jsonl`; then
`python -m scoring score` runs them all in one process under bench.peak_memory, exactly as the scoring job of an
ablation does (same arguments: --data, --report). Prints one row per model count.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.peak_memory import measure


def write_models(data: Path, count: int, folder: Path) -> list[Path]:
    from contract import PREDICTIONS_JSONL, PredictionRecord, load_dataset

    samples = load_dataset(data).samples
    paths = []
    for k in range(count):
        name = f"synthetic-{k}"
        path = folder / PREDICTIONS_JSONL.format(model=name)
        with open(path, "w", encoding="utf-8") as handle:
            for i, sample in enumerate(samples):
                donor = samples[(i + k + 1) % len(samples)]
                record = PredictionRecord(
                    sample_id=sample.sample_id,
                    image=sample.image,
                    query=sample.query,
                    # A word no reference has: no prediction can be all-matched by METEOR (docs/SCORING.md)
                    prediction=donor.references[k % len(donor.references)] + " synthetic",
                    references=sample.references,
                    model_name=name,
                )
                handle.write(record.model_dump_json() + "\n")
        paths.append(path)
    return paths


def run(data: Path, counts: list[int], spice_jars: Path | None, report: bool) -> list[dict[str, object]]:
    from contract import load_dataset
    from scoring.resources import scoring_requirements

    samples = len(load_dataset(data).samples)
    rows = []
    for count in counts:
        with tempfile.TemporaryDirectory(prefix="bench_scoring_memory_") as temp:
            folder = Path(temp)
            paths = write_models(data, count, folder)
            command = [sys.executable, "-m", "scoring", "score", "--predictions", *map(str, paths)]
            command += ["--output-dir", str(folder), "--data", str(data)]
            command += ["--report"] if report else []
            command += ["--spice-jars", str(spice_jars)] if spice_jars else []
            result = measure(command)
            asked = scoring_requirements(num_models=count, num_samples=samples)
            per_process = result["peak_per_process_bytes"]
            python = max((v for k, v in per_process.items() if k.startswith("python")), default=0)  # type: ignore[union-attr]
            rows.append(
                {
                    "models": count,
                    "samples": samples,
                    "exit_code": result["exit_code"],
                    "wall_s": result["wall_s"],
                    "peak_total_mib": round(int(result["peak_total_bytes"]) / 2**20),  # type: ignore[call-overload]
                    "peak_python_mib": round(python / 2**20),
                    "peak_per_process_mib": {k: round(v / 2**20) for k, v in per_process.items() if v >= 2**22},  # type: ignore[union-attr]
                    "requested_mib": asked.memory_mib,
                    "requested_without_spice_mib": scoring_requirements(
                        num_models=count, num_samples=samples, metrics=("meteor",)
                    ).memory_mib,
                    "requested_cpus": asked.cpus,
                }
            )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scoring_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="data file (e.g. the QuIC-360 test split)")
    parser.add_argument("--models", type=int, nargs="+", default=[1, 8, 16], help="model counts to score")
    parser.add_argument("--spice-jars", type=Path, help="CoreNLP jars: SPICE runs too")
    parser.add_argument("--no-report", action="store_true", help="skip --report (the ablation's default builds it)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = run(args.data, args.models, args.spice_jars, not args.no_report)
    print("| models x samples | peak, all processes | of which Python | asked (with SPICE / without) |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['models']} x {row['samples']} | {row['peak_total_mib']} MiB | {row['peak_python_mib']} MiB | "
            f"{row['requested_mib']} / {row['requested_without_spice_mib']} MiB |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
