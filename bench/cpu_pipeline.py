"""Everything around the model, measured on this machine's CPU: can the pipeline keep a GPU fed?

    python -m bench.cpu_pipeline --out bench/out/cpu_pipeline.json

Measured side by side in one run, on synthetic 2:1 JPEG panoramas written to disk:

1. image decode + resize, images/s, for 2048x1024 and 4096x2048 JPEGs and each target side the families use:
   naive PIL (open, convert at full size, resize) vs the runner's path (runner.images.load_image: JPEG draft
   decoding at a reduced scale, one resize), single thread; and the runner's prefetch_batches with worker threads;
2. preprocessing per family: the full-size processor (published image sizes, bench/configs) on the image the
   runner hands it vs on the full 2048x1024 image (what the old way passed);
3. writing: the runner's PredictionWriter (one write + fsync per batch), records/s;
4. the runner end to end (runner.loop.run) on each family's tiny checkpoint: samples/s with the model
   negligible, i.e. the loop's own overhead ceiling.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from bench.fullsize import build_tiny_reference, full_size_processor, load_bench_config
from bench.gpu_bench import write_data_file
from bench.synthetic import write_panoramas
from contract import PredictionRecord, write_json_atomic
from runner.adapters import LoadedModel, adapter_for
from runner.images import ImageLimits, load_image, prefetch_batches
from runner.loop import DEFAULT_PROMPT_TEMPLATE, PredictionWriter, RunConfig, run
from runner.registry import MODELS, ModelSpec

PANORAMA_SIZES = ((2048, 1024), (4096, 2048))


def best_rate(count: int, action: Callable[[], object], repeats: int) -> float:
    """Items per second: the best of `repeats` timed runs (the machine is shared; the best is the least disturbed)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return count / min(times)


def naive_load(path: Path, max_side: int) -> Image.Image:
    """What the old workflow did: full decode, then a resize (here to the same target, so the work is comparable)."""
    image = Image.open(path).convert("RGB")
    scale = max_side / max(image.size)
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    return image


def family_sides() -> dict[int, list[str]]:
    """Each distinct max_image_side the catalogue sets, with the families that use it."""
    sides: dict[int, list[str]] = {}
    for family, side in sorted({(spec.family, spec.max_image_side) for spec in MODELS.values()}):
        sides.setdefault(side, []).append(family)
    return dict(sorted(sides.items()))


def decode_rates(paths: list[Path], side: int, repeats: int, workers: int) -> tuple[float, float, float]:
    """(naive, runner, runner with worker threads) images/s for one source size and one target side."""
    limits = ImageLimits(max_side=side)

    def naive() -> None:
        for path in paths:
            naive_load(path, side)

    def runner() -> None:
        for path in paths:
            load_image(str(path), limits)

    def threaded() -> None:
        batches = [paths[i : i + 4] for i in range(0, len(paths), 4)]
        for _ in prefetch_batches(batches, lambda p: load_image(str(p), limits), num_workers=workers):
            pass

    return tuple(best_rate(len(paths), action, repeats) for action in (naive, runner, threaded))  # type: ignore[return-value]


def measure_decode(images: dict[tuple[int, int], list[Path]], repeats: int, workers: int) -> list[dict[str, Any]]:
    rows = []
    for (width, height), paths in images.items():
        for side, families in family_sides().items():
            naive, runner, pooled = decode_rates(paths, side, repeats, workers)
            rows.append(
                {
                    "source": f"{width}x{height} JPEG",
                    "max_side": side,
                    "families": families,
                    "naive_images_per_s": round(naive, 1),
                    "runner_images_per_s": round(runner, 1),
                    f"runner_{workers}_workers_images_per_s": round(pooled, 1),
                    "ratio_runner_vs_naive": round(runner / naive, 2),
                }
            )
    return rows


def measure_preprocessing(
    specs: list[ModelSpec], image_path: Path, batch: int, repeats: int, tiny_root: Path
) -> list[dict[str, Any]]:
    """Full-size processor calls (published sizes) for one batch: runner-sized input vs full-size input."""
    import torch

    rows = []
    for spec in specs:
        tiny_dir = build_tiny_reference(spec.name, tiny_root / spec.name)
        processor = full_size_processor(load_bench_config(spec.name), tiny_dir)
        adapter_class = adapter_for(spec.adapter)
        # The tiny model stands in for the weights (preprocessing never runs them); the processor is full size.
        tiny = adapter_class.load(
            str(tiny_dir), revision=None, dtype=torch.float32, device=torch.device("cpu"), spec=spec
        )
        loaded = LoadedModel(model=tiny.model, processor=processor)
        adapter = adapter_class(spec, loaded, torch.device("cpu"), torch.float32)
        prompts = [adapter.build_prompt(DEFAULT_PROMPT_TEMPLATE.format(query="location"))] * batch
        full = [Image.open(image_path).convert("RGB")] * batch
        small = [load_image(str(image_path), ImageLimits(max_side=spec.max_image_side))] * batch
        on_small = best_rate(batch, partial(adapter.build_inputs, small, prompts), repeats)
        on_full = best_rate(batch, partial(adapter.build_inputs, full, prompts), repeats)
        tokens = int(adapter.build_inputs(small, prompts)["input_ids"].shape[1])
        rows.append(
            {
                "model": spec.name,
                "family": spec.family,
                "runner_input_size": list(small[0].size),
                "prompt_tokens": tokens,
                "runner_samples_per_s": round(on_small, 1),
                "full_size_input_samples_per_s": round(on_full, 1),
                "ratio": round(on_small / on_full, 2),
            }
        )
    return rows


def measure_writing(folder: Path, batches: int, batch_size: int) -> dict[str, Any]:
    record = PredictionRecord(
        sample_id="0123456789abcdef",
        image="images/pano.jpg",
        query="location",
        prediction="A wide view of a sunny beach with blue sky, green trees and a red house near the road. " * 2,
        references=["A beach with a red house near the road."] * 5,
        model_name="bench",
        prompt=DEFAULT_PROMPT_TEMPLATE.format(query="location"),
    )
    path = folder / "write_bench.jsonl"
    writer = PredictionWriter(path)
    started = time.perf_counter()
    for _ in range(batches):
        writer.write_batch([record] * batch_size)
    elapsed = time.perf_counter() - started
    writer.close()
    return {
        "batch_size": batch_size,
        "batches": batches,
        "records_per_s": round(batches * batch_size / elapsed, 1),
        "ms_per_batch": round(1000 * elapsed / batches, 2),
        "bytes": path.stat().st_size,
    }


def measure_tiny_runner(
    specs: list[ModelSpec], images: list[Path], num_samples: int, batch_size: int, work: Path, tiny_root: Path
) -> list[dict[str, Any]]:
    rows = []
    data_file = write_data_file(work / "tiny_data.csv", images, num_samples)
    for spec in specs:
        tiny_dir = tiny_root / spec.name
        if not tiny_dir.is_dir():
            build_tiny_reference(spec.name, tiny_dir)
        config = RunConfig(
            model_name=spec.name, data_file=data_file, output_dir=work / "tiny_runs" / spec.name,
            model_path=tiny_dir, batch_size=batch_size, max_new_tokens=8, min_new_tokens=8, device="cpu",
            dtype="float32", num_workers=2, overwrite=True, progress="none",
        )  # fmt: skip
        started = time.perf_counter()
        result = run(config, log=lambda line: None)
        wall = time.perf_counter() - started
        rows.append(
            {
                "model": spec.name,
                "samples": result.num_written,
                "errors": result.num_errors,
                "wall_s_including_load": round(wall, 2),
                "samples_per_s_loop": result.samples_per_second,
            }
        )
    return rows


def print_report(report: dict[str, Any], workers: int) -> None:
    print(f"machine: {report['machine']}")
    print("\nimage decode + resize (images/s, best of repeats)")
    print(f"{'source':<16} {'max side':>8} {'naive PIL':>10} {'runner':>8} {f'runner x{workers}':>10} {'ratio':>6}")
    for row in report["decode"]:
        print(
            f"{row['source']:<16} {row['max_side']:>8} {row['naive_images_per_s']:>10} {row['runner_images_per_s']:>8} "
            f"{row[f'runner_{workers}_workers_images_per_s']:>10} {row['ratio_runner_vs_naive']:>6}"
        )
    print("\npreprocessing (full-size processors; samples/s, one thread)")
    print(f"{'model':<24} {'runner input':>12} {'tokens':>7} {'runner':>8} {'full-size':>10} {'ratio':>6}")
    for row in report["preprocessing"]:
        size = "x".join(str(v) for v in row["runner_input_size"])
        print(
            f"{row['model']:<24} {size:>12} {row['prompt_tokens']:>7} {row['runner_samples_per_s']:>8} "
            f"{row['full_size_input_samples_per_s']:>10} {row['ratio']:>6}"
        )
    writing = report["writing"]
    print(f"\nwriting: {writing['records_per_s']} records/s ({writing['ms_per_batch']} ms per batch of "
          f"{writing['batch_size']}, write + fsync)")  # fmt: skip
    print("\nrunner end to end on tiny checkpoints (model cost negligible)")
    for row in report["tiny_runner"]:
        print(f"{row['model']:<24} {row['samples_per_s_loop']:>8} samples/s  ({row['samples']} samples, "
              f"{row['wall_s_including_load']} s with load)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=6, help="panoramas per size (default 6)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, best kept (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="image worker threads (default 2: this machine)")
    parser.add_argument("--batch", type=int, default=8, help="preprocessing batch (default 8)")
    parser.add_argument("--tiny-samples", type=int, default=16, help="samples per tiny runner run (default 16)")
    parser.add_argument("--families", nargs="*", help="families or model names (default: all 8 models)")
    parser.add_argument("--skip-4k", action="store_true", help="only 2048x1024 panoramas (faster)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/cpu_pipeline.json"), help="JSON results file")
    args = parser.parse_args(argv)
    for key in ("images", "repeats", "workers", "batch", "tiny_samples"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    from bench.gpu_bench import select_models

    specs = select_models(args.families)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "cpu_pipeline",
        "command": " ".join(["python -m bench.cpu_pipeline", *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU; load average at start "
        f"{os.getloadavg()[0]:.1f}",
    }
    sizes = PANORAMA_SIZES[:1] if args.skip_4k else PANORAMA_SIZES
    with tempfile.TemporaryDirectory(prefix="cpu_pipeline_") as temp:
        work = Path(temp)
        images = {size: write_panoramas(work / "images", args.images, *size) for size in sizes}
        report["decode"] = measure_decode(images, args.repeats, args.workers)
        tiny_root = work / "tiny"
        report["preprocessing"] = measure_preprocessing(specs, images[sizes[0]][0], args.batch, args.repeats,
                                                        tiny_root)  # fmt: skip
        report["writing"] = measure_writing(work, batches=50, batch_size=32)
        report["tiny_runner"] = measure_tiny_runner(specs, images[sizes[0]], args.tiny_samples, 8, work, tiny_root)
    report["total_s"] = round(time.perf_counter() - started, 1)
    report["load_average_at_end"] = round(os.getloadavg()[0], 1)
    write_json_atomic(args.out, report)
    print_report(report, args.workers)
    print(f"\ntotal {report['total_s']} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
