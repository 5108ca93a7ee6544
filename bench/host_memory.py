"""The runner's host memory (RAM of the node, not the GPU), measured in the parts runner.memory.host_memory adds up.

    python -m bench.host_memory inputs [--models ...]    # per sample: decoded panorama, processor output
    python -m bench.host_memory runtime [--models ...]   # a whole runner on a tiny checkpoint
    python -m bench.host_memory load --models internvl2-2b [--work-dir DIR]   # a full-size checkpoint, CPU
    python -m bench.host_memory project [--models ...]   # the real checkpoints on a GPU, as a Slurm task asks

inputs: each model's full-size processor (published image sizes, bench/configs) on a 2048x1024 panorama downscaled
as the runner does; the bytes of the decoded image and of every tensor the processor returns, next to
runner.memory's per-sample figure. runtime: `python -m runner` on the tiny checkpoint (CPU, 8 samples), its peak
resident memory (bench.peak_memory) next to runner.memory's runtime figure. load: a full-size random bf16 checkpoint
written once, then loaded in a fresh process through the runner's own load path (runner.adapters) and every weight
read, as a first batch would; the peak next to the checkpoint's size and runner.memory's estimate. project: what a
GPU runner task of each real model asks for (runner.memory.host_memory) on 2048x1024 panoramas at --batch-size auto's
cap, its weight files taken as the exact parameter count (bench.fullsize, the published config) in bf16; a checkpoint
published in float32 has files twice that size, which the estimate reads from the real files.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.peak_memory import measure

MIB = 1 << 20


def inputs(names: list[str]) -> list[dict[str, Any]]:
    import torch

    from bench.fullsize import build_tiny_reference, full_size_processor, load_bench_config
    from bench.synthetic import write_panoramas
    from runner.adapters import LoadedModel, open_adapter
    from runner.images import ImageLimits, load_image
    from runner.loop import DEFAULT_PROMPT_TEMPLATE
    from runner.memory import input_bytes_per_sample
    from runner.registry import get_model

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_host_") as folder:
        panorama = write_panoramas(Path(folder), 1, 2048, 1024)[0]
        for name in names:
            spec = get_model(name)
            tiny_dir = build_tiny_reference(name, Path(folder) / name)
            tiny = open_adapter(spec, str(tiny_dir), device=torch.device("cpu"), dtype=torch.float32)
            loaded = LoadedModel(model=tiny.model, processor=full_size_processor(load_bench_config(name), tiny_dir))
            adapter = type(tiny)(spec, loaded, torch.device("cpu"), torch.float32)
            image = load_image(str(panorama), ImageLimits(max_side=spec.max_image_side, max_pixels=spec.max_pixels))
            prompt = adapter.build_prompt(DEFAULT_PROMPT_TEMPLATE.format(query="location"))
            prepared = adapter.preprocess([image], [prompt])
            tensors = {key: value for key, value in prepared.items() if isinstance(value, torch.Tensor)}
            prepared_bytes = sum(value.nelement() * value.element_size() for value in tensors.values())
            decoded = image.width * image.height * len(image.getbands())
            rows.append(
                {
                    "model": name,
                    "decoded": f"{image.width}x{image.height}",
                    "decoded_bytes": decoded,
                    "prepared_bytes": prepared_bytes,
                    "prepared": {key: f"{tuple(value.shape)} {value.dtype}" for key, value in tensors.items()},
                    "prepared_bytes_per_pixel": round(prepared_bytes / (image.width * image.height), 2),
                    "estimate_bytes": input_bytes_per_sample(image.width * image.height),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def runtime(names: list[str]) -> list[dict[str, Any]]:
    from bench.fullsize import build_tiny_reference
    from bench.synthetic import write_panoramas
    from runner.memory import RUNTIME_BYTES

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_host_") as temp:
        folder = Path(temp)
        panoramas = write_panoramas(folder, 4, 2048, 1024)
        data = folder / "data.csv"
        lines = ["url,query,annotation"]
        lines += [f"{path.name},{query},a caption" for path in panoramas for query in ("location", "people")]
        data.write_text("\n".join(lines) + "\n", encoding="utf-8")
        for name in names:
            checkpoint = build_tiny_reference(name, folder / name)
            command = [sys.executable, "-m", "runner", "--model", name, "--model-path", str(checkpoint)]
            command += ["--data", str(data), "--output-dir", str(folder / f"out-{name}"), "--device", "cpu"]
            command += ["--batch-size", "4", "--max-new-tokens", "8", "--progress", "none"]
            result = measure(command)
            rows.append(
                {
                    "model": name,
                    "exit_code": result["exit_code"],
                    "peak_bytes": result["peak_total_bytes"],
                    "runtime_figure_bytes": RUNTIME_BYTES,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def load(names: list[str], work_dir: Path | None) -> list[dict[str, Any]]:
    import gc

    import torch

    from bench.fullsize import (
        build_full_model,
        build_tiny_reference,
        full_size_config,
        full_size_processor,
        load_bench_config,
    )
    from runner.memory import checkpoint_size, host_memory

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_host_load_", dir=work_dir) as temp:
        for name in names:
            folder = Path(temp) / name
            tiny_dir = build_tiny_reference(name, Path(temp) / f"{name}-tiny")
            bench = load_bench_config(name)
            model = build_full_model(full_size_config(bench, tiny_dir), bench, torch.device("cpu"), torch.bfloat16)
            model.save_pretrained(folder)
            full_size_processor(bench, tiny_dir).save_pretrained(folder)
            del model
            gc.collect()
            size = checkpoint_size(folder)
            assert size is not None
            command = [sys.executable, "-m", "bench.host_memory", "_load", name, str(folder)]
            result = measure(command)
            estimate = host_memory(size, device="cpu", dtype="bfloat16", batch_size=1, pixels=0)
            rows.append(
                {
                    "model": name,
                    "checkpoint_bytes": size.file_bytes,
                    "parameters": size.parameters,
                    "exit_code": result["exit_code"],
                    "peak_bytes": result["peak_total_bytes"],
                    "estimate_cpu_bf16_bytes": estimate.memory_bytes,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def project(names: list[str]) -> list[dict[str, Any]]:
    from bench.fullsize import count_parameters, load_bench_config
    from runner.loop import AUTO_BATCH_MAX, RunConfig
    from runner.memory import CheckpointSize, host_memory, image_pixels
    from runner.registry import get_model

    rows = []
    for name in names:
        spec = get_model(name)
        parameters = count_parameters(load_bench_config(name)).total
        weights = CheckpointSize(file_bytes=2 * parameters, parameters=parameters, files=1)
        pixels = image_pixels([(2048, 1024)], spec.max_image_side, spec.max_pixels)
        row: dict[str, Any] = {"model": name, "parameters": parameters, "bf16_bytes": 2 * parameters}
        for batch in (1, AUTO_BATCH_MAX):
            estimate = host_memory(weights, device="cuda", dtype=spec.dtype, batch_size=batch, pixels=pixels,
                                   preprocess_workers=RunConfig.preprocess_workers)  # fmt: skip
            row[f"batch_{batch}"] = {"bytes": estimate.memory_bytes, "parts": dict(estimate.parts)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _load_and_touch(name: str, folder: str) -> None:
    """The runner's load path, then one read of every weight page (what the first forward pass does)."""
    import torch

    from runner.adapters import open_adapter
    from runner.registry import get_model

    adapter = open_adapter(get_model(name), folder, device=torch.device("cpu"), dtype=torch.bfloat16)
    with torch.no_grad():
        for parameter in adapter.model.parameters():
            flat = parameter.detach().reshape(-1)
            float(flat[:: max(1, 4096 // flat.element_size())].float().sum())


def main(argv: list[str] | None = None) -> int:
    from runner.registry import MODELS

    parser = argparse.ArgumentParser(prog="python -m bench.host_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("inputs", "runtime", "load", "project", "_load"))
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--work-dir", type=Path, help="load: where the full-size checkpoint is written")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.part == "_load":
        _load_and_touch(*args.rest)
        return 0
    if args.part == "inputs":
        rows = inputs(args.models)
    elif args.part == "runtime":
        rows = runtime(args.models)
    elif args.part == "project":
        rows = project(args.models)
    else:
        rows = load(args.models, args.work_dir)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
