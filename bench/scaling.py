"""How an ablation spreads over a cluster, projected from measured rates (docs/SCALING.md).

    python -m bench.scaling --measured bench/measured/gpu_bench-h200-batch128.json

Per model: its runner samples/s measured on one H200 (bench/measured), its checkpoint load ESTIMATED as bf16 bytes
/ 2 GB/s + 10 s start-up (not measured on a GPU), paid again by EVERY shard. A (model, shard) task takes
load + samples_of_the_shard / rate; the tasks of all models are placed on G GPUs longest first (the order a
Slurm queue with free GPUs ends up close to). Printed: the makespan for each GPU count and shard count, and
how much of the GPU time is spent loading (the fixed cost that makes more shards useless).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
from pathlib import Path

LOAD_BYTES_PER_S = 2e9
STARTUP_S = 10.0


def model_tasks(measured: dict, samples: int, shards: int) -> list[tuple[float, float]]:
    """(task seconds, of which loading) for every (model, shard)."""
    tasks = []
    for entry in measured["models"]:
        rate = entry["runner"]["samples_per_s"]
        load = 2 * entry["parameters"]["total"] / LOAD_BYTES_PER_S + STARTUP_S
        per_shard = math.ceil(samples / shards)
        tasks += [(load + per_shard / rate, load)] * shards
    return tasks


def makespan(tasks: list[tuple[float, float]], gpus: int) -> float:
    """Longest-first list scheduling of the tasks on `gpus` identical GPUs."""
    finish = [0.0] * gpus
    heapq.heapify(finish)
    for seconds, _ in sorted(tasks, reverse=True):
        heapq.heappush(finish, heapq.heappop(finish) + seconds)
    return max(finish)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--measured", type=Path, default=Path("bench/measured/gpu_bench-h200-batch128.json"))
    parser.add_argument("--samples", type=int, default=1211, help="samples per model (QuIC-360 test: 1211)")
    parser.add_argument("--prompts", type=int, default=1, help="prompt templates (each one a full ablation)")
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    args = parser.parse_args(argv)
    measured = json.loads(args.measured.read_text())
    models = len(measured["models"])
    print(f"{models} models x {args.prompts} prompt(s) x {args.samples} samples; rates from {args.measured}")
    print(f"{'GPUs':>5} {'shards':>6} {'tasks':>6} {'makespan':>10} {'loading share':>14}")
    for gpus in args.gpus:
        for shards in args.shards:
            tasks = model_tasks(measured, args.samples, shards) * args.prompts
            if len(tasks) > 4 * gpus and shards > 1:
                continue  # far more tasks than GPUs: more shards only add loads
            total = sum(seconds for seconds, _ in tasks)
            loading = sum(load for _, load in tasks)
            span = makespan(tasks, gpus)
            print(f"{gpus:>5} {shards:>6} {len(tasks):>6} {span / 60:>8.1f} m {loading / total:>13.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
