"""`python -m orchestrator reproduce --manifest results/run_manifest.json`: rerun an ablation with the pins its
manifest recorded (model revisions, image digests, arguments, data sha256) into a NEW results folder, then report
per model how the predictions and the metrics differ from the original run."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contract import (
    ABLATION_MANIFEST,
    METRICS_JSON,
    PREDICTIONS_JSONL,
    RUN_MANIFEST,
    AblationManifest,
    MetricsFile,
    PredictionRecord,
    RunManifest,
    file_sha256,
    read_json,
    read_jsonl,
    results_file,
    write_json_atomic,
)
from orchestrator.ablation import Ablation, make_engine
from orchestrator.engines import Engine
from orchestrator.plan import ENGINE_SETTINGS, AblationOptions, PlanError

REPRODUCE_REPORT = "reproduce_report.json"
# Arguments that are copied from the original run as they were.
_COPIED = (
    "batch_size", "max_new_tokens", "timeout", "parallel", "limit", "dtype", "prompt_template", "shm_size", "shards",
    "decode", "reuse_images", "metrics", "human_baseline", "data_format", "split",
)  # fmt: skip


def _predictions(folder: Path, model: str) -> dict[str, str]:
    path = results_file(folder, PREDICTIONS_JSONL, model)
    if not path.exists():
        return {}
    return {record.sample_id: record.prediction for record in read_jsonl(path, PredictionRecord)}


def _metrics(folder: Path, model: str) -> dict[str, float | None]:
    path = results_file(folder, METRICS_JSON, model)
    return read_json(path, MetricsFile).metrics if path.exists() else {}


def compare_model(old_dir: Path, new_dir: Path, model: str) -> dict[str, Any]:
    """How one model's predictions and metrics differ between two results folders."""
    old, new = _predictions(old_dir, model), _predictions(new_dir, model)
    shared = sorted(old.keys() & new.keys())
    differing = [sid for sid in shared if old[sid] != new[sid]]
    old_metrics, new_metrics = _metrics(old_dir, model), _metrics(new_dir, model)
    metric_deltas = {}
    for key in sorted(old_metrics.keys() | new_metrics.keys()):
        a, b = old_metrics.get(key), new_metrics.get(key)
        metric_deltas[key] = {
            "original": a,
            "reproduced": b,
            "delta": (b - a) if a is not None and b is not None else None,
        }
    return {
        "samples_compared": len(shared),
        "identical_predictions": len(shared) - len(differing),
        "different_predictions": len(differing),
        "only_in_original": len(old.keys() - new.keys()),
        "only_in_reproduction": len(new.keys() - old.keys()),
        "examples": [{"sample_id": s, "original": old[s], "reproduced": new[s]} for s in differing[:3]],
        "metrics": metric_deltas,
    }


def batch_sizes_used(results_dir: Path, models: list[str]) -> dict[str, int]:
    """The batch size each model's runner actually used (`auto` resolves per GPU, and bf16 greedy outputs can
    depend on the batch), so a reproduction on another card batches the same way."""
    sizes: dict[str, int] = {}
    for model in models:
        path = results_file(results_dir, RUN_MANIFEST, model)
        if not path.exists():
            continue
        run = read_json(path, RunManifest)
        if run.batch_size_used >= 1:
            sizes[model] = run.batch_size_used
        if run.oom_retries:
            print(
                f"warning: {model} ran out of GPU memory {run.oom_retries} time(s) in the original run and finished at "
                f"batch {run.batch_size_used}; its first batches were larger, so predictions may differ"
            )
    return sizes


def _pinned_image(engine: Engine, digest: str | None, tag: str | None) -> str | None:
    """The exact image the original run used when this engine has it, else its tag (with a warning)."""
    if digest and engine.image_digest(digest):
        return digest
    if digest:
        print(f"warning: image {digest} is not on this engine; using {tag} (differences may come from the image)")
    return tag


def _entries(entries: dict[str, dict[str, Any]]) -> list[Any]:
    from runner.registry import ModelSpec

    return [ModelSpec(name=name, **fields) for name, fields in entries.items()]


def options_from_manifest(manifest: AblationManifest, args: argparse.Namespace, engine: Engine) -> AblationOptions:
    original = manifest.arguments
    data_file = Path(args.data or manifest.data_file)
    if not data_file.is_file():
        raise PlanError(f"data file {data_file} not found (the original run read it there; pass --data)")
    digest = file_sha256(data_file)
    if digest != manifest.data_sha256:
        raise PlanError(
            f"data file {data_file} differs from the original run's (sha256 {digest} != {manifest.data_sha256})"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    output_dir = args.output_dir or args.manifest.resolve().parent.with_name(
        f"{args.manifest.resolve().parent.name}-reproduce-{stamp}"
    )
    if output_dir.resolve() == args.manifest.resolve().parent:
        raise PlanError("--output-dir must be a new folder, not the original run's")
    images: dict[str, str] = {}
    if engine.name == "docker":
        for record in manifest.models:
            image = _pinned_image(engine, record.image_digest, record.image)
            if image:
                images[record.family] = image
        scoring = _pinned_image(engine, manifest.scoring_image_digest, manifest.scoring_image)
        if scoring:
            images["scoring"] = scoring
    model_path_root = args.model_path_root or original.get("model_path_root")
    models_file = None
    if manifest.catalogue_entries:
        # The user's own entries, rebuilt from the manifest into the new folder (the original file may be gone).
        from runner.registry import catalogue_toml, read_catalogue_file

        Path(output_dir).mkdir(parents=True, exist_ok=True)
        models_file = Path(output_dir) / "models_file.toml"
        models_file.write_text(catalogue_toml(_entries(manifest.catalogue_entries)), encoding="utf-8")
        read_catalogue_file(models_file)  # written back exactly: a bad round trip fails here, before any work
    options = AblationOptions(
        models=[getattr(record, "reference", None) or record.model_name for record in manifest.models],
        models_file=models_file,
        data_file=data_file,
        output_dir=Path(output_dir),
        gpus=args.gpus or original.get("gpus", "auto"),
        engine=engine.name,
        model_path_root=Path(model_path_root) if model_path_root else None,
        image_root=Path(original["image_root"]) if original.get("image_root") else None,
        revisions={
            r.model_name: r.resolved_revision or r.revision
            for r in manifest.models
            if r.resolved_revision or r.revision
        },
        images=images,
        report=original.get("report", True),
    )
    for key in _COPIED:
        if key in original and original[key] is not None:
            setattr(options, key, original[key])
    options.batch_sizes = batch_sizes_used(args.manifest.resolve().parent, options.models)
    return options


def engine_settings(manifest: AblationManifest, args: argparse.Namespace) -> dict[str, Any]:
    """The engine settings of the reproduction: the original run's (its manifest's engine_settings; an older
    manifest's arguments) when it uses the same engine, each replaced by an option given on the command line."""
    engine = args.engine or manifest.engine
    keys = ENGINE_SETTINGS.get(engine, ())
    recorded = manifest.engine_settings or {key: manifest.arguments[key] for key in keys if key in manifest.arguments}
    settings = {key: value for key, value in recorded.items() if key in keys} if engine == manifest.engine else {}
    for key in keys:
        given = getattr(args, key, None)
        if given not in (None, []):
            settings[key] = given
    for key in ("slurm_setup", "sif_dir"):
        if settings.get(key):
            settings[key] = Path(settings[key])
    return settings


def _other_manifests_hint(missing: Path) -> str:
    """Runs one folder further down (`make demo` writes results/demo/; `make reproduce` looks in results/)."""
    folder = missing.parent
    found = sorted(folder.glob(f"*/{missing.name}")) if folder.is_dir() else []
    if not found:
        return ""
    shown = ", ".join(str(path) for path in found[:5])
    return f"; runs found one folder down: {shown} (e.g. make reproduce MANIFEST={found[0]})"


def reproduce_command(args: argparse.Namespace) -> int:
    if not args.manifest.is_file():
        raise PlanError(f"manifest {args.manifest} not found" + _other_manifests_hint(args.manifest))
    manifest = read_json(args.manifest, AblationManifest)
    settings = engine_settings(manifest, args)
    engine_options = AblationOptions(models=[], data_file=Path(), output_dir=Path(), **settings)
    engine = make_engine(args.engine or manifest.engine, args.container_user, engine_options.memory, engine_options)
    options = options_from_manifest(manifest, args, engine)
    for key, value in settings.items():
        setattr(options, key, value)
    if settings:
        shown = ", ".join(f"{key}={value}" for key, value in settings.items() if value not in (None, [], ""))
        print(f"engine {engine.name}: {shown or 'default settings'}")
    print(f"reproducing {args.manifest} into {options.output_dir.resolve()}")
    ablation = Ablation(options, engine)
    ablation.prepare()
    outcome = ablation.run()
    old_dir, new_dir = args.manifest.resolve().parent, outcome.plan.output_dir
    report = {
        "original_manifest": str(args.manifest.resolve()),
        "reproduction_manifest": str(new_dir / ABLATION_MANIFEST),
        "models": {record.model_name: compare_model(old_dir, new_dir, record.model_name) for record in manifest.models},
    }
    write_json_atomic(new_dir / REPRODUCE_REPORT, report)
    print("Differences from the original run:")
    for model, diff in report["models"].items():
        changed = [f"{k} {v['delta']:+.4f}" for k, v in diff["metrics"].items() if v["delta"]]
        print(
            f"  {model}: {diff['identical_predictions']}/{diff['samples_compared']} predictions identical, "
            f"{diff['different_predictions']} different, {diff['only_in_original']} missing; "
            + ("metrics: " + ", ".join(changed) if changed else "metrics identical")
        )
    print(f"written to {new_dir / REPRODUCE_REPORT}")
    return outcome.exit_code
