"""`python -m orchestrator fetch`: download models' weights into the cache ahead of an ablation (network on)."""

from __future__ import annotations

import argparse

from contract import write_json_atomic
from orchestrator.ablation import Ablation, make_engine
from orchestrator.cli import parse_image_overrides
from orchestrator.plan import AblationOptions, Plan, PlanError, check_writable_dir, default_hf_cache, parse_models
from runner.registry import Catalogue, CatalogueError, UnknownModelError

FETCH_REVISIONS = "fetch_revisions.json"


def fetch_command(args: argparse.Namespace) -> int:
    models = parse_models(args.models)
    try:
        specs = Catalogue([args.models_file] if args.models_file else []).resolve(models)
    except (UnknownModelError, CatalogueError) as error:
        raise PlanError(str(error)) from None
    output_dir = args.output_dir.expanduser().resolve()
    check_writable_dir(output_dir)
    hf_cache = (args.hf_cache or default_hf_cache()).expanduser().resolve()
    options = AblationOptions(
        models=models,
        data_file=output_dir,
        output_dir=output_dir,
        hf_cache=hf_cache,
        images=parse_image_overrides(args.image),
    )
    # No data file: a plan with only what the fetch step uses (models, cache, results folder for the logs).
    plan = Plan(
        options=options,
        specs=specs,
        data_file=output_dir / FETCH_REVISIONS,
        data_sha256="",
        num_samples=0,
        output_dir=output_dir,
        model_path_root=None,
        image_root=None,
        hf_cache=hf_cache,
        dataset_summary="",
        image_paths=[],
    )
    ablation = Ablation(options, make_engine(args.engine, args.container_user))
    ablation.attach(plan, scoring=False)
    print(f"fetching {len(specs)} model(s) into {hf_cache} ({ablation.engine.name} engine)")
    ablation.fetch()
    revisions = {
        o.record.model_name: {
            "model_id": o.record.model_id,
            "revision": o.record.revision,
            "resolved_revision": o.record.resolved_revision,
            "status": "failed" if o.record.status == "failed" else "fetched",
            "message": o.record.message,
        }
        for o in ablation.outcomes
    }
    write_json_atomic(output_dir / FETCH_REVISIONS, revisions)
    for name, entry in revisions.items():
        print(f"  {name}: {entry['model_id']}@{entry['revision']} -> {entry['resolved_revision'] or entry['message']}")
    print(f"resolved revisions written to {output_dir / FETCH_REVISIONS}")
    return 1 if any(entry["status"] == "failed" for entry in revisions.values()) else 0
