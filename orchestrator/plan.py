"""An ablation's plan: what the user asked for, checked up front so bad input fails before any work starts."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from contract import (
    PREDICTIONS_JSONL,
    RUN_MANIFEST,
    DataFileError,
    RunManifest,
    file_sha256,
    load_dataset,
    read_json,
    results_file,
)
from contract.shards import shards_on_disk
from runner.loop import RunnerError, is_batch_size, validate_prompt_template
from runner.registry import MODELS, Catalogue, CatalogueError, ModelSpec, UnknownModelError
from scoring.java import ScoringError
from scoring.metrics import select_metrics


class PlanError(ValueError):
    """Input that cannot work; the message names the model, file or folder and what is wrong with it."""


@dataclass(frozen=True)
class GpuSelection:
    """Which GPUs containers/processes see: all of them, none (CPU), or the listed ids."""

    mode: Literal["all", "none", "ids"]
    ids: tuple[str, ...] = ()

    def describe(self) -> str:
        return {"all": "all GPUs", "none": "no GPU: CPU"}.get(self.mode, "GPU " + ",".join(self.ids))


def parse_gpus(text: str, environ: dict[str, str] | None = None) -> GpuSelection | None:
    """`all`, `none`, `0,1` or `auto`; `auto` honours CUDA_VISIBLE_DEVICES and otherwise returns None
    (the engine decides: all GPUs where it has them, else none)."""
    environ = dict(os.environ) if environ is None else environ
    text = text.strip().lower()
    if text == "auto":
        visible = environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            return None
        text = visible.strip() or "none"
        if text in ("-1", "none"):
            return GpuSelection("none")
    if text == "all":
        return GpuSelection("all")
    if text in ("none", "cpu", ""):
        return GpuSelection("none")
    ids = tuple(part.strip() for part in text.split(","))
    if not all(ids):
        raise PlanError(f"--gpus {text!r}: expected all, none, auto or a comma list of GPU ids such as 0,1")
    return GpuSelection("ids", ids)


@dataclass
class AblationOptions:
    """Everything a user can set for one ablation (the CLI's arguments, also recorded in the manifest)."""

    models: list[str]
    data_file: Path
    output_dir: Path
    batch_size: int | Literal["auto"] = "auto"
    batch_sizes: dict[str, int] = field(default_factory=dict)  # per model, over batch_size (reproduce pins these)
    max_new_tokens: int = 64
    gpus: str = "auto"
    engine: str = "auto"
    model_path_root: Path | None = None
    timeout: float | None = None  # seconds per model; None: no limit
    parallel: bool = False
    image_root: Path | None = None
    data_format: str | None = None  # None: detected from the data file's content
    split: str | None = None  # a Karpathy split file's split (None: test)
    limit: int | None = None
    dtype: str | None = None
    prompt_template: str | None = None
    hf_cache: Path | None = None
    skip_fetch: bool = False
    shm_size: str = "2g"
    revisions: dict[str, str] = field(default_factory=dict)  # model -> Hub revision (reproduce pins these)
    images: dict[str, str] = field(default_factory=dict)  # family (or "scoring") -> image reference
    report: bool = True
    container_user: str | None = None  # docker: UID:GID the containers run as (default: the invoking user)
    models_file: Path | None = None  # the user's own catalogue entries (TOML, as runner/catalogue.toml)
    shards: int = 1  # each model's samples in this many shards, one runner process each (contract.shards)
    decode: str | None = None  # runner --decode for every model (None: each catalogue entry's default)
    reuse_images: str | None = None  # runner --reuse-images on|off for every model (None: the runner's default, on)
    # The slurm engine (orchestrator/slurm_engine.py): sbatch options, setup file, runtime, GPUs per task, detach.
    slurm_args: list[str] = field(default_factory=list)
    slurm_runner_args: list[str] = field(default_factory=list)  # runner tasks only, over slurm_args
    slurm_scoring_args: list[str] = field(default_factory=list)  # the scoring job only, over slurm_args
    slurm_setup: Path | None = None
    container_runtime: str = "none"
    slurm_gpus: int = 1
    slurm_gpu_type: str | None = None
    sif_dir: Path | None = None
    detach: bool = False
    memory: str | None = None  # docker: each container's memory limit (e.g. 64g, or auto: each step's figure)
    overwrite: bool = False  # move the planned models' earlier results aside (never deleted) instead of refusing
    metrics: str | None = None  # scoring --metrics (which metrics to compute); None: all
    human_baseline: bool = True  # scoring adds the leave-one-out human row (off: scoring --no-human-baseline)

    def as_arguments(self) -> dict[str, Any]:
        """JSON-friendly copy for the manifest (never holds a token: tokens are never options)."""
        arguments: dict[str, Any] = {}
        for key, value in vars(self).items():
            arguments[key] = str(value) if isinstance(value, Path) else value
        return arguments

    def engine_settings(self, engine: str) -> dict[str, Any]:
        """The options that configure `engine` (ENGINE_SETTINGS), JSON-friendly, files as absolute paths (a
        reproduction may run from another folder): the manifest's engine_settings."""
        settings = {key: getattr(self, key) for key in ENGINE_SETTINGS.get(engine, ())}
        return {key: str(v.expanduser().resolve()) if isinstance(v, Path) else v for key, v in settings.items()}


# Options that configure an engine rather than the ablation: recorded in run_manifest.json (engine_settings) and
# reused by `reproduce` unless given again. None holds a secret (tokens are never options).
ENGINE_SETTINGS: dict[str, tuple[str, ...]] = {
    "slurm": ("container_runtime", "slurm_args", "slurm_setup", "slurm_gpus", "slurm_gpu_type", "sif_dir"),
    "docker": ("memory", "shm_size"),
    "local": (),
}


def parse_models(text: str) -> list[str]:
    """`all` or a comma list of registry names (order kept, duplicates dropped)."""
    if text.strip().lower() == "all":
        return list(MODELS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise PlanError("--models is empty; give `all` or a comma list of: " + ", ".join(MODELS))
    return list(dict.fromkeys(names))


@dataclass
class Plan:
    options: AblationOptions
    specs: list[ModelSpec]
    data_file: Path  # absolute
    data_sha256: str
    num_samples: int
    output_dir: Path  # absolute, exists, writable
    model_path_root: Path | None
    image_root: Path | None
    hf_cache: Path | None  # the Hugging Face cache folder (None: local checkpoints, no cache needed)
    dataset_summary: str
    image_paths: list[str]  # local images the samples read (URLs left out)
    data_format: str = "csv"  # the format read (detected or named)
    data_split: str | None = None  # the Karpathy split read
    models_file: Path | None = None  # absolute; the user's catalogue entries the runners must see too
    dataset_warnings: list[str] = field(default_factory=list)
    longest_reference_words: int = 0  # what SPICE's parser will meet (orchestrator.resources sizes its heap)

    def model_path(self, model: str) -> Path | None:
        return self.model_path_root / model if self.model_path_root else None


def check_writable_dir(folder: Path) -> None:
    """Create the folder if needed and prove a file can be written there (permissions, read-only mounts)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PlanError(f"results folder {folder} cannot be created: {error.strerror or error}") from error
    if not folder.is_dir():
        raise PlanError(f"results folder {folder} exists but is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise PlanError(f"results folder {folder} is not writable: {error.strerror or error}") from error


def default_hf_cache() -> Path:
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")


def _missing_images(samples: list[Any]) -> list[str]:
    missing = []
    for sample in samples:
        path = sample.image_path
        if path.startswith(("http://", "https://")):
            continue
        if os.path.isdir(path):
            missing.append(f"{sample.image} ({path} is a folder, not an image file)")
        elif not os.access(path, os.R_OK):
            missing.append(f"{sample.image} ({path})")
    return missing


def _data_read(data_file: str | Path, sha256: str, data_format: str, split: str | None) -> str:
    """How a run read its data: the file, its sha256, the format and (Karpathy) the split."""
    return f"{data_file}, sha256 {sha256[:12]}..., {data_format}" + (f" split {split!r}" if split else "")


def predictions_from_other_data(
    output_dir: Path, specs: list[ModelSpec], data_sha256: str, data_format: str, data_split: str | None
) -> list[str]:
    """Each model whose predictions in the folder (merged or a shard's) were made from a data file with another
    sha256, or read as another format or Karpathy split, as its run record says: `model (record: how it was read)`."""
    found = []
    for spec in specs:
        pairs = [
            (results_file(output_dir, PREDICTIONS_JSONL, spec.name), results_file(output_dir, RUN_MANIFEST, spec.name))
        ]
        pairs += [
            (shard.predictions(output_dir, spec.name), shard.manifest(output_dir, spec.name))
            for shard in shards_on_disk(output_dir, spec.name)
        ]
        for predictions, record in pairs:
            if not (predictions.is_file() and predictions.stat().st_size > 0 and record.is_file()):
                continue
            try:
                run = read_json(record, RunManifest)
            except ValueError:
                continue  # its runner says what is wrong with it
            if (run.data_sha256, run.data_format, run.data_split) != (data_sha256, data_format, data_split):
                read = _data_read(run.data_file, run.data_sha256, run.data_format, run.data_split)
                found.append(f"{spec.name} ({record.name}: {read})")
                break
    return found


def resolve_models(names: list[str], models_file: Path | None = None) -> list[ModelSpec]:
    """The catalogue entries of the names a user typed: every bad name reported at once, with suggestions (the ablation,
    and `make demo` before it builds any checkpoint)."""
    if models_file is not None and not models_file.is_file():
        raise PlanError(f"--models-file {models_file}: file not found")
    try:
        return Catalogue([models_file] if models_file else []).resolve(names)
    except (UnknownModelError, CatalogueError) as error:
        raise PlanError(str(error)) from None


def build_plan(options: AblationOptions) -> Plan:
    """Every check that needs no engine, cheapest first. Raises PlanError; touches nothing but the results folder."""
    models_file = options.models_file.expanduser().resolve() if options.models_file else None
    specs = resolve_models(options.models, models_file)
    if not is_batch_size(options.batch_size):
        raise PlanError(f"--batch-size must be `auto` or at least 1, got {options.batch_size!r}")
    for name, size in options.batch_sizes.items():
        if not isinstance(size, int) or size < 1:
            raise PlanError(f"batch size for {name} must be at least 1, got {size!r}")
    if options.max_new_tokens < 1:
        raise PlanError(f"--max-new-tokens must be at least 1, got {options.max_new_tokens}")
    if not isinstance(options.shards, int) or options.shards < 1:
        raise PlanError(f"--shards must be at least 1, got {options.shards!r}")
    if options.timeout is not None and options.timeout <= 0:
        raise PlanError(f"--timeout must be a positive number of seconds, got {options.timeout}")
    try:
        select_metrics(options.metrics)
    except ScoringError as error:
        raise PlanError(str(error)) from None
    if options.prompt_template is not None:
        try:  # the {query} field is checked once the data set is read: a data set without queries needs none
            validate_prompt_template(options.prompt_template, has_queries=False)
        except RunnerError as error:
            raise PlanError(f"--prompt-template: {error}") from None

    data_file = options.data_file.expanduser().resolve()
    image_root = options.image_root.expanduser().resolve() if options.image_root else None
    if image_root is not None and not image_root.is_dir():
        raise PlanError(f"--image-root {image_root} is not a folder")
    if not data_file.is_file():
        raise PlanError(
            f"data file: {data_file}: data file not found. Prepare QuIC-360 with `make quic360` (it writes "
            "data/quic360/test.csv), or point --data (make: DATA_FILE=...) at your own file (docs/DATA.md)"
        )
    try:
        dataset = load_dataset(data_file, image_root=image_root, data_format=options.data_format, split=options.split)
    except DataFileError as error:
        raise PlanError(f"data file: {error}") from None
    except OSError as error:
        raise PlanError(f"data file {data_file} cannot be read: {error.strerror or error}") from None
    if not dataset.samples:
        raise PlanError(f"data file {data_file} has no sample with a reference caption")
    if options.prompt_template is not None:
        try:
            validate_prompt_template(options.prompt_template, dataset.has_queries)
        except RunnerError as error:
            raise PlanError(f"--prompt-template: {error}") from None
    samples = dataset.samples[: options.limit] if options.limit else dataset.samples
    if options.shards > len(samples):
        raise PlanError(f"--shards {options.shards} is more than the {len(samples)} samples to caption")
    missing = _missing_images(samples)
    if missing:
        shown = "; ".join(missing[:3]) + (f"; and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise PlanError(f"data file {data_file}: {len(missing)} image(s) not found or not readable: {shown}")

    model_path_root = options.model_path_root.expanduser().resolve() if options.model_path_root else None
    if model_path_root is not None:
        absent = [spec.name for spec in specs if not (model_path_root / spec.name).is_dir()]
        if absent:
            raise PlanError(
                f"--model-path-root {model_path_root}: no checkpoint folder for {', '.join(absent)} "
                f"(expected {model_path_root}/<model>; `python -m orchestrator tiny` builds tiny ones)"
            )

    hf_cache = options.hf_cache or (None if model_path_root else default_hf_cache())

    output_dir = options.output_dir.expanduser().resolve()
    check_writable_dir(output_dir)
    data_sha256 = file_sha256(data_file)
    if not options.overwrite:
        # The runners would refuse too, but only one by one after the run began: say it once, before anything starts.
        other = predictions_from_other_data(output_dir, specs, data_sha256, dataset.format, dataset.split)
        if other:
            now = _data_read(data_file, data_sha256, dataset.format, dataset.split)
            raise PlanError(
                f"{output_dir} holds predictions made from another data file, format or split: {'; '.join(other)}; "
                f"now {now}. A results folder holds one data set per model: choose another --output-dir, or pass "
                "--overwrite (moves the earlier results aside, never deletes them)"
            )
    return Plan(
        options=options,
        specs=specs,
        data_file=data_file,
        data_sha256=data_sha256,
        num_samples=len(samples),
        output_dir=output_dir,
        model_path_root=model_path_root,
        image_root=image_root,
        hf_cache=hf_cache.expanduser().resolve() if hf_cache else None,
        dataset_summary=dataset.summary_line(),
        data_format=dataset.format,
        data_split=dataset.split,
        image_paths=[s.image_path for s in samples if not s.image_path.startswith(("http://", "https://"))],
        models_file=models_file,
        dataset_warnings=list(dataset.warnings),
        longest_reference_words=max((len(ref.split()) for s in samples for ref in s.references), default=0),
    )


def check_scoring_here(plan: Plan) -> None:
    """For engines whose scoring step runs with this host's files (local; Slurm without containers, on the shared
    file system): every metric the run computes can be computed (SPICE's jars, Java), checked before any model runs
    rather than after all of them."""
    from scoring.engine import ScoringOptions, check_options

    try:
        check_options(ScoringOptions(metrics=plan.options.metrics))
    except ScoringError as error:
        raise PlanError(f"scoring: {error}") from None
