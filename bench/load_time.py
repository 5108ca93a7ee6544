"""Checkpoint load time from local safetensors through the runner's own load path, per model, measured.

    python -m bench.load_time --models qwen2.5-vl-3b --device cpu --out bench/out/load_time.json

For each model: its published config (bench/configs) with random bf16 weights is saved once as a local safetensors
checkpoint (the layout a Hub download leaves), then loaded the way a run loads it (runner.adapters: the entry's
adapter, `from_pretrained(..., device_map=<device>)`: the weights go straight to the device), cold (the file's pages
dropped from the page cache where this process may, else noted) and warm. The projection in docs/PERFORMANCE.md
assumes 2 GB/s + 10 s per model; this measures it (every weight page is read before the clock stops: on the CPU
safetensors memory-maps the file). On a GPU host add `--device cuda`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def drop_page_cache(folder: Path) -> bool:
    """Evict the checkpoint's pages (posix_fadvise DONTNEED per file); True when the kernel accepted it."""
    ok = True
    for path in folder.rglob("*.safetensors"):
        with open(path, "rb") as handle:
            try:
                os.fsync(handle.fileno())
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                ok = False
    return ok


def measure(name: str, device: str, work: Path) -> dict[str, Any]:
    import torch

    from bench.fullsize import (
        build_full_model,
        build_tiny_reference,
        full_size_config,
        full_size_processor,
        load_bench_config,
    )
    from runner.adapters import open_adapter
    from runner.registry import get_model

    spec = get_model(name)
    folder = work / name
    tiny_dir = build_tiny_reference(name, work / f"{name}-tiny")
    bench = load_bench_config(name)
    started = time.perf_counter()
    model = build_full_model(full_size_config(bench, tiny_dir), bench, torch.device("cpu"), torch.bfloat16)
    model.save_pretrained(folder)
    full_size_processor(bench, tiny_dir).save_pretrained(folder)
    del model
    gc.collect()
    build_s = time.perf_counter() - started
    size = sum(path.stat().st_size for path in folder.rglob("*.safetensors"))
    rows: dict[str, Any] = {"model": name, "checkpoint_bytes": size, "build_and_save_s": round(build_s, 1)}
    for label in ("cold", "warm"):
        dropped = drop_page_cache(folder) if label == "cold" else None
        started = time.perf_counter()
        adapter = open_adapter(spec, str(folder), device=torch.device(device), dtype=torch.bfloat16)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        loaded = time.perf_counter() - started
        # On the CPU safetensors may leave the weights memory-mapped, read only when first used: touch every page
        # (one element per 4 KiB) so the figure includes reading them, as the first batch would.
        with torch.no_grad():
            for parameter in adapter.model.parameters():
                flat = parameter.detach().reshape(-1)
                step = max(1, 4096 // flat.element_size())
                float(flat[::step].float().sum())
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        rows[label] = {
            "from_pretrained_s": round(loaded, 2),
            "load_s": round(seconds, 2),
            "gb_per_s": round(size / seconds / 1e9, 2),
            "page_cache_dropped": dropped,
        }
        del adapter
        gc.collect()
    return rows


def main(argv: list[str] | None = None) -> int:
    import platform

    parser = argparse.ArgumentParser(prog="python -m bench.load_time", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["qwen2.5-vl-3b"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work-dir", type=Path, help="where the checkpoints are written (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/load_time.json"))
    args = parser.parse_args(argv)
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_load_", dir=args.work_dir) as folder:
        rows = [measure(name, args.device, Path(folder)) for name in args.models]
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "device": args.device, "models": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for row in rows:
        cold, warm = row["cold"], row["warm"]
        size = row["checkpoint_bytes"] / 1e9
        print(f"{row['model']}: {size:.2f} GB; cold {cold['load_s']} s (from_pretrained {cold['from_pretrained_s']} s) "
              f"= {cold['gb_per_s']} GB/s (page cache "
              f"dropped: {cold['page_cache_dropped']}), warm {warm['load_s']} s = {warm['gb_per_s']} GB/s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
