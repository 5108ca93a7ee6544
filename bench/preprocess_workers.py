"""Preprocessing throughput of the runner's processor workers, one thread (the old way) vs several, side by side.

    python -m bench.preprocess_workers --out bench/out/preprocess_workers.json

For the families whose processors are slowest per sample (InternVL2 tiling, Qwen2.5-VL patching, Gemma 3's 896 px
SigLIP input), the FULL-SIZE processor (published image sizes, bench/configs) prepares batches of runner-sized
2048x1024 panoramas through runner.loop._preprocess_ahead, exactly as a run feeds the GPU; no model runs, so the
number is the rate preprocessing could feed a GPU at. The machine's cores bound the gain: say which machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.fullsize import build_tiny_reference, full_size_processor, load_bench_config
from bench.synthetic import write_panoramas
from contract import write_json_atomic

SLOW_FAMILIES = ("internvl2-2b", "qwen2.5-vl-3b", "gemma-3-4b")


def rate(adapter: Any, batches: list[tuple[list[Any], list[Any]]], workers: int) -> float:
    """Samples/s through _preprocess_ahead with `workers` processor threads (every Future waited for, in order)."""
    from runner.loop import _preprocess_ahead

    started = time.perf_counter()
    count = 0
    for _batch, _failed, ready, prepared in _preprocess_ahead(adapter, adapter.spec, iter(batches), workers):
        prepared.result()
        count += len(ready)
    return count / (time.perf_counter() - started)


def measure(name: str, images: list[Path], batch: int, batches: int, worker_counts: list[int]) -> dict[str, Any]:
    import torch

    from runner.adapters import LoadedModel, open_adapter
    from runner.images import ImageLimits, load_image
    from runner.loop import DEFAULT_PROMPT_TEMPLATE, PendingSample
    from runner.registry import get_model

    spec = get_model(name)
    with tempfile.TemporaryDirectory(prefix="bench_tiny_") as folder:
        tiny_dir = build_tiny_reference(name, Path(folder) / name)
        tiny = open_adapter(spec, str(tiny_dir), device=torch.device("cpu"), dtype=torch.float32)
        processor = full_size_processor(load_bench_config(name), tiny_dir)
    adapter = type(tiny)(spec, LoadedModel(model=tiny.model, processor=processor), torch.device("cpu"), torch.float32)
    loaded = [load_image(str(path), ImageLimits(max_side=spec.max_image_side)) for path in images]
    prompt = adapter.build_prompt(DEFAULT_PROMPT_TEMPLATE.format(query="location"))
    work = []
    for index in range(batches):
        chosen = [loaded[(index * batch + k) % len(loaded)] for k in range(batch)]
        items = [PendingSample(sample=None, prompt=prompt, order=k) for k in range(batch)]  # type: ignore[arg-type]
        work.append((items, chosen))
    rate(adapter, work[:1], 1)  # warm-up
    rates = {workers: round(rate(adapter, work, workers), 2) for workers in worker_counts}
    return {
        "model": name,
        "input_size": list(loaded[0].size),
        "samples_per_s": {str(w): r for w, r in rates.items()},
        "ratio_vs_one_thread": {str(w): round(r / rates[worker_counts[0]], 2) for w, r in rates.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.preprocess_workers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(SLOW_FAMILIES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=Path("bench/out/preprocess_workers.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_panoramas_") as folder:
        images = write_panoramas(Path(folder), 4, 2048, 1024)
        rows = [measure(name, images, args.batch, args.batches, args.workers) for name in args.models]
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "batch": args.batch,
        "batches": args.batches,
        "rows": rows,
    }
    write_json_atomic(args.out, report)
    for row in rows:
        shown = "  ".join(f"{w} thread(s) {r} samples/s" for w, r in row["samples_per_s"].items())
        best = max(row["ratio_vs_one_thread"].values())
        print(f"{row['model']:<16} {shown}  (best: x{best} the one-thread rate)")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
