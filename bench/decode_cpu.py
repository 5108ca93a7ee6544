"""Eager vs compiled decoding (runner.decoding) on the CPU with the tiny checkpoints.

    python -m bench.decode_cpu [--families llava-1.5-7b qwen2.5-vl-3b gemma-3-4b] [--out bench/out/decode_cpu.json]

Per family (tiny random-weight checkpoint, float32, torch.compile with inductor + gcc, a fresh compile cache):

1. one batch of 8 samples (mixed image sizes and prompt lengths), `max_new_tokens` new tokens: the first compiled
   call (compilation included), then the median wall time per batch of `repeats` calls, eager and compiled, and
   the outputs compared token for token;
2. host reads of device values per generated token (`aten::_local_scalar_dense` in the profiler: each is a
   host-device sync on a GPU), eager vs compiled;
3. a run of 40 samples (4 panorama sizes x 10 queries of different lengths) through runner.loop.run with an
   adapter whose generate() goes through the decoder, batch size 8 (the loop sorts by image size and prompt
   length): the compilations the whole run causes, the buckets, and whether the 40 predictions equal those of the
   same run with eager decoding.

Tiny models on 2 shared CPU cores: the numbers say what compilation costs and how often it happens, and how much
host work per step is left; they say nothing about the speed on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.synthetic import write_panorama_jpeg
from contract import PredictionRecord, RunManifest, read_json, read_jsonl
from runner.adapters import open_adapter
from runner.adapters.base import GREEDY
from runner.decoding import make_decoder
from runner.loop import RunConfig, run
from runner.registry import get_model
from runner.tiny import build_tiny

QUERIES = (
    "location",
    "weather",
    "people",
    "the buildings near the water",
    "what the people on the street are doing",
    "cars",
    "the sky and the light",
    "the road",
    "is it day or night",
    "trees and plants in the park next to the road",
)
PANORAMA_SIZES = ((512, 256), (640, 320), (768, 384), (1024, 512))


def load_adapter(name: str, checkpoint: Path) -> Any:
    return open_adapter(get_model(name), str(checkpoint), device=torch.device("cpu"), dtype=torch.float32)


def kwargs_for(adapter: Any, max_new_tokens: int) -> dict[str, Any]:
    return {**GREEDY, "max_new_tokens": max_new_tokens, "pad_token_id": adapter.pad_token_id,
            **adapter.generation_kwargs()}  # fmt: skip


def one_batch(adapter: Any, size: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    heights = [96 + 32 * (i % 4) for i in range(size)]
    images = [Image.fromarray(rng.integers(0, 255, (h, 2 * h, 3), dtype=np.uint8)) for h in heights]
    prompts = [adapter.build_prompt(QUERIES[i % len(QUERIES)]) for i in range(size)]
    return adapter.to_device(adapter.preprocess(images, prompts))


def host_reads(call: Any) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    return sum(event.count for event in prof.key_averages() if event.key == "aten::_local_scalar_dense")


def bench_family(name: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    checkpoint = work / "ckpt" / name
    build_tiny(name, str(checkpoint))
    adapter = load_adapter(name, checkpoint)
    decoder = make_decoder("compiled", cache_dir=work / f"compile-cache-{name}", log=lambda line: None)
    inputs = one_batch(adapter, args.batch_size)
    kwargs = kwargs_for(adapter, args.max_new_tokens)
    entry: dict[str, Any] = {"model": name, "batch": args.batch_size, "prompt_tokens": inputs["input_ids"].shape[1]}
    with torch.inference_mode():
        eager_ids = adapter.model.generate(**inputs, **kwargs)
        started = time.perf_counter()
        compiled_ids = decoder.generate(adapter.model, inputs, **kwargs)
        entry["first_compiled_call_s"] = round(time.perf_counter() - started, 2)
        entry["identical"] = bool(compiled_ids.shape == eager_ids.shape and torch.equal(compiled_ids, eager_ids))
        entry["new_tokens"] = int(eager_ids.shape[1] - (inputs["input_ids"].shape[1] if adapter.decoder_only else 0))
        for label, call in (
            ("eager", lambda: adapter.model.generate(**inputs, **kwargs)),
            ("compiled", lambda: decoder.generate(adapter.model, inputs, **kwargs)),
        ):
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                call()
                times.append(time.perf_counter() - started)
            entry[f"{label}_batch_s"] = round(statistics.median(times), 4)
            entry[f"{label}_host_reads_per_token"] = round(host_reads(call) / entry["new_tokens"], 2)
    entry["single_batch_report"] = decoder.report()

    # A run of 40 samples through the real loop, a new decoder (and model) as a run would have.
    images = [write_panorama_jpeg(work / f"pano-{w}x{h}.jpg", w, h, seed=i) for i, (w, h) in
              enumerate(PANORAMA_SIZES)]  # fmt: skip
    data_file = work / "data40.csv"
    with open(data_file, "w", encoding="utf-8") as handle:
        handle.write("url,query,annotation\n")
        for image in images:
            for query in QUERIES:
                handle.write(f"{image},{query},a synthetic reference caption.\n")
    config = RunConfig(model_name=name, data_file=data_file, output_dir=work / f"run-{name}", batch_size=8,
                       max_new_tokens=args.max_new_tokens, model_path=checkpoint, device="cpu", dtype="float32",
                       num_workers=1, overwrite=True, progress="none", decode="compiled",
                       compile_cache=work / f"compile-cache-{name}-run")  # fmt: skip
    started = time.perf_counter()
    result = run(config, log=lambda line: None)
    wall = time.perf_counter() - started
    eager_config = dataclasses.replace(config, output_dir=work / f"run-{name}-eager", decode="eager")
    started = time.perf_counter()
    eager_result = run(eager_config, log=lambda line: None)
    eager_wall = time.perf_counter() - started
    entry["run40"] = {
        "status": result.status,
        "samples": result.num_written,
        "compiled_wall_s": round(wall, 1),
        "eager_wall_s": round(eager_wall, 1),
        "predictions_identical_to_eager": predictions(result.predictions_file)
        == predictions(eager_result.predictions_file),
        "report": getattr(read_json(result.manifest_file, RunManifest), "decode", None),
    }
    return entry


def predictions(path: str) -> dict[str, str]:
    return {record.sample_id: record.prediction for record in read_jsonl(path, PredictionRecord)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=["llava-1.5-7b", "qwen2.5-vl-3b", "gemma-3-4b"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    entries = []
    with tempfile.TemporaryDirectory(prefix="decode-bench-") as folder:
        for name in args.families:
            entries.append(bench_family(name, Path(folder), args))
            print(json.dumps(entries[-1]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
