"""Image reuse on the CPU: samples/s and vision-tower runs with `--reuse-images off` and `on`, side by side.

    python -m bench.image_reuse [--images 2] [--families qwen2.5-vl-3b llava-1.6-mistral-7b internvl2-2b gemma-3-4b]
        [--layers 1] [--dtype bfloat16] [--max-new-tokens 8] [--batch-size 8] [--out bench/out/image_reuse.json]
    python -m bench.image_reuse --tiny --images 2 --families llava-1.5-7b      # the tiny checkpoints: a quick check

Data: QuIC-360's test split (the real text at /work/shared/data/quic360/test.tsv: 1,211 (image, query) samples over
393 panoramas). `--images N` takes N of its panoramas, evenly spaced in file order, with ALL their queries, so the
queries per image are the data's; each panorama is a synthetic 2048x1024 JPEG (Flickr's `_k` size, the split's
most common explicit one; every family downscales to at most 1792 px before its processor, so a larger source
would only cost decoding). The data file lists the rows in QuIC-360's order.

Models: the published configs (bench/configs) at full width, vocabulary and image geometry (the real number of
patches, tiles and image tokens), with `--layers` layers per stack (bench.gpu_bench --shallow: vision tower,
language model), random weights, on the CPU in `--dtype`. Per model, on the same weights and data, one after the
other in this process: a warm-up (1 sample, 1 token), then `runner.loop.run` with reuse off, then with reuse on.
Measured per run: samples/s over generation time (the manifest's), wall and CPU time (the process's, all threads:
steadier than wall time on a shared machine), the time spent inside the vision-tower call (timed around the
architecture's image-feature call), the tower's runs (`image_encodings`), and whether the predictions are identical.

The stacks have 1-2 layers, not the real 24-36, and the CPU does every step at its compute speed, so the share of
time the vision tower takes here is NOT the share it takes on a GPU (where decoding is bound by host overhead);
bench.projection --reuse-images estimates the GPU side.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.gpu_bench import build_model
from bench.synthetic import write_panorama_jpeg
from contract import PredictionRecord, RunManifest, load_dataset, read_json, read_jsonl, write_json_atomic
from runner.adapters import LoadedModel, adapter_for
from runner.loop import RunConfig, cpu_model_name, run
from runner.registry import ModelSpec, get_model

QUIC360_TEST = Path("/work/shared/data/quic360/test.tsv")
FAMILIES = ("qwen2.5-vl-3b", "llava-1.6-mistral-7b", "internvl2-2b", "gemma-3-4b")
PANORAMA_SIZE = (2048, 1024)


@dataclass
class Structure:
    images: int  # panoramas in the split
    samples: int  # (image, query) samples in the split
    chosen: list[tuple[str, list[str]]]  # the chosen panoramas (url) with their queries, in file order


def quic360_structure(path: Path, images: int) -> Structure:
    """`images` panoramas of the split, evenly spaced in file order, each with all its queries."""
    samples = load_dataset(path).samples
    queries: dict[str, list[str]] = {}
    for sample in samples:
        queries.setdefault(sample.image, []).append(sample.query)
    urls = list(queries)
    if not 1 <= images <= len(urls):
        raise SystemExit(f"--images must be between 1 and {len(urls)}, got {images}")
    step = len(urls) / images
    chosen = [urls[int(step * index + step / 2)] for index in range(images)]
    return Structure(images=len(urls), samples=len(samples), chosen=[(url, queries[url]) for url in chosen])


def write_data(folder: Path, structure: Structure) -> Path:
    """The chosen panoramas as synthetic JPEGs and a data CSV of their samples in QuIC-360's row order."""
    rows = []
    for index, (_, queries) in enumerate(structure.chosen):
        image = write_panorama_jpeg(folder / "images" / f"pano_{index:03d}.jpg", *PANORAMA_SIZE, seed=index)
        rows.extend((image.relative_to(folder).as_posix(), query) for query in queries)
    data_file = folder / "data.csv"
    with open(data_file, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "query", "annotation"])
        writer.writerows((image, query, "a synthetic reference caption.") for image, query in rows)
    return data_file


@dataclass
class TowerClock:
    seconds: float = 0.0  # wall
    cpu_seconds: float = 0.0  # the process's CPU time (all threads)
    calls: int = 0


def preloaded_adapter(spec: ModelSpec, loaded: LoadedModel) -> type[Any]:
    class FromMemory(adapter_for(spec.adapter)):  # type: ignore[misc]
        @classmethod
        def load(cls, source: str, **kwargs: Any) -> LoadedModel:
            return loaded

    return FromMemory


def time_the_tower(adapter_class: type[Any], spec: ModelSpec, loaded: LoadedModel, clock: TowerClock) -> None:
    """Time every call of the architecture's image-feature method (what reuse saves), inside the reuse wrapper."""
    adapter = adapter_class(spec, loaded, torch.device("cpu"), loaded.model.dtype)
    slot = adapter.image_reuse.slot
    if slot is None:
        raise SystemExit(f"{spec.name}: image reuse is not supported ({adapter.image_reuse.reason})")
    original = slot.original

    def timed(*args: Any, **kwargs: Any) -> Any:
        started, cpu = time.perf_counter(), time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            clock.seconds += time.perf_counter() - started
            clock.cpu_seconds += time.process_time() - cpu
            clock.calls += 1

    slot.original = timed


def one_run(spec: ModelSpec, adapter_class: type[Any], data: Path, out: Path, reuse: str, args: argparse.Namespace,
            clock: TowerClock) -> dict[str, Any]:  # fmt: skip
    config = RunConfig(
        model_name=spec.name, data_file=data, output_dir=out, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens, device="cpu", dtype=args.dtype,
        num_workers=2, overwrite=True, progress="none", reuse_images=reuse,
    )  # fmt: skip
    clock.seconds, clock.cpu_seconds, clock.calls = 0.0, 0.0, 0
    started, cpu = time.perf_counter(), time.process_time()
    result = run(config, log=lambda line: None, adapter_class=adapter_class)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    if result.status != "completed" or result.num_errors:
        raise RuntimeError(f"{spec.name} reuse {reuse}: {result.status}: {result.message}")
    manifest = read_json(Path(result.manifest_file), RunManifest)
    reuse_record = manifest.image_reuse or {}
    predictions = {r.sample_id: r.prediction for r in read_jsonl(Path(result.predictions_file), PredictionRecord)}
    generate_s = manifest.timings["generate_s"]
    return {
        "reuse_images": reuse,
        "samples": result.num_written,
        "generate_s": generate_s,
        "samples_per_s": manifest.timings["samples_per_s"],
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "samples_per_cpu_s": round(result.num_written / cpu, 4) if cpu else None,
        "vision_s": round(clock.seconds, 2),
        "vision_cpu_s": round(clock.cpu_seconds, 2),
        "vision_share_of_cpu": round(clock.cpu_seconds / cpu, 3) if cpu else None,
        "image_encodings": reuse_record.get("image_encodings"),
        "distinct_images": reuse_record.get("distinct_images"),
        "cache_hits": reuse_record.get("cache_hits"),
        "batch_size": manifest.batch_size_used,
        "predictions": predictions,
    }


def bench_model(spec: ModelSpec, data: Path, warm: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    build_args = argparse.Namespace(tiny=args.tiny, shallow=not args.tiny, shallow_layers=args.layers)
    loaded = build_model(spec, build_args, torch.device("cpu"), getattr(torch, args.dtype))
    built_s = time.perf_counter() - started
    adapter_class = preloaded_adapter(spec, loaded)
    clock = TowerClock()
    time_the_tower(adapter_class, spec, loaded, clock)
    one_run(spec, adapter_class, warm, work / "warm", "off", argparse.Namespace(**{**vars(args), "max_new_tokens": 1}),
            clock)  # fmt: skip
    off = one_run(spec, adapter_class, data, work / "off", "off", args, clock)
    on = one_run(spec, adapter_class, data, work / "on", "on", args, clock)
    identical = off.pop("predictions") == on.pop("predictions")
    entry = {
        "model": spec.name,
        "build_s": round(built_s, 1),
        "off": off,
        "on": on,
        "identical_predictions": identical,
        "speedup": round(on["samples_per_s"] / off["samples_per_s"], 2) if off["samples_per_s"] else None,
        "speedup_cpu_time": round(off["cpu_s"] / on["cpu_s"], 2) if on["cpu_s"] else None,
    }
    del loaded, adapter_class
    gc.collect()
    return entry


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.image_reuse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=QUIC360_TEST, help="the QuIC-360 test split (url, query, ...)")
    parser.add_argument("--images", type=int, default=2, help="panoramas taken from the split, with all their queries")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), help="models (catalogue names)")
    parser.add_argument("--layers", type=int, default=1, help="layers per stack of the full-width models (1)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16", help="model dtype (bfloat16)")
    parser.add_argument("--tiny", action="store_true", help="the tiny checkpoints instead (a quick check)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="= min_new_tokens (8)")
    parser.add_argument("--batch-size", type=int, default=8, help="runner batch size (8, what auto picks on CPU)")
    parser.add_argument("--work-dir", type=Path, help="images, data, predictions (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/image_reuse.json"), help="JSON results file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_file():
        print(f"{args.data}: not found (the QuIC-360 test split text); pass --data", file=sys.stderr)
        return 2
    specs = [get_model(name) for name in args.families]
    structure = quic360_structure(args.data, args.images)
    report: dict[str, Any] = {
        "benchmark": "image_reuse",
        "command": " ".join(["python -m bench.image_reuse", *(argv if argv is not None else sys.argv[1:])]),
        "device": f"{cpu_model_name()}, torch threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, load average before {os.getloadavg()[0]:.1f}",
        "mode": "tiny checkpoints"
        if args.tiny
        else f"full widths and image geometry, {args.layers} layer(s) per stack (bench.gpu_bench --shallow), "
        f"{args.dtype}, CPU",
        "data": {
            "split_images": structure.images,
            "split_samples": structure.samples,
            "images": len(structure.chosen),
            "samples": sum(len(queries) for _, queries in structure.chosen),
            "queries_per_image": [len(queries) for _, queries in structure.chosen],
            "panorama_size": list(PANORAMA_SIZE),
        },
        "settings": {
            "max_new_tokens": args.max_new_tokens,
            "batch_size": args.batch_size,
            "layers": args.layers,
            "dtype": args.dtype,
            "tiny": args.tiny,
        },
        "models": [],
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="image_reuse_") as temp:
        work = args.work_dir or Path(temp)
        data = write_data(work / "data", structure)
        warm = work / "data" / "warm.csv"
        warm.write_text("".join(data.read_text(encoding="utf-8").splitlines(keepends=True)[:2]), encoding="utf-8")
        for spec in specs:
            print(f"[{time.perf_counter() - started:6.1f}s] {spec.name} ...", file=sys.stderr, flush=True)
            report["models"].append(bench_model(spec, data, warm, work / spec.name, args))
            report["total_s"] = round(time.perf_counter() - started, 1)
            report["load_average_after"] = round(os.getloadavg()[0], 1)
            write_json_atomic(args.out, report)
    print_table(report)
    return 0 if all(entry["identical_predictions"] for entry in report["models"]) else 1


def print_table(report: dict[str, Any]) -> None:
    data = report["data"]
    print(f"{data['samples']} samples over {data['images']} panoramas (QuIC-360 test: {data['split_samples']} over "
          f"{data['split_images']}); {report['device']}")  # fmt: skip
    print(f"{'model':<22} {'off s/s':>8} {'on s/s':>8} {'ratio':>6} {'CPU s off/on':>14} {'ratio':>6} "
          f"{'tower runs off/on':>18} {'tower CPU s off/on':>19} {'tower share off':>15} {'same':>5}")  # fmt: skip
    for entry in report["models"]:
        off, on = entry["off"], entry["on"]
        print(f"{entry['model']:<22} {off['samples_per_s']:>8.3f} {on['samples_per_s']:>8.3f} {entry['speedup']:>6} "
              f"{off['cpu_s']:>7}/{on['cpu_s']:<6} {entry['speedup_cpu_time']:>6} "
              f"{off['image_encodings']:>8}/{on['image_encodings']:<9} "
              f"{off['vision_cpu_s']:>9}/{on['vision_cpu_s']:<9} "
              f"{off['vision_share_of_cpu']:>15} {str(entry['identical_predictions']):>5}")  # fmt: skip
    print(f"total {report.get('total_s')} s")


if __name__ == "__main__":
    raise SystemExit(main())
