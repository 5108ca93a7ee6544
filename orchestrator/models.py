"""`python -m orchestrator models`: every model you can name, with its family, Hub id, image and what is verified."""

from __future__ import annotations

import argparse

from orchestrator.plan import PlanError
from runner.registry import Catalogue, CatalogueError


def models_command(args: argparse.Namespace) -> int:
    try:
        catalogue = Catalogue([args.models_file] if args.models_file else [])
    except CatalogueError as error:
        raise PlanError(str(error)) from None
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Models (`--models a,b` or `all`; any Hub model: hf:Org/Name\\[@revision])", show_lines=False)
    for column in ("name", "in all", "family / adapter", "Hub id", "image", "verified offline here"):
        table.add_column(column, overflow="fold")
    for spec in catalogue.models.values():
        source = "" if spec.source.endswith("catalogue.toml") and "runner" in spec.source else f" ({spec.source})"
        table.add_row(
            spec.name + source,
            "yes" if spec.in_all else "",
            f"{spec.family} / {spec.adapter}",
            spec.hub_id,
            spec.image_ref,
            spec.verified or "-",
        )
    table.add_row("hf:Org/Name", "", "generic / auto", "any image-text-to-text model", "vlm-ablation/generic:latest",
                  "the generic adapter on 8+ architectures' tiny checkpoints")  # fmt: skip
    Console(width=200 if not Console().is_terminal else None).print(table)
    print("Everything not verified offline (real weights, bf16 on a GPU, memory, caption quality) needs a GPU host.")
    return 0
