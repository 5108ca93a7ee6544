"""`python -m orchestrator images`: build the runner image of each family (images/runner.Dockerfile with
FAMILY=<family>, pins from images/<family>/requirements.txt) and the scoring image (images/scoring/Dockerfile)
through the Docker SDK, with the repository as the build context.

Every target is attempted even when one fails; a summary line per image follows, and the exit code is 1 when any
failed. Each runner image's build ends with `python -m runner.smoke` (its real model and processor classes on a tiny
checkpoint), so an image that cannot run its models fails here.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.ablation import SCORING_IMAGE
from orchestrator.engines import EngineError
from orchestrator.plan import PlanError
from runner.registry import FAMILIES, IMAGE_PREFIX, Catalogue, CatalogueError, ModelSpec, UnknownModelError

REPO_ROOT = Path(__file__).resolve().parent.parent
SCORING = "scoring"
USER_PINS_DIR = "images/.user-pins"  # a user's own pins files, staged inside the build context (git-ignored)
SPICE_JARS_DIR = "images/spice-jars"  # SPICE's jars for the scoring image, staged inside the build context


@dataclass(frozen=True)
class Target:
    name: str  # a family, or "scoring"
    tag: str
    pins: str | None = None  # a requirements file relative to the repository (None: images/<family>/)


@dataclass
class Built:
    target: Target
    seconds: float
    error: str | None = None


def family_target(family: str) -> Target:
    return Target(family, f"{IMAGE_PREFIX}/{family}:latest")


def scoring_target() -> Target:
    return Target(SCORING, SCORING_IMAGE)


def targets_for_models(specs: list[ModelSpec]) -> list[Target]:
    """What the chosen models need: each one's image (its family's, or its own with its own pins), then scoring."""
    targets: dict[str, Target] = {}
    for spec in specs:
        if spec.pins:
            pins = Path(spec.source).parent / spec.pins
            if not pins.is_file():
                raise PlanError(f"{spec.source}: model {spec.name!r}: pins file {pins} not found")
            staged = REPO_ROOT / USER_PINS_DIR / spec.family / "requirements.txt"
            staged.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pins, staged)
            targets[spec.image_ref] = Target(spec.family, spec.image_ref, str(staged.relative_to(REPO_ROOT)))
        else:
            targets.setdefault(spec.image_ref, Target(spec.family, spec.image_ref))
    targets[SCORING_IMAGE] = scoring_target()
    return list(targets.values())


def parse_targets(families: str | None, models: str | None, models_file: Path | None) -> list[Target]:
    """`--families all|a,b,scoring` or `--models ...` (what those models need)."""
    if models:
        try:
            catalogue = Catalogue([models_file] if models_file else [])  # every field checked (family, name) first
            names = catalogue.all_names() if models.strip().lower() == "all" else [m.strip() for m in models.split(",")]
            return targets_for_models(catalogue.resolve([name for name in names if name]))
        except (UnknownModelError, CatalogueError) as error:
            raise PlanError(str(error)) from None
    text = (families or "all").strip()
    if text.lower() == "all":
        return [*map(family_target, FAMILIES), scoring_target()]
    names = [t.strip() for t in text.split(",") if t.strip()]
    known = [*FAMILIES, SCORING]
    unknown = [t for t in names if t not in known]
    if unknown or not names:
        raise PlanError(f"--families {text!r}: unknown {unknown}; choose from {', '.join(known)} or all")
    return [scoring_target() if name == SCORING else family_target(name) for name in names]


def build_image(client, target: Target, buildargs: dict[str, str], offline: bool) -> None:  # noqa: ANN001
    if target.name == SCORING:
        dockerfile = "images/scoring/Dockerfile"
        needed = [dockerfile]
    else:
        dockerfile = "images/runner.Dockerfile"
        pins = target.pins or f"images/{target.name}/requirements.txt"
        buildargs = {**buildargs, "FAMILY": target.name, "PINS": pins}
        needed = [dockerfile, pins]
    for relative in needed:
        if not (REPO_ROOT / relative).is_file():
            raise PlanError(f"{REPO_ROOT / relative} not found: `images` must run from a checkout of the repository")
    print(f"[{target.name}] building {target.tag} ({', '.join(f'{k}={v}' for k, v in sorted(buildargs.items()))})")
    stream = client.api.build(
        path=str(REPO_ROOT),
        dockerfile=dockerfile,
        tag=target.tag,
        buildargs=buildargs,
        rm=True,
        forcerm=True,
        decode=True,
        # Offline builds get no network at all, so a missing wheel fails loudly instead of waiting on a timeout.
        network_mode="none" if offline else None,
    )
    for chunk in stream:
        if "error" in chunk:
            raise EngineError(chunk["error"].strip())
        for line in str(chunk.get("stream", "")).splitlines():
            if line.strip():
                print(f"[{target.name}] {line}", flush=True)


def stage_spice_jars(offline: bool) -> None:
    """The scoring image carries SPICE's jars: verified copies in its build context, taken from the folder
    `python -m scoring fetch-spice` fills ($SCORING_SPICE_JARS or the user cache), fetched when absent and allowed."""
    from scoring.java import ScoringError
    from scoring.spice import configured_jar_dir, fetch_spice_jars

    source = configured_jar_dir(None)

    def log(line: str) -> None:
        print(f"[{SCORING}] {line}", flush=True)

    try:
        if not offline:
            fetch_spice_jars(source, log=log)
        fetch_spice_jars(REPO_ROOT / SPICE_JARS_DIR, [source], network=False, log=log)
    except ScoringError as error:
        raise PlanError(f"{error}\n(or build the scoring image without SPICE: --skip-spice-jars)") from None


def images_command(args: argparse.Namespace) -> int:
    from orchestrator.docker_engine import connect

    targets = parse_targets(args.families, args.models, args.models_file)
    client = connect()
    results: list[Built] = []
    for target in targets:
        buildargs = {"PIP_NO_INDEX": "1" if args.offline else "0"}
        base = args.scoring_base_image if target.name == SCORING else args.base_image
        if base:
            buildargs["BASE_IMAGE"] = base
        if target.name == SCORING:
            buildargs["FETCH_SPICE_JARS"] = "0" if args.skip_spice_jars else "1"
        started = time.monotonic()
        try:
            if target.name == SCORING and not args.skip_spice_jars:
                stage_spice_jars(args.offline)
            build_image(client, target, buildargs, args.offline)
            results.append(Built(target, time.monotonic() - started))
        except (EngineError, PlanError) as error:
            results.append(Built(target, time.monotonic() - started, str(error)))
            print(f"[{target.name}] FAILED: {error}", flush=True)
    print("images:")
    for built in results:
        state = "built " if built.error is None else "FAILED"
        detail = "" if built.error is None else f": {built.error.splitlines()[-1][:200]}"
        print(f"  {state} {built.target.tag:<40} {built.seconds:6.0f} s{detail}", flush=True)
    failed = [b for b in results if b.error is not None]
    summary = f"{len(results) - len(failed)} of {len(results)} image(s) built"
    print(summary + (f", {len(failed)} FAILED" if failed else ""))
    return 1 if failed else 0
