"""Old way vs this project's runner, per model, measured side by side in ONE run.

    python -m bench.gpu_bench --out bench/out/gpu_bench.json            # on a GPU host, all 8 models
    python -m bench.gpu_bench --tiny --families llava blip2 --out x.json    # CPU check with tiny checkpoints

Per model (full size: random weights built from bench/configs/<model>.json straight on the GPU, no download):

- runner path: the runner's own loop (runner.loop.run: sorting, background image workers with JPEG draft
  decoding, batched generation, durable JSONL writes) with this project's adapter, bf16, SDPA attention and
  `--batch-size` (default auto, as users get it);
- old way: what the replaced workflow did: fp16, batch 2 for LLaVA/BLIP-style models and batch 1 for
  chat-template models, each image opened at full size and preprocessed on the main thread, one sample loop;
- with `--decode eager compiled` (the default), the runner path runs twice on the same weights: eager HF generate
  and compiled decoding (static KV cache + compiled decode step, runner.decoding; its compile is done by a warm-up
  run at the measured batch size and reported apart), each with its compilations and, on a GPU, mean SM
  utilisation sampled by nvidia-smi every 200 ms while the path runs.

Both paths use the same model weights (built once in bf16, cast to fp16 for the old way), the same prompts and
`min_new_tokens = max_new_tokens = 64`, so every sample does the same decoding work; the JSON records the new
tokens per sample and the prompt length each path actually saw. Samples/s is wall time from the first batch to
the last written prediction (model build/load excluded, reported separately). GPU time is the CUDA-event time
spent inside generate(). One warm-up call (2 new tokens) per path is excluded.
"""

from __future__ import annotations

import argparse
import csv
import gc
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from bench.fullsize import (
    build_full_model,
    build_tiny_reference,
    count_parameters,
    full_size_config,
    full_size_processor,
    load_bench_config,
)
from bench.synthetic import QUERIES, write_panoramas
from contract import RunManifest, read_json, write_json_atomic
from runner.adapters import LoadedModel, adapter_for
from runner.cli import batch_size
from runner.loop import DEFAULT_PROMPT_TEMPLATE, RunConfig, run
from runner.registry import MODELS, ModelSpec

# GPU defaults = the measured H200 run B in docs/PERFORMANCE.md, which passed batch 128: what `auto` computes there.
GPU_DEFAULTS = {"num_samples": 256, "old_way_samples": 4, "batch_size": "auto", "num_workers": 8}
TINY_DEFAULTS = {"num_samples": 4, "old_way_samples": 2, "batch_size": 2, "num_workers": 4}
# Families the old workflow ran through a chat template one sample at a time; the others it ran in pairs.
CHAT_TEMPLATE_FAMILIES = {"qwen2.5-vl", "gemma3", "internvl2"}


def old_way_batch_size(spec: ModelSpec) -> int:
    return 1 if spec.family in CHAT_TEMPLATE_FAMILIES else 2


# ---------------------------------------------------------------------------------------------------------
# Measuring generate() from the inside: the runner's loop calls adapter.generate, so a subclass of the family's
# adapter records CUDA-event time, prompt lengths and new tokens without changing what runs.


@dataclass
class GenerateLog:
    device: torch.device
    calls: list[tuple[Any, Any]] = field(default_factory=list)  # (start, end) CUDA events or perf_counter floats
    rows: int = 0
    prompt_tokens: int = 0
    new_tokens: list[int] = field(default_factory=list)

    def reset(self) -> None:
        self.calls.clear()
        self.rows = self.prompt_tokens = 0
        self.new_tokens.clear()

    @contextmanager
    def timed(self) -> Iterator[None]:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.calls.append((start, end))
        else:
            started = time.perf_counter()
            yield
            self.calls.append((started, time.perf_counter()))

    def generate_seconds(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return sum(start.elapsed_time(end) for start, end in self.calls) / 1000.0
        return sum(end - start for start, end in self.calls)


def instrumented_adapter(adapter_class: type[Any], loaded: LoadedModel, log: GenerateLog) -> type[Any]:
    """The family's adapter, unchanged except: load() hands back the model built here; generate() is timed."""

    class BenchAdapter(adapter_class):  # type: ignore[misc,valid-type]
        @classmethod
        def load(cls, source: str, **kwargs: Any) -> LoadedModel:
            return loaded

        def generate(self, inputs: dict[str, Any], max_new_tokens: int, min_new_tokens: int = 0) -> torch.Tensor:
            with log.timed():
                output = super().generate(inputs, max_new_tokens, min_new_tokens)
            prompt_length = int(inputs["input_ids"].shape[1])
            log.rows += int(output.shape[0])
            log.prompt_tokens += prompt_length * int(output.shape[0])
            # Decoder-only output = padded prompt + new tokens; encoder-decoder output = start token + new tokens.
            log.new_tokens.append(int(output.shape[1]) - (prompt_length if self.decoder_only else 1))
            return output

    BenchAdapter.__name__ = f"Bench{adapter_class.__name__}"
    return BenchAdapter


# ---------------------------------------------------------------------------------------------------------
# Results.


@dataclass
class PathResult:
    path: str  # "old_way" or "runner"
    dtype: str
    batch_size: int  # what the path used (the runner: its batch_size_used after `auto`)
    num_samples: int
    wall_s: float
    generate_s: float
    samples_per_s: float
    peak_gpu_memory_bytes: int | None
    mean_prompt_tokens: float
    new_tokens_per_sample: list[int]  # distinct values seen (all equal to max_new_tokens when the run is sound)
    image_handling: str
    decode: str | None = None  # the runner path: eager or compiled (what ran, after any fallback)
    compilations: int | None = None  # during the measured run (0: every shape was compiled by the warm-up)
    warmup_compilations: int | None = None  # compiled: what the warm-up run compiled
    compile_warmup_s: float | None = None  # compiled: the warm-up run that compiled the measured shapes
    mean_sm_utilisation: float | None = None  # percent, nvidia-smi samples while the path ran (GPU only)


def _peak_memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _result(
    name: str, dtype: torch.dtype, batch_size: int, count: int, wall: float, log: GenerateLog, device: torch.device,
    image_handling: str,
) -> PathResult:  # fmt: skip
    return PathResult(
        path=name,
        dtype=str(dtype).removeprefix("torch."),
        batch_size=batch_size,
        num_samples=count,
        wall_s=round(wall, 3),
        generate_s=round(log.generate_seconds(), 3),
        samples_per_s=round(count / wall, 4) if wall > 0 else 0.0,
        peak_gpu_memory_bytes=_peak_memory(device),
        mean_prompt_tokens=round(log.prompt_tokens / log.rows, 1) if log.rows else 0.0,
        new_tokens_per_sample=sorted(set(log.new_tokens)),
        image_handling=image_handling,
    )


# ---------------------------------------------------------------------------------------------------------
# The two paths.


def write_data_file(path: Path, images: list[Path], count: int, queries_per_image: int = len(QUERIES)) -> Path:
    """A data CSV in the runner's format with `count` distinct (image, query) samples, `queries_per_image` per image
    (the queries cycle through QUERIES, so prompt lengths do not depend on it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "query", "annotation"])
        for index in range(count):
            image = images[index // queries_per_image]
            writer.writerow([str(image), QUERIES[index % len(QUERIES)], "a synthetic reference caption."])
    return path


def samples_in(data_file: Path) -> list[tuple[str, str]]:
    with open(data_file, encoding="utf-8", newline="") as handle:
        return [(row["url"], row["query"]) for row in csv.DictReader(handle)]


def runner_path(
    spec: ModelSpec, bench_class: type[Any], log: GenerateLog, data_file: Path, warm_file: Path, work: Path,
    args: argparse.Namespace, device: torch.device, dtype: torch.dtype, decode: str = "eager",
) -> PathResult:  # fmt: skip
    dtype_name = str(dtype).removeprefix("torch.")

    def config(data: Path, out: Path, batch_size: int | str, new_tokens: int) -> RunConfig:
        return RunConfig(
            model_name=spec.name, data_file=data, output_dir=out, batch_size=batch_size,
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, device=device.type, dtype=dtype_name,
            num_workers=args.num_workers, overwrite=True, progress="none", decode=decode,
            compile_cache=work / "torch-compile", reuse_images=args.reuse_images,
        )  # fmt: skip

    quiet = lambda line: None  # noqa: E731  (the loop's log lines are not part of the benchmark output)
    warm_started = time.perf_counter()
    warmup_compilations = None
    if decode == "compiled":
        # Compile the measured shapes first (the batch size the measured run will use, the full answer length):
        # the compiled graph is cached on the model, which every run() here reuses.
        warm = run(config(data_file, work / f"runner_{decode}_warmup", args.batch_size, args.max_new_tokens),
                   log=quiet, adapter_class=bench_class)  # fmt: skip
        warmup_compilations = (getattr(read_json(warm.manifest_file, RunManifest), "decode", None) or {}).get(
            "compilations"
        )
    else:
        run(config(warm_file, work / "runner_warmup", 2, 2), log=quiet, adapter_class=bench_class)
    warm_s = time.perf_counter() - warm_started
    log.reset()
    _peak_memory_reset(device)
    started = time.perf_counter()
    config_run = config(data_file, work / f"runner_{decode}", args.batch_size, args.max_new_tokens)
    with SmSampler(device) as sampler:
        result = run(config_run, log=quiet, adapter_class=bench_class)
    wall = time.perf_counter() - started
    if result.status != "completed" or result.num_errors:
        raise RuntimeError(
            f"runner path for {spec.name}: {result.status}, {result.num_errors} error(s): {result.message}"
        )
    manifest = read_json(result.manifest_file, RunManifest)
    wall -= manifest.timings.get("load_s", 0.0)  # the model is built before; only the hand-over is subtracted
    measured = _result(
        "runner" if decode == "eager" else f"runner_{decode}", dtype, manifest.batch_size_used, result.num_written,
        wall, log, device, f"runner.images: background workers ({args.num_workers}), JPEG draft decode, one resize "
        f"to max side {spec.max_image_side}",
    )  # fmt: skip
    report = getattr(manifest, "decode", None) or {}
    measured.decode = report.get("decode", decode)
    measured.compilations = report.get("compilations")
    measured.compile_warmup_s = round(warm_s, 2) if decode == "compiled" else None
    measured.warmup_compilations = warmup_compilations
    measured.mean_sm_utilisation = sampler.mean()
    return measured


class SmSampler:
    """Mean SM utilisation over a block, from `nvidia-smi` every 200 ms (GPU only; None elsewhere)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.process, self.values = device, None, []

    def __enter__(self) -> SmSampler:
        import shutil
        import subprocess

        if self.device.type == "cuda" and shutil.which("nvidia-smi"):
            index = self.device.index or 0
            self.process = subprocess.Popen(
                ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-lms", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            output, _ = self.process.communicate(timeout=10)
            self.values = [float(line) for line in output.split() if line.replace(".", "", 1).isdigit()]

    def mean(self) -> float | None:
        return round(sum(self.values) / len(self.values), 1) if self.values else None


def old_way_path(
    spec: ModelSpec, bench_class: type[Any], loaded: LoadedModel, log: GenerateLog, samples: list[tuple[str, str]],
    batch_size: int, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
) -> PathResult:  # fmt: skip
    adapter = bench_class(spec, loaded, device, dtype)

    def one_batch(batch: list[tuple[str, str]], new_tokens: int) -> list[str]:
        # Main thread, in order: open the full-size image, preprocess, generate, decode. No overlap.
        images = [Image.open(image).convert("RGB") for image, _ in batch]
        prompts = [adapter.build_prompt(DEFAULT_PROMPT_TEMPLATE.format(query=query)) for _, query in batch]
        inputs = adapter.build_inputs(images, prompts)
        output = adapter.generate(inputs, new_tokens, new_tokens)
        return adapter.decode(output, inputs)

    one_batch(samples[:batch_size], 2)
    log.reset()
    _peak_memory_reset(device)
    predictions: list[str] = []
    started = time.perf_counter()
    for start in range(0, len(samples), batch_size):
        predictions.extend(one_batch(samples[start : start + batch_size], args.max_new_tokens))
    wall = time.perf_counter() - started
    return _result(
        "old_way", dtype, batch_size, len(predictions), wall, log, device,
        "main thread: PIL open + convert at full size, processor resize, no overlap with generation",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------
# One model.


def build_model(spec: ModelSpec, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Full size: published config + random weights on `device`. --tiny: the tiny checkpoint via the adapter."""
    with tempfile.TemporaryDirectory(prefix="bench_tiny_") as folder:
        tiny_dir = build_tiny_reference(spec.name, Path(folder) / spec.name)
        if args.tiny:
            return adapter_for(spec.adapter).load(str(tiny_dir), revision=None, dtype=dtype, device=device, spec=spec)
        bench = load_bench_config(spec.name)
        config = full_size_config(bench, tiny_dir)
        if args.shallow:
            shallow(config, getattr(args, "shallow_layers", 2))
        processor = full_size_processor(bench, tiny_dir)
    return LoadedModel(model=build_full_model(config, bench, device, dtype), processor=processor)


def shallow(config: Any, layers: int = 2) -> None:
    """Full widths and image geometry, `layers` layers per stack: checks processor/model agreement on a CPU."""
    for sub in (config, *(getattr(config, k, None) for k in ("text_config", "vision_config", "qformer_config"))):
        if sub is None:
            continue
        for key in ("num_hidden_layers", "num_layers", "num_decoder_layers", "depth"):
            if isinstance(getattr(sub, key, None), int):
                setattr(sub, key, layers)
        if isinstance(getattr(sub, "layer_types", None), list):
            sub.layer_types = sub.layer_types[:layers]


def bench_model(
    spec: ModelSpec, args: argparse.Namespace, device: torch.device, images: list[Path], work: Path
) -> dict[str, Any]:
    fast_dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    old_dtype = torch.float32 if device.type == "cpu" else torch.float16
    entry: dict[str, Any] = {"model": spec.name, "family": spec.family, "hub_id": spec.hub_id}
    if not args.tiny:
        counts = count_parameters(load_bench_config(spec.name))
        entry["parameters"] = asdict(counts)
    started = time.perf_counter()
    loaded = build_model(spec, args, device, fast_dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    entry["build_s"] = round(time.perf_counter() - started, 2)
    log = GenerateLog(device)
    bench_class = instrumented_adapter(adapter_for(spec.adapter), loaded, log)
    model_work = work / spec.name
    data_file = write_data_file(model_work / "data.csv", images, args.num_samples, args.queries_per_image)
    warm_file = write_data_file(model_work / "warm.csv", images, 2, args.queries_per_image)
    entry["runner"] = asdict(runner_path(spec, bench_class, log, data_file, warm_file, model_work, args, device,
                                         fast_dtype))  # fmt: skip
    if "compiled" in args.decode:
        compiled = runner_path(spec, bench_class, log, data_file, warm_file, model_work, args, device, fast_dtype,
                               decode="compiled")  # fmt: skip
        entry["runner_compiled"] = asdict(compiled)
        eager_rate = entry["runner"]["samples_per_s"]
        entry["compiled_vs_eager"] = round(compiled.samples_per_s / eager_rate, 2) if eager_rate else None
    if old_dtype != fast_dtype:
        loaded.model.to(old_dtype)
    old_samples = samples_in(data_file)[: args.old_way_samples]
    entry["old_way"] = asdict(old_way_path(spec, bench_class, loaded, log, old_samples, old_way_batch_size(spec),
                                           args, device, old_dtype))  # fmt: skip
    old_rate, new_rate = entry["old_way"]["samples_per_s"], entry["runner"]["samples_per_s"]
    entry["speedup"] = round(new_rate / old_rate, 2) if old_rate else None
    del loaded, bench_class
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return entry


# ---------------------------------------------------------------------------------------------------------
# CLI.


def select_models(names: list[str] | None) -> list[ModelSpec]:
    if not names:
        return list(MODELS.values())
    chosen: list[ModelSpec] = []
    for name in names:
        matches = [spec for spec in MODELS.values() if name in (spec.name, spec.family)]
        if not matches:
            families = sorted({spec.family for spec in MODELS.values()})
            raise SystemExit(f"--families: {name!r} is neither a model ({', '.join(MODELS)}) nor a family {families}")
        chosen.extend(spec for spec in matches if spec not in chosen)
    return chosen


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must look like 2048x1024, got {text!r}") from None
    if width < 16 or height < 16:
        raise argparse.ArgumentTypeError(f"image size {text!r} is too small")
    return width, height


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="*", help="families or model names (default: all 8 models)")
    parser.add_argument("--num-samples", type=int, help="samples through the runner path (GPU 256, --tiny 4)")
    parser.add_argument("--old-way-samples", type=int, help="samples through the old way (GPU 4, --tiny 2)")
    parser.add_argument("--batch-size", type=batch_size, help="runner --batch-size (GPU auto, --tiny 2)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="= min_new_tokens (default 64)")
    parser.add_argument("--image-size", type=parse_size, default=(2048, 1024), help="panorama WxH (2048x1024)")
    parser.add_argument("--num-workers", type=int, help="runner image-loading threads (GPU 8, --tiny 4)")
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoints (CPU test mode)")
    parser.add_argument(
        "--decode",
        nargs="+",
        choices=("eager", "compiled"),
        default=["eager", "compiled"],
        help="runner decoding paths to measure (default: both, side by side)",
    )
    parser.add_argument("--shallow", action="store_true", help="full widths, 2 layers per stack (CPU geometry check)")
    parser.add_argument(
        "--reuse-images", choices=("on", "off"), default="off", help="runner --reuse-images (default off, as measured)"
    )
    parser.add_argument(
        "--queries-per-image",
        type=int,
        default=3,
        help="samples per panorama (3, as 96%% of QuIC-360's; the measured runs had 8, which without reuse costs the "
        "same)",
    )
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    parser.add_argument("--time-budget-s", type=float, default=450.0, help="start no new model after this (450)")
    parser.add_argument("--work-dir", type=Path, help="images, data files, predictions (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/gpu_bench.json"), help="JSON results file")
    args = parser.parse_args(argv)
    defaults = TINY_DEFAULTS if args.tiny else GPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("num_samples", "old_way_samples", "max_new_tokens", "num_workers", "queries_per_image"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    if args.tiny and args.shallow:
        parser.error("--tiny and --shallow are different model sizes; pick one")
    return args


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads), no GPU"


def print_table(entries: list[dict[str, Any]]) -> None:
    header = f"{'model':<24} {'old s/s':>9} {'runner s/s':>11} {'ratio':>7} {'old gen s':>10} {'run gen s':>10} "
    header += f"{'old peak GB':>12} {'run peak GB':>12}"
    print(header)
    for entry in entries:
        if "error" in entry or "skipped" in entry:
            print(f"{entry['model']:<24} {entry.get('error') or entry.get('skipped')}")
            continue
        old, new = entry["old_way"], entry["runner"]

        def gigabytes(value: int | None) -> str:
            return f"{value / 1e9:.1f}" if value is not None else "-"

        print(
            f"{entry['model']:<24} {old['samples_per_s']:>9.3f} {new['samples_per_s']:>11.3f} {entry['speedup']:>7} "
            f"{old['generate_s']:>10.2f} {new['generate_s']:>10.2f} {gigabytes(old['peak_gpu_memory_bytes']):>12} "
            f"{gigabytes(new['peak_gpu_memory_bytes']):>12}"
        )
        compiled = entry.get("runner_compiled")
        if compiled:
            sm = {key: entry[key].get("mean_sm_utilisation") for key in ("runner", "runner_compiled")}
            print(
                f"{'':<24} compiled {compiled['samples_per_s']:.3f} s/s = x{entry['compiled_vs_eager']} eager, "
                f"{compiled['warmup_compilations']}+{compiled['compilations']} compilation(s) (warm-up+measured), "
                f"warm-up {compiled['compile_warmup_s']} s, "
                f"peak {gigabytes(compiled['peak_gpu_memory_bytes'])} GB, SM % eager/compiled {sm['runner']}/"
                f"{sm['runner_compiled']}"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    specs = select_models(args.families)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "gpu_bench",
        "mode": "tiny" if args.tiny else ("shallow" if args.shallow else "full-size random weights"),
        "command": " ".join(["python -m bench.gpu_bench", *(argv if argv is not None else sys.argv[1:])]),
        "device": device_description(device),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "settings": {
            "max_new_tokens": args.max_new_tokens,
            "min_new_tokens": args.max_new_tokens,
            "image_size": list(args.image_size),
            "runner_batch_size": args.batch_size,
            "runner_samples": args.num_samples,
            "old_way_samples": args.old_way_samples,
            "num_workers": args.num_workers,
            "reuse_images": args.reuse_images,
            "queries_per_image": args.queries_per_image,
        },
        "models": [],
    }
    with tempfile.TemporaryDirectory(prefix="gpu_bench_") as temp:
        work = args.work_dir or Path(temp)
        images_needed = -(-args.num_samples // args.queries_per_image)
        images = write_panoramas(work / "images", images_needed, *args.image_size)
        for spec in specs:
            elapsed = time.perf_counter() - started
            if elapsed > args.time_budget_s:
                report["models"].append({"model": spec.name, "skipped": f"time budget {args.time_budget_s}s used"})
                continue
            print(f"[{elapsed:6.1f}s] {spec.name} ...", file=sys.stderr, flush=True)
            try:
                report["models"].append(bench_model(spec, args, device, images, work))
            except Exception as error:  # noqa: BLE001  (one model failing must not lose the others' numbers)
                report["models"].append({"model": spec.name, "error": f"{type(error).__name__}: {error}"})
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            report["total_s"] = round(time.perf_counter() - started, 1)
            write_json_atomic(args.out, report)
    print_table(report["models"])
    print(f"total {report['total_s']} s; results in {args.out}")
    return 1 if any("error" in entry for entry in report["models"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
