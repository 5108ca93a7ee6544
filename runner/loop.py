"""The ONE batching loop, shared by every family: data -> prompts -> batched greedy generation -> predictions.

Durability: records are appended after every batch with flush + fsync, so a run killed at any moment loses at
most the batch in flight. A restart with the same arguments skips every sample already written (a torn last line
from a kill is cut off first), so no sample is ever written twice. A predictions file made with other arguments is
never mixed with new ones: the run refuses, or with `overwrite` moves the old files aside (never deletes them).
"""

from __future__ import annotations

import os
import platform
import string
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from contract import (
    PREDICTIONS_CSV,
    PREDICTIONS_JSONL,
    RANDOM_WEIGHTS_MARKER,
    RUN_MANIFEST,
    Dataset,
    PredictionRecord,
    RunManifest,
    RunnerResult,
    Sample,
    file_sha256,
    load_dataset,
    mark_derived_stale,
    read_json,
    read_jsonl,
    results_file,
    write_json_atomic,
)
from contract.shards import (
    Shard,
    merged_is_complete,
    merged_sample_ids,
    merged_shard_count,
    samples_of_shard,
    shard_counts_on_disk,
    write_predictions_csv,
)
from runner.progress import Progress
from runner.registry import GREEDY, CatalogueError, ModelSpec, get_model

DEFAULT_PROMPT_TEMPLATE = "In this 360-degree panoramic image, describe the {query} in one or two sentences."
# The caption instruction: the default prompt of a data set without queries (COCO, Karpathy, JSONL without "query";
# every sample's query is then contract.CAPTION_QUERY). A template given for such a data set needs no {query}.
DEFAULT_CAPTION_PROMPT = "Describe this image in one sentence."
DTYPES = ("auto", "float32", "bfloat16", "float16")
REUSE_IMAGES = ("on", "off")
# Manifest fields that change what a prediction is: a file made with other values is never extended.
# The data file's sha256 too: another data set's samples must never be appended to this one's.
COMPATIBILITY_KEYS = (
    "model_name", "model_id", "model_path", "revision", "prompt_template", "decoding", "dtype", "data_sha256",
    "data_format", "data_split",
)  # fmt: skip
# --batch-size auto. On a GPU the step time of HF generate is mostly host overhead, so throughput grows with the
# batch until the per-step GPU work dominates; measured on one H200: batch 128 gave 1.3-3.7x the samples/s of batch 32
# (docs/PERFORMANCE.md). Beyond 128 was not measured; the cap also bounds what a kill loses and the padding waste.
AUTO = "auto"
AUTO_BATCH_CPU = 8  # on a few CPU cores a bigger batch buys nothing and loses more on a kill
AUTO_BATCH_MAX = 128
AUTO_MEMORY_FRACTION = 0.8  # headroom: allocator fragmentation, prompts longer than the measured panoramas


class RunnerError(Exception):
    """A run that cannot start or go on; the message says what to change. `exit_code` 2 = bad arguments/input."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class RunConfig:
    model_name: str
    data_file: Path
    output_dir: Path
    batch_size: int | Literal["auto"] = AUTO
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    model_path: Path | None = None
    revision: str | None = None
    limit: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    prompt_template: str | None = None  # None: the data set's default (prompt_template_for)
    image_root: Path | None = None
    data_format: str | None = None  # None: detected from the content (contract.load_dataset)
    split: str | None = None  # a Karpathy split file's split (default test)
    max_image_side: int | None = None
    max_image_pixels: int | None = None
    num_workers: int = 2
    overwrite: bool = False
    progress: str = "bar"  # bar | json | none (runner.progress)
    models_file: Path | None = None  # the user's catalogue entries (--models-file), besides the built-in ones
    shard: Shard | None = None  # caption only this shard of the samples (contract.shards), into its own file
    decode: str | None = None  # eager | compiled; None: the catalogue entry's default (runner.decoding)
    compile_cache: Path | None = None  # torch.compile's caches, kept across runs; None: <output_dir>/.torch-compile
    preprocess_workers: int = 2  # processor threads, each with its own processor copy (runner.preprocess)
    reuse_images: str = "on"  # on: one vision-tower run per distinct image where supported (adapters.image_reuse)


@dataclass
class PendingSample:
    sample: Sample
    prompt: str  # exact text given to the processor
    order: int  # position in the data file


@dataclass
class PreparedBatch:
    inputs: dict[str, Any]  # adapter.preprocess output, on the CPU
    image_keys: list[str] | None  # each row's image content hash (image reuse on), else None


@dataclass
class RunStats:
    written: int = 0
    oom_retries: int = 0
    batch_size_used: int = 0
    generate_s: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    images: set[str] = field(default_factory=set)  # distinct images of the samples generated in this run
    samples_generated: int = 0  # samples whose image loaded and went to generate()
    image_reuse: Any = None  # the loaded adapter's runner.adapters.image_reuse.ImageReuse


# ---------------------------------------------------------------------------------------------------------
# Checks that run before anything expensive.


def validate_prompt_template(template: str, has_queries: bool = True) -> None:
    """The template's only replacement field is a bare `{query}`: no format spec, no conversion, no other name. A data
    set with queries needs the field; one without (`has_queries` False) may leave it out.

    A spec such as `{query:>3000000000}` would allocate gigabytes and `{query!r:>{query}}` fail only after the model
    loaded; literal braces are written `{{` and `}}`."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)]
    except ValueError as error:
        raise RunnerError(f"prompt template {template!r} is not a valid format string: {error}", 2) from None
    fields = [field for field in fields if field[0] is not None]
    if has_queries and not any(name == "query" for name, _, _ in fields):
        raise RunnerError(
            f"prompt template {template!r} has no {{query}} placeholder (the data set has queries; a template "
            "without one is for data sets without queries)",
            2,
        )
    for name, spec, conversion in fields:
        if name != "query" or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise RunnerError(
                f"prompt template {template!r} has the field {shown}; the only field allowed is a bare {{query}} "
                "(no format spec, no conversion; write a literal brace as {{ or }})",
                2,
            )


def prompt_template_for(requested: str | None, has_queries: bool) -> str:
    """The template a run uses: the one requested (checked), else DEFAULT_PROMPT_TEMPLATE for a data set with queries
    and DEFAULT_CAPTION_PROMPT for one without."""
    template = (
        requested if requested is not None else DEFAULT_PROMPT_TEMPLATE if has_queries else DEFAULT_CAPTION_PROMPT
    )
    validate_prompt_template(template, has_queries)
    return template


def check_output_dir(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise RunnerError(f"output dir {output_dir} is not writable: {error}", 2) from None


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RunnerError("--device cuda was requested but no CUDA device is available", 2)
    return requested


def is_batch_size(value: object) -> bool:
    """What --batch-size accepts everywhere (runner config, orchestrator plan): `auto` or a whole number >= 1."""
    return value == AUTO or (isinstance(value, int) and value >= 1)


def auto_batch_size(gb_per_sample: float, free_gpu_bytes: int | None, sample_count: int) -> int:
    """What `--batch-size auto` uses. On a GPU: the largest power of two whose estimated memory (gb_per_sample
    each: measured, or estimated from the config) fits in AUTO_MEMORY_FRACTION of what is free after loading, at most
    AUTO_BATCH_MAX; a power of two so that GPUs of one kind choose the same size and runs stay comparable. On CPU
    (`free_gpu_bytes` None): AUTO_BATCH_CPU. Never more than the samples left to caption."""
    if free_gpu_bytes is None:
        size = AUTO_BATCH_CPU
    else:
        fits = int(free_gpu_bytes * AUTO_MEMORY_FRACTION / (gb_per_sample * 1e9))
        size = min(AUTO_BATCH_MAX, 1 << (fits.bit_length() - 1)) if fits >= 1 else 1
    return max(1, min(size, sample_count))


def resolve_dtype(requested: str, device: str, spec: ModelSpec) -> str:
    if requested != "auto":
        return requested
    # Half precision on CPU is slow and not what the tests pin down; float32 there.
    return spec.dtype if device == "cuda" else "float32"


# ---------------------------------------------------------------------------------------------------------
# The predictions file.


def read_done(
    path: Path, log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)
) -> list[PredictionRecord]:
    """Records already written. A last line without its newline is given one when it is a whole record (a file
    another tool wrote); otherwise it is a write cut off by a kill, removed so appends stay clean, and `log` says so."""
    if not path.exists():
        return []
    with open(path, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            tail = data[data.rfind(b"\n") + 1 :]
            try:
                PredictionRecord.model_validate_json(tail.removeprefix(b"\xef\xbb\xbf"))
                handle.write(b"\n")
            except ValueError:
                handle.truncate(len(data) - len(tail))
                log(f"WARNING: {path}: removed an incomplete last line ({len(tail)} bytes: a write cut off by a kill)")
            handle.flush()
            os.fsync(handle.fileno())
    try:
        return list(read_jsonl(path, PredictionRecord))
    except ValueError as error:
        raise RunnerError(f"{error}; fix or move that file aside (or pass --overwrite)") from None


class PredictionWriter:
    """Appends one batch of records at a time and makes it durable before returning."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = open(path, "a", encoding="utf-8")  # noqa: SIM115  (closed in close())

    def write_batch(self, records: list[PredictionRecord]) -> None:
        # One write call per batch: a kill leaves whole lines plus at most one torn line, which read_done cuts off.
        try:
            self.handle.write("".join(record.model_dump_json() + "\n" for record in records))
            self.handle.flush()
            os.fsync(self.handle.fileno())
        except OSError as error:  # a full disk: say which file
            raise OSError(error.errno, error.strerror, str(self.path)) from error

    def close(self) -> None:
        self.handle.close()


@contextmanager
def run_lock(predictions_path: Path) -> Iterator[None]:
    """One runner per predictions file: a second one at the same time would caption (and write) samples twice."""
    import fcntl

    lock_path = predictions_path.with_name(f".{predictions_path.name}.lock")
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunnerError(
                f"another runner is writing {predictions_path} (lock {lock_path}); wait for it or use another "
                "--output-dir",
                2,
            ) from None
        yield  # the lock is released when the file closes, also when the process is killed


def move_aside(paths: list[Path]) -> list[Path]:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    moved = []
    for path in paths:
        if path.exists():
            target = path.with_name(f"{path.name}.replaced-{stamp}")
            path.rename(target)
            moved.append(target)
    return moved


def entry_settings(spec: ModelSpec) -> dict[str, Any]:
    """The catalogue entry's settings that change what the model is given or how it decodes, recorded with the
    decoding (and so part of the resume check). Only those an entry sets: a record made without them still matches."""
    settings: dict[str, Any] = {}
    if spec.generate_kwargs:
        settings["generate_kwargs"] = dict(spec.generate_kwargs)
    if spec.max_pixels is not None:
        settings["max_pixels"] = spec.max_pixels
    if not spec.nested_images:
        settings["nested_images"] = False
    return settings


def compatibility(manifest: dict[str, Any]) -> dict[str, Any]:
    keys = {key: manifest.get(key) for key in COMPATIBILITY_KEYS}
    if keys["model_path"] and keys["revision"] == "main":
        keys["revision"] = None  # earlier versions recorded `main` for a local folder, which has no revision
    return keys


def prompt_fingerprint(prompt: str) -> str:
    import hashlib

    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def check_shard_layout(out_dir: Path, model: str, samples: list[Sample], shard: Shard | None) -> None:
    """A folder's predictions of one model are made with ONE shard count until they are merged: another count (or
    an unsharded run) on top of unmerged shards would caption samples twice or leave some out."""
    if merged_is_complete(out_dir, model, samples):
        return
    counts = shard_counts_on_disk(out_dir, model) - ({shard.count} if shard else set())
    unsharded = results_file(out_dir, PREDICTIONS_JSONL, model)
    merge_of_these_shards = shard is not None and merged_shard_count(out_dir, model) == shard.count
    if shard is not None and unsharded.is_file() and unsharded.stat().st_size > 0 and not counts:
        if merge_of_these_shards:
            return  # an earlier merge of these very shards (a smaller --limit): they go on from there
        raise RunnerError(
            f"{unsharded} holds an unfinished run without shards; finish it without --shards (it resumes), or pass "
            "--overwrite",
            2,
        )
    if counts:
        wanted = f"--shards {shard.count}" if shard else "no shards"
        raise RunnerError(
            f"{out_dir} holds unmerged shards of {model} made with --shards {sorted(counts)[0]}; rerun with that "
            f"count to finish them (they resume) instead of {wanted}, or use another --output-dir",
            2,
        )


# ---------------------------------------------------------------------------------------------------------
# Versions and environment for the manifest.


def library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "tokenizers", "pillow", "accelerate"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    try:
        versions["vlm-ablation"] = metadata.version("vlm-ablation")
    except metadata.PackageNotFoundError:
        versions["vlm-ablation"] = _project_version()
    return versions


def _project_version() -> str:
    import tomllib

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        return str(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model_name()


def cpu_model_name() -> str:
    """The CPU's model name as the kernel reports it (platform.processor() is empty on most Linux hosts)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------------------
# The run.


def planned_manifest(
    config: RunConfig, spec: ModelSpec, device: str, num_samples: int, data_format: str, data_split: str | None
) -> RunManifest:
    """The `<model>_run.json` a run of `config` on `device` starts with: what it will give the model and how it decodes
    (the resume check compares its COMPATIBILITY_KEYS with the previous run's). `config.prompt_template` is the one the
    run uses (prompt_template_for). Needs no torch."""
    max_side = config.max_image_side if config.max_image_side is not None else spec.max_image_side
    return RunManifest(
        model_name=spec.name,
        model_id=spec.hub_id,
        model_path=str(config.model_path.resolve()) if config.model_path else None,
        # A local folder has no Hub revision (its path is recorded instead).
        revision=None if config.model_path else (config.revision or spec.revision),
        family=spec.family,
        adapter=spec.adapter,
        dtype=resolve_dtype(config.dtype, device, spec),
        device=device,
        prompt_template=config.prompt_template,
        decoding={
            **GREEDY,
            "max_new_tokens": config.max_new_tokens,
            "min_new_tokens": config.min_new_tokens,
            "max_image_side": max_side,
            "max_image_pixels": config.max_image_pixels,
            # Requested path: compiled kernels round differently in the last bits, so runs do not mix them.
            "decode": config.decode or spec.decode,
            **entry_settings(spec),
        },
        data_file=str(Path(config.data_file).resolve()),
        data_sha256=file_sha256(config.data_file),
        data_format=data_format,
        data_split=data_split,
        num_samples=num_samples,
        batch_size_requested=config.batch_size,
        batch_size_used=config.batch_size if isinstance(config.batch_size, int) else 0,  # 0: chosen after loading
        started_at=now(),
        status="running",
        versions=library_versions(),
        random_weights=bool(config.model_path and (config.model_path / RANDOM_WEIGHTS_MARKER).is_file()),
    )


def finished_run(config: RunConfig, device: str, dataset: Dataset | None = None) -> RunManifest | None:
    """The run `config` asks for is already done: `<model>_run.json` says completed, was made with the same arguments
    (the resume check's COMPATIBILITY_KEYS) and `<model>_predictions.jsonl` holds every sample (merged, with shards).
    Then nothing needs loading and nothing is rewritten. Returns that manifest; None when anything is left to do or
    cannot be checked (the run then starts and decides). `dataset`: the data file as read, when the caller has it.
    Cheap: no torch, no model (the orchestrator calls it before starting a runner)."""
    if config.overwrite:
        return None
    try:
        spec = get_model(config.model_name, [config.models_file] if config.models_file else [])
        if dataset is None:
            dataset = load_dataset(
                config.data_file, image_root=config.image_root, data_format=config.data_format, split=config.split
            )
        config = replace(config, prompt_template=prompt_template_for(config.prompt_template, dataset.has_queries))
        samples = dataset.samples[: config.limit] if config.limit is not None else dataset.samples
        previous = _previous_manifest(results_file(config.output_dir, RUN_MANIFEST, spec.name))
        if previous is None or previous.get("status") != "completed":
            return None
        planned = planned_manifest(config, spec, device, len(samples), dataset.format, dataset.split)
        if compatibility(previous) != compatibility(planned.model_dump()):
            return None
        if not merged_is_complete(config.output_dir, spec.name, samples):
            return None
        return RunManifest.model_validate(previous)
    except (CatalogueError, RunnerError, OSError, ValueError):
        return None


def batched(items: list[PendingSample], size: int) -> Iterator[list[PendingSample]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run(
    config: RunConfig,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    adapter_class: type[Any] | None = None,
) -> RunnerResult:
    """Caption every sample of config.data_file with one model. `adapter_class` replaces the family's registered
    adapter (the throughput benchmark passes one that wraps a model it built in memory)."""
    # --- cheap checks first: no model is loaded until all of these pass ----------------------------------
    try:
        spec = get_model(config.model_name, [config.models_file] if config.models_file else [])
    except CatalogueError as error:
        raise RunnerError(str(error), 2) from None
    if config.prompt_template is not None:
        validate_prompt_template(config.prompt_template, has_queries=False)  # the rest once the data set is read
    if not is_batch_size(config.batch_size):
        raise RunnerError(f"--batch-size must be `auto` or at least 1, got {config.batch_size!r}", 2)
    fixed_batch_size = config.batch_size if isinstance(config.batch_size, int) else 0  # 0: chosen after loading
    if config.max_new_tokens < 1 or config.min_new_tokens < 0 or config.min_new_tokens > config.max_new_tokens:
        raise RunnerError(
            f"need 1 <= max_new_tokens and 0 <= min_new_tokens <= max_new_tokens "
            f"(got {config.max_new_tokens}, {config.min_new_tokens})",
            2,
        )
    if config.dtype not in DTYPES:
        raise RunnerError(f"--dtype must be one of {DTYPES}, got {config.dtype!r}", 2)
    if config.reuse_images not in REUSE_IMAGES:
        raise RunnerError(f"--reuse-images must be one of {REUSE_IMAGES}, got {config.reuse_images!r}", 2)
    if config.model_path is not None and not config.model_path.is_dir():
        raise RunnerError(f"--model-path {config.model_path} is not a folder", 2)
    check_output_dir(config.output_dir)
    try:
        dataset = load_dataset(
            config.data_file, image_root=config.image_root, data_format=config.data_format, split=config.split
        )
    except ValueError as error:
        raise RunnerError(str(error), 2) from None
    config = replace(config, prompt_template=prompt_template_for(config.prompt_template, dataset.has_queries))
    samples = dataset.samples[: config.limit] if config.limit is not None else dataset.samples
    if not samples:
        raise RunnerError(f"{config.data_file}: no samples to caption ({dataset.summary_line()})", 2)
    log(dataset.summary_line())
    for warning in dataset.warnings:
        log(f"WARNING: {warning}")
    shard = config.shard if config.shard is not None and config.shard.count > 1 else None
    check_shard_layout(config.output_dir, spec.name, samples, shard)
    if shard is None and (finished := finished_run(config, resolve_device(config.device), dataset)) is not None:
        # Nothing to caption: the earlier run's files stay exactly as they are (its timings included).
        predictions_path = results_file(config.output_dir, PREDICTIONS_JSONL, spec.name)
        log(f"{predictions_path} already complete: {len(samples)}/{len(samples)} samples, nothing to do")
        return RunnerResult(
            model_name=spec.name,
            status="completed",
            predictions_file=str(predictions_path),
            manifest_file=str(results_file(config.output_dir, RUN_MANIFEST, spec.name)),
            num_samples=len(samples),
            num_written=len(samples),
            num_errors=finished.num_errors,
        )
    if shard is not None:
        # Samples an earlier merge already holds (all of them, maybe with another shard count; or a smaller --limit
        # of these shards) are not captioned again: the next merge takes them from the shard files they are in.
        merged: set[str] = set()
        complete = merged_is_complete(config.output_dir, spec.name, samples)
        if not config.overwrite and (complete or merged_shard_count(config.output_dir, spec.name) == shard.count):
            merged = merged_sample_ids(config.output_dir, spec.name)
        shard_samples = samples_of_shard(samples, shard)
        samples = [sample for sample in shard_samples if sample.sample_id not in merged]
        if not samples and shard_samples:
            merged_file = results_file(config.output_dir, PREDICTIONS_JSONL, spec.name)
            log(f"{merged_file} {'is complete' if complete else 'holds every sample of this shard'}: nothing to do")
            return RunnerResult(
                model_name=spec.name,
                status="completed",
                predictions_file=str(results_file(config.output_dir, PREDICTIONS_JSONL, spec.name)),
                manifest_file=str(results_file(config.output_dir, RUN_MANIFEST, spec.name)),
                num_samples=len(shard_samples),
                num_written=len(shard_samples),
                num_errors=0,
            )
        log(f"shard {shard.index}/{shard.count}: {len(samples)} sample(s)")
        if not samples:
            raise RunnerError(f"shard {shard.index}/{shard.count} has no samples (more shards than samples?)", 2)
        predictions_path = shard.predictions(config.output_dir, spec.name)
        manifest_path = shard.manifest(config.output_dir, spec.name)
    else:
        predictions_path = results_file(config.output_dir, PREDICTIONS_JSONL, spec.name)
        manifest_path = results_file(config.output_dir, RUN_MANIFEST, spec.name)
    csv_path = results_file(config.output_dir, PREDICTIONS_CSV, spec.name)
    with run_lock(predictions_path):
        device = resolve_device(config.device)
        dtype_name = resolve_dtype(config.dtype, device, spec)
        from runner.adapters import adapter_for

        adapter_class = adapter_class or adapter_for(spec.adapter)
        max_side = config.max_image_side if config.max_image_side is not None else spec.max_image_side

        manifest = planned_manifest(config, spec, device, len(samples), dataset.format, dataset.split)
        if shard is not None:
            manifest.shard = {"index": shard.index, "count": shard.count}  # type: ignore[attr-defined]

        # --- resume or refuse to mix -------------------------------------------------------------------------
        if predictions_path.exists() and predictions_path.stat().st_size > 0:
            previous = _previous_manifest(manifest_path)
            ours = compatibility(manifest.model_dump())
            if config.overwrite:
                moved = move_aside([predictions_path, manifest_path] + ([csv_path] if shard is None else []))
                log(f"--overwrite: moved previous files aside: {', '.join(str(p) for p in moved)}")
            elif previous is None:
                raise RunnerError(
                    f"{predictions_path} exists but {manifest_path} does not, so it cannot be checked that it was made "
                    "with the same arguments; choose another --output-dir or pass --overwrite (moves it aside)",
                    2,
                )
            elif previous.get("data_sha256") != manifest.data_sha256:
                raise RunnerError(
                    f"{predictions_path} was made from another data file ({previous.get('data_file')}, sha256 "
                    f"{str(previous.get('data_sha256'))[:12]}...; now {manifest.data_file}, sha256 "
                    f"{manifest.data_sha256[:12]}...): its samples cannot be mixed with this one's. Choose another "
                    "--output-dir, or pass --overwrite (moves the old files aside)",
                    2,
                )
            elif compatibility(previous) != ours:
                theirs = compatibility(previous)
                differences = {k: (theirs[k], ours[k]) for k in COMPATIBILITY_KEYS if theirs[k] != ours[k]}
                raise RunnerError(
                    f"{predictions_path} was made with other arguments {differences} (previous, now); choose another "
                    "--output-dir or pass --overwrite (moves the old files aside)",
                    2,
                )
            if previous is not None and not config.overwrite:
                # Checked after loading (it needs the processor): the prompt these predictions were made with.
                manifest.prompt_fingerprint = previous.get("prompt_fingerprint")  # type: ignore[attr-defined]
        done = {record.sample_id: record for record in read_done(predictions_path, log)}
        todo_samples = [(order, s) for order, s in enumerate(samples) if s.sample_id not in done]
        if done:
            log(f"resuming: {len(done)} sample(s) already in {predictions_path}, {len(todo_samples)} to go")
        write_json_atomic(manifest_path, manifest)

        stats = RunStats(batch_size_used=fixed_batch_size)
        timings: dict[str, float] = {}
        already = [done[s.sample_id] for s in samples if s.sample_id in done]
        decoders: list[Any] = []  # the one decoder of the loaded model, for the manifest
        progress = Progress(config.progress, len(samples), len(already), sum(1 for r in already if r.error))  # type: ignore[arg-type]
        if todo_samples:
            stale = mark_derived_stale(config.output_dir, spec.name)
            if stale:
                log(f"predictions will change: marked {', '.join(p.name for p in stale)} stale (scoring rebuilds them)")
            try:
                _generate_all(
                    config, spec, adapter_class, device, dtype_name, max_side, todo_samples, predictions_path, manifest,
                    stats, timings, log, progress, decoders,
                )  # fmt: skip
            except BaseException as error:
                # What was written stays (a restart resumes); the manifest says the run did not finish, and why.
                manifest.status = "failed"  # type: ignore[attr-defined]
                manifest.message = f"{type(error).__name__}: {error}"  # type: ignore[attr-defined]
                manifest.batch_size_used, manifest.oom_retries, manifest.timings = (
                    stats.batch_size_used, stats.oom_retries, timings,
                )  # fmt: skip
                manifest.finished_at = now()
                if decoders:
                    manifest.decode = decoders[0].report()  # type: ignore[attr-defined]
                manifest.image_reuse = image_reuse_record(config, stats)
                try:
                    write_json_atomic(manifest_path, manifest)
                except OSError as write_error:  # e.g. the same full disk: the first error is the one to report
                    log(f"WARNING: could not record the failure in {manifest_path}: {write_error}")
                raise
        progress.close()
        if todo_samples:
            # What the console showed: samples over wall-clock time from the model load on (timings.samples_per_s is
            # the time inside generate() only, so it is higher).
            wall_s, wall_rate = progress.wall()
            timings["wall_s"] = round(wall_s, 3)
            timings["wall_samples_per_s"] = wall_rate or 0.0
        if decoders:
            manifest.decode = decoders[0].report()  # type: ignore[attr-defined]  (path that ran, compilations)
        manifest.image_reuse = image_reuse_record(config, stats)

        # --- outputs for people and for the orchestrator -------------------------------------------------------
        all_records = {record.sample_id: record for record in read_done(predictions_path)}
        wanted = {s.sample_id for s in samples}
        written = [all_records[s.sample_id] for s in samples if s.sample_id in all_records]
        if shard is None:  # a shard's CSV is the merge's (contract.shards)
            write_predictions_csv(csv_path, samples, all_records)
        errors_by_kind = Counter(record.error.split(":", 1)[0] for record in written if record.error)
        manifest.batch_size_used = stats.batch_size_used
        manifest.oom_retries = stats.oom_retries
        manifest.timings = timings
        manifest.num_errors = sum(errors_by_kind.values())
        manifest.errors_by_kind = dict(errors_by_kind)
        manifest.finished_at = now()
        manifest.status = "completed"  # type: ignore[attr-defined]
        manifest.num_written = len(written)  # type: ignore[attr-defined]
        manifest.num_written_this_run = stats.written  # type: ignore[attr-defined]
        write_json_atomic(manifest_path, manifest)
        missing = len(wanted) - len(written)
        return RunnerResult(
            model_name=spec.name,
            status="completed" if missing == 0 else "failed",
            predictions_file=str(predictions_path),
            manifest_file=str(manifest_path),
            num_samples=len(samples),
            num_written=len(written),
            num_errors=manifest.num_errors,
            samples_per_second=timings.get("samples_per_s"),
            message=None if missing == 0 else f"{missing} sample(s) have no prediction",
        )


def image_reuse_record(config: RunConfig, stats: RunStats) -> dict[str, Any]:
    """`<model>_run.json` `image_reuse`: the setting, whether it was in effect (and why not), how many images the
    vision tower encoded, the distinct images and the samples generated in this run (a resume counts its own)."""
    from runner.adapters.image_reuse import idle_report

    # No model loaded: nothing was generated (every sample already written).
    report = stats.image_reuse.report() if stats.image_reuse is not None else idle_report(config.reuse_images == "on")
    return {**report, "distinct_images": len(stats.images), "samples": stats.samples_generated}


def _previous_manifest(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return read_json(path, RunManifest).model_dump()
    except ValueError as error:
        raise RunnerError(f"{error}; choose another --output-dir or pass --overwrite", 2) from None


def _generate_all(
    config: RunConfig,
    spec: ModelSpec,
    adapter_class: Any,
    device_str: str,
    dtype_name: str,
    max_side: int | None,
    todo_samples: list[tuple[int, Sample]],
    predictions_path: Path,
    manifest: RunManifest,
    stats: RunStats,
    timings: dict[str, float],
    log: Callable[[str], None],
    progress: Progress,
    decoders: list[Any],
) -> None:
    import torch

    from runner.images import ImageLimits, header_pixels, load_image, prefetch_batches

    device = torch.device(device_str)
    dtype = getattr(torch, dtype_name)
    source = str(config.model_path) if config.model_path else spec.hub_id
    log(f"loading {spec.name} from {source} ({dtype_name} on {device_str})")
    progress.loading()
    started = time.perf_counter()
    revision = None if config.model_path else manifest.revision
    loaded = adapter_class.load(source, revision=revision, dtype=dtype, device=device, spec=spec)
    adapter = adapter_class(spec, loaded, device, dtype)
    timings["load_s"] = round(time.perf_counter() - started, 3)
    from runner.decoding import make_decoder
    from runner.patches import apply_patches

    if device.type == "cuda":
        for note in apply_patches(adapter.model, spec.patches):
            log(note)
    cache = config.compile_cache or config.output_dir / ".torch-compile"
    adapter.decoder = make_decoder(config.decode or spec.decode, cache_dir=cache, log=log)
    decoders.append(adapter.decoder)
    adapter.image_reuse.enable(config.reuse_images == "on", log=log)
    stats.image_reuse = adapter.image_reuse
    if config.reuse_images == "on" and not adapter.image_reuse.active:
        log(f"image reuse: off for {spec.name}: {adapter.image_reuse.reason}")
    manifest.resolved_revision = adapter.resolved_revision
    # What generate() is given besides GREEDY and the lengths, as the loaded model resolved it (pad id, stop ids).
    manifest.generate_kwargs_used = {"pad_token_id": adapter.pad_token_id, **adapter.generation_kwargs()}  # type: ignore[attr-defined]
    for key, value in adapter.manifest_extras().items():
        setattr(manifest, key, value)
    manifest.device_name = device_name(device_str)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    # The text the model sees depends on the checkpoint's chat template too (a new revision, a template that writes
    # today's date): a fingerprint of it must match the one the existing predictions were made with.
    template = config.prompt_template
    assert template is not None  # chosen by run() once the data set was read
    fingerprint = prompt_fingerprint(adapter.build_prompt(template.format(query="<query>")))
    recorded = getattr(manifest, "prompt_fingerprint", None)
    if recorded and recorded != fingerprint:
        raise RunnerError(
            f"the prompt {spec.name} is given changed since {predictions_path.name} was made (its chat template "
            "renders differently now); choose another --output-dir or pass --overwrite (moves the old files aside)",
            2,
        )
    manifest.prompt_fingerprint = fingerprint  # type: ignore[attr-defined]
    pending = [
        PendingSample(sample, adapter.build_prompt(template.format(query=sample.query)), order)
        for order, sample in todo_samples
    ]
    # The queries of one image run together (in one batch or consecutive ones), so its vision features are
    # computed once (adapter.image_reuse); images of similar size and, within an image, prompts of similar length
    # waste less padding. The order is deterministic; the merged predictions file is in data order (contract.shards).
    sizes = {p.sample.image_path: header_pixels(p.sample.image_path) for p in pending}
    first_seen: dict[str, int] = {}
    for p in pending:
        first_seen.setdefault(p.sample.image_path, p.order)
    pending.sort(key=lambda p: (sizes[p.sample.image_path], first_seen[p.sample.image_path], len(p.prompt), p.order))
    limits = ImageLimits(max_side=max_side, max_pixels=config.max_image_pixels)

    def load(item: PendingSample) -> Any:
        return load_image(item.sample.image_path, limits)

    if config.batch_size == AUTO:
        stats.batch_size_used = _auto_batch_size(config, spec, adapter, device, pending, load, manifest, log)
    batch_size = stats.batch_size_used

    writer = PredictionWriter(predictions_path)
    generated_count = 0
    # Images are loaded a few batches further ahead than the processor works, so it never waits for a decode.
    ahead = max(2, config.preprocess_workers + 1)
    image_batches = prefetch_batches(
        batched(pending, batch_size), load, num_workers=config.num_workers, batches_ahead=ahead
    )
    try:
        workers = max(1, config.preprocess_workers)
        image_keys = adapter.image_reuse.active  # hash each image's pixels (in the workers) only when reusing
        for batch, failed, ready, prepared in _preprocess_ahead(adapter, spec, image_batches, workers, image_keys):
            records = dict(failed)
            started = time.perf_counter()
            for item, prediction, error in _generate_with_oom_retry(adapter, ready, prepared, config, stats):
                records[id(item)] = _record(spec, item, prediction, error)
            stats.generate_s += time.perf_counter() - started
            generated_count += len(ready)
            stats.samples_generated += len(ready)
            stats.images.update(item.sample.image_path for item, _ in ready)
            writer.write_batch([records[id(item)] for item in batch])
            stats.written += len(batch)
            progress.update(len(batch), sum(1 for item in batch if records[id(item)].error))
    finally:
        writer.close()
    timings["generate_s"] = round(stats.generate_s, 3)
    timings["samples_per_s"] = round(generated_count / stats.generate_s, 3) if stats.generate_s > 0 else 0.0
    if device.type == "cuda":
        manifest.peak_gpu_memory_bytes = int(torch.cuda.max_memory_allocated(device))


def _auto_batch_size(
    config: RunConfig, spec: ModelSpec, adapter: Any, device: Any, pending: list[PendingSample], load: Any,
    manifest: RunManifest, log: Callable[[str], None],
) -> int:  # fmt: skip
    """--batch-size auto after loading: free GPU memory / memory per sample (measured, or estimated from the config
    and one real sample's inputs: its exact prompt length and pixel count)."""
    import torch

    from runner.images import ImageLoadError
    from runner.memory import gb_per_sample

    if device.type != "cuda":
        log(f"batch size auto: {AUTO_BATCH_CPU} (CPU)")
        return auto_batch_size(1.0, None, len(pending))
    free = int(torch.cuda.mem_get_info(device)[0])
    sample_inputs = None
    if spec.gpu_gb_per_sample is None:
        # The longest prompt of the run (the sort puts the largest images last), its image really preprocessed.
        probe = max(pending, key=lambda item: len(item.prompt))
        try:
            sample_inputs = adapter.preprocess([load(probe)], [probe.prompt])
        except ImageLoadError:
            sample_inputs = None
    per_sample, how = gb_per_sample(spec, adapter.model.config, config.max_new_tokens, sample_inputs)
    size = auto_batch_size(per_sample, free, len(pending))
    manifest.gb_per_sample = {"value": per_sample, "source": how}  # type: ignore[attr-defined]
    log(f"batch size auto: {size} ({free / 1e9:.1f} GB free, {per_sample:.3f} GB per sample, {how})")
    return size


def _preprocess_ahead(
    adapter: Any,
    spec: ModelSpec,
    image_batches: Iterator[tuple[list[PendingSample], list[Any]]],
    workers: int = 1,
    image_keys: bool = False,
) -> Iterator[tuple[list[PendingSample], dict[int, PredictionRecord], list[tuple[PendingSample, Any]], Any]]:
    """Yield (batch, records of failed images, ready (item, image) pairs, Future of its PreparedBatch) IN ORDER
    while `workers` threads already run the processor on the next batches, so tokenising and pixel preprocessing
    overlap generation instead of leaving the GPU idle between batches. With `image_keys` the workers also hash
    each image's pixels (the key image reuse caches its features under).

    Each worker holds its OWN processor copy: a fast tokenizer called with padding from two threads at once fails
    ("Already borrowed"), since padding settings live on the shared Rust object. Image decoding, resizing and the
    tokenizers' Rust code release the GIL, so threads do run side by side."""
    import copy
    import queue
    from concurrent.futures import ThreadPoolExecutor

    from runner.images import ImageLoadError

    processors: queue.Queue[Any] = queue.Queue()
    processors.put(adapter.processor)
    for _ in range(workers - 1):
        processors.put(copy.deepcopy(adapter.processor))

    def preprocess(images: list[Any], prompts: list[str]) -> PreparedBatch:
        from runner.adapters.image_reuse import image_content_key

        processor = processors.get()
        try:
            inputs = adapter.preprocess(images, prompts, processor)
        finally:
            processors.put(processor)
        return PreparedBatch(inputs, [image_content_key(image) for image in images] if image_keys else None)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess") as executor:
        ahead: deque[tuple[list[PendingSample], dict[int, PredictionRecord], list[tuple[PendingSample, Any]], Any]]
        ahead = deque()
        for batch, images in image_batches:
            failed: dict[int, PredictionRecord] = {}
            ready: list[tuple[PendingSample, Any]] = []
            for item, image in zip(batch, images, strict=True):
                if isinstance(image, ImageLoadError):
                    failed[id(item)] = _record(spec, item, "", image.record_text())
                else:
                    ready.append((item, image))
            prepared = (
                executor.submit(preprocess, [image for _, image in ready], [item.prompt for item, _ in ready])
                if ready
                else None
            )
            ahead.append((batch, failed, ready, prepared))
            if len(ahead) > workers:  # one batch per worker in preparation while the oldest is generated
                yield ahead.popleft()
        yield from ahead


def _record(spec: ModelSpec, item: PendingSample, prediction: str, error: str | None) -> PredictionRecord:
    sample = item.sample
    return PredictionRecord(
        sample_id=sample.sample_id,
        image=sample.image,
        query=sample.query,
        prediction=prediction,
        references=sample.references,
        error=error,
        model_name=spec.name,
        prompt=item.prompt,
    )


def _generate_with_oom_retry(
    adapter: Any, ready: list[tuple[PendingSample, Any]], prepared: Any, config: RunConfig, stats: RunStats
) -> list[tuple[PendingSample, str, str | None]]:
    """Generate for `ready` in chunks of the current batch size; on CUDA OOM halve it and retry, down to 1.

    `prepared` (a Future of the PreparedBatch of all of `ready`) is used while the whole batch fits; smaller
    chunks after an OOM are preprocessed here. The reduced size is kept for the rest of the run (the next batch
    would run out of memory too). Each generate call names its rows' images to the adapter's image reuse.
    """
    import torch

    results: list[tuple[PendingSample, str, str | None]] = []
    whole: PreparedBatch | None = prepared.result() if prepared is not None else None
    key_of = None
    if whole is not None and whole.image_keys is not None:
        key_of = {id(item): key for (item, _), key in zip(ready, whole.image_keys, strict=True)}
    queue = list(ready)
    while queue:
        chunk, queue = queue[: stats.batch_size_used], queue[stats.batch_size_used :]
        try:
            if whole is not None and len(chunk) == len(ready):
                inputs = adapter.to_device(whole.inputs)
            else:
                inputs = adapter.build_inputs([image for _, image in chunk], [item.prompt for item, _ in chunk])
            whole = None
            keys = [key_of[id(item)] for item, _ in chunk] if key_of is not None else None
            with adapter.image_reuse.batch(keys, inputs):
                output = adapter.generate(inputs, config.max_new_tokens, config.min_new_tokens)
            predictions = adapter.decode(output, inputs)
        except torch.cuda.OutOfMemoryError:
            inputs = output = None  # free what the failed attempt held before retrying
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            stats.oom_retries += 1
            if len(chunk) == 1:
                item, _ = chunk[0]
                results.append((item, "", "oom: CUDA out of memory even with batch size 1"))
                continue
            stats.batch_size_used = max(1, min(stats.batch_size_used, len(chunk)) // 2)
            queue = chunk + queue
            continue
        results.extend((item, prediction, None) for (item, _), prediction in zip(chunk, predictions, strict=True))
    return results
