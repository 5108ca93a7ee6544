"""`--shards 2` vs `--shards 1` through the slurm engine, measured side by side on a running cluster.

    python tests/slurm_cluster.py start /tmp/cluster          # or a real cluster: SLURM_CONF set
    SLURM_CONF=/tmp/cluster/slurm.conf python -m bench.slurm_shards --samples 96

One tiny random-weight checkpoint (CPU tasks: `--slurm-gpus 0`, one CPU each), the same data, shard counts 1 and 2,
each a whole `python -m orchestrator ablation --engine slurm` (submit, the tasks, scoring) timed from the outside,
and the runner's own generate time read from the run manifests. On a 2-CPU node two shards can at best halve
the generation; loading, process start-up and the scoring job do not shrink.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.gpu_bench import write_data_file
from bench.synthetic import QUERIES, write_panoramas


def run(args: argparse.Namespace, data: Path, checkpoints: Path, out: Path, shards: int) -> dict[str, float]:
    command = [
        sys.executable, "-m", "orchestrator", "ablation", "--engine", "slurm", "--container-runtime", "none",
        "--models", args.model, "--data", str(data), "--model-path-root", str(checkpoints), "--output-dir", str(out),
        "--batch-size", "4", "--max-new-tokens", str(args.new_tokens), "--shards", str(shards), "--slurm-gpus", "0",
        "--slurm-arg", "mem=3G", "--no-report",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"shards {shards} failed:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    run_file = out / f"{args.model}_run.json"
    manifest = json.loads(run_file.read_text())
    timings = manifest["timings"]
    per_shard = [shard["timings"].get("generate_s") for shard in manifest.get("shards") or []]
    return {
        "wall_s": round(wall, 1),
        "generate_s_summed": timings["generate_s"],
        "generate_s_per_shard": per_shard or [timings["generate_s"]],
        "load_s_max": timings["load_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slurm_shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llava-1.5-7b")
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    if not os.environ.get("SLURM_CONF"):
        raise SystemExit("set SLURM_CONF (python tests/slurm_cluster.py start DIR prints it)")
    from runner.tiny import build_tiny

    with tempfile.TemporaryDirectory(prefix="slurm_shards_", dir=os.environ.get("BENCH_SHARED_DIR")) as folder:
        root = Path(folder)
        build_tiny(args.model, str(root / "models" / args.model))
        images = write_panoramas(root / "images", -(-args.samples // len(QUERIES)), 512, 256)
        data = write_data_file(root / "data" / "data.csv", images, args.samples)
        results = {shards: run(args, data, root / "models", root / f"out-{shards}", shards) for shards in (1, 2)}
    print(f"{args.model}, {args.samples} samples, {args.new_tokens} new tokens, CPU tasks, one CPU each")
    for shards, result in results.items():
        print(f"  --shards {shards}: {result['wall_s']} s wall (load {result['load_s_max']} s, generate summed "
              f"{result['generate_s_summed']} s: {result['generate_s_per_shard']})")  # fmt: skip
    print(f"  speed-up of 2 shards: x{results[1]['wall_s'] / results[2]['wall_s']:.2f} (whole ablation, wall)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
