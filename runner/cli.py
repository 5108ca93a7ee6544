"""python -m runner: caption every sample of a data file with one model and write its predictions.

The LAST stdout line is always RUNNER_RESULT_PREFIX + RunnerResult JSON (also on failure), for the orchestrator.
Exit codes: 0 completed, 1 the run failed, 2 bad arguments or input (nothing expensive was started).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback
from pathlib import Path

from contract import (
    PREDICTIONS_JSONL,
    RUN_MANIFEST,
    RUNNER_RESULT_PREFIX,
    PredictionRecord,
    RunManifest,
    RunnerResult,
    read_json,
    read_jsonl,
    results_file,
)
from contract.dataset import add_data_format_arguments
from contract.lifetime import follow_parent
from contract.shards import Shard, ShardError
from runner.loop import (
    AUTO,
    DEFAULT_CAPTION_PROMPT,
    DEFAULT_PROMPT_TEMPLATE,
    DTYPES,
    REUSE_IMAGES,
    RunConfig,
    RunnerError,
    run,
)
from runner.progress import PROGRESS_MODES
from runner.registry import DECODE_KINDS, MODELS, UnknownModelError, get_model


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def batch_size(text: str) -> int | str:
    """--batch-size here, in the orchestrator and in the benchmark: `auto` or a whole number of at least 1."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be `auto` or a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def shard_argument(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ShardError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runner", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        required=True,
        help=f"a catalogue name ({', '.join(MODELS)}, or one of --models-file), or hf:Org/Name[@revision] for any "
        "Hub image-text-to-text model",
    )
    parser.add_argument("--models-file", type=Path, help="your own catalogue entries (TOML, as runner/catalogue.toml)")
    parser.add_argument(
        "--data", required=True, type=Path, help="data file: CSV/TSV, COCO annotations, Karpathy split or JSONL"
    )
    add_data_format_arguments(parser)
    parser.add_argument("--output-dir", required=True, type=Path, help="folder for predictions and run manifest")
    parser.add_argument(
        "--batch-size",
        type=batch_size,
        default=AUTO,
        help="samples per generate call, or auto (default): on a GPU the largest power of two that fits the free "
        "memory (at most 128), on CPU 8",
    )
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    parser.add_argument("--min-new-tokens", type=int, default=0)
    parser.add_argument("--model-path", type=Path, help="load a local checkpoint folder instead of the Hub id")
    parser.add_argument("--revision", help="Hub revision (default: the registry's); the resolved commit is recorded")
    parser.add_argument("--limit", type=positive_int, help="caption only the first N samples of the data file")
    parser.add_argument(
        "--shard", type=shard_argument, metavar="K/N", help="caption only shard K of N (0-based) into its own file"
    )
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: the catalogue's on GPU, float32 on CPU")
    parser.add_argument(
        "--prompt-template",
        help=f"instruction with a {{query}} field (default: {DEFAULT_PROMPT_TEMPLATE!r}); for a data set without "
        f"queries the {{query}} field is optional (default: {DEFAULT_CAPTION_PROMPT!r})",
    )
    parser.add_argument("--image-root", type=Path, help="folder relative image paths are resolved against")
    parser.add_argument("--max-image-side", type=positive_int, help="downscale images to this longest side")
    parser.add_argument("--max-image-pixels", type=positive_int, help="downscale images to at most this many pixels")
    parser.add_argument(
        "--num-workers", type=positive_int, default=min(8, os.cpu_count() or 2), help="image loading threads"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="move existing predictions made with other arguments aside"
    )
    parser.add_argument(
        "--decode",
        choices=DECODE_KINDS,
        help="eager (HF generate) or compiled (static KV cache + compiled decode step); default: the catalogue's",
    )
    parser.add_argument(
        "--compile-cache", type=Path, help="torch.compile cache folder (default: OUTPUT/.torch-compile)"
    )
    parser.add_argument(
        "--preprocess-workers",
        type=positive_int,
        default=2,
        help="processor threads preparing the next batches, each with its own processor copy (default 2)",
    )
    parser.add_argument(
        "--reuse-images",
        choices=REUSE_IMAGES,
        default="on",
        help="on (default): the vision tower runs once per distinct image and its features serve every query of it, "
        "where the architecture allows (the same predictions); off: once per sample",
    )
    parser.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default="bar",
        help="progress on stderr: a bar (default), json lines for the orchestrator, or none",
    )
    parser.add_argument("--no-progress", action="store_true", help="the same as --progress none")
    return parser


def run_config(argv: list[str]) -> RunConfig:
    """The RunConfig a runner started with `argv` works with (the orchestrator asks `runner.loop.finished_run` with it
    whether that run has anything left to do)."""
    return _config(build_parser().parse_args(argv))


def _config(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        model_name=args.model,
        data_file=args.data,
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        model_path=args.model_path,
        revision=args.revision,
        limit=args.limit,
        device=args.device,
        dtype=args.dtype,
        prompt_template=args.prompt_template,
        image_root=args.image_root,
        data_format=args.data_format,
        split=args.split,
        max_image_side=args.max_image_side,
        max_image_pixels=args.max_image_pixels,
        num_workers=args.num_workers,
        overwrite=args.overwrite,
        progress="none" if args.no_progress else args.progress,
        models_file=args.models_file,
        shard=args.shard,
        decode=args.decode,
        compile_cache=args.compile_cache,
        preprocess_workers=args.preprocess_workers,
        reuse_images=args.reuse_images,
    )


def main(argv: list[str] | None = None) -> int:
    follow_parent()  # started by an orchestrator: die with it
    args = build_parser().parse_args(argv)
    config = _config(args)
    exit_code = 0
    try:
        result = run(config)
        if result.status != "completed":
            exit_code = 1
    except (RunnerError, UnknownModelError) as error:
        exit_code = error.exit_code if isinstance(error, RunnerError) else 2
        print(f"error: {error}", file=sys.stderr)
        result = failed_result(args.model, args.output_dir, str(error), args.shard)
    except Exception as error:  # noqa: BLE001  (reported, with traceback, and turned into a failed result line)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"error: {error}", file=sys.stderr)  # a full disk: the file it names is what matters
        else:
            traceback.print_exc(file=sys.stderr)
        exit_code = 1
        result = failed_result(args.model, args.output_dir, f"{type(error).__name__}: {error}", args.shard)
    sys.stdout.flush()
    print(RUNNER_RESULT_PREFIX + result.model_dump_json(), flush=True)
    return exit_code


def failed_result(model: str, output_dir: Path, message: str, shard: Shard | None = None) -> RunnerResult:
    """The result line of a run that stopped: its counts are what is ON DISK (a disk-full run keeps what it wrote)."""
    try:
        model = get_model(model).name  # hf:Org/Name writes Org--Name files
    except (UnknownModelError, ValueError):
        pass
    if shard is not None and shard.count > 1:
        predictions, manifest = shard.predictions(output_dir, model), shard.manifest(output_dir, model)
    else:
        predictions = results_file(output_dir, PREDICTIONS_JSONL, model)
        manifest = results_file(output_dir, RUN_MANIFEST, model)
    written: dict[str, PredictionRecord] = {}
    num_samples = 0
    try:
        if predictions.is_file():
            written = {record.sample_id: record for record in read_jsonl(predictions, PredictionRecord)}
        if manifest.is_file():
            num_samples = read_json(manifest, RunManifest).num_samples
    except (OSError, ValueError):
        pass  # an unreadable file: the message says why the run failed; the counts stay what could be read
    return RunnerResult(
        model_name=model,
        status="failed",
        predictions_file=str(predictions),
        manifest_file=str(manifest),
        num_samples=num_samples,
        num_written=len(written),
        num_errors=sum(1 for record in written.values() if record.error),
        message=message,
    )
