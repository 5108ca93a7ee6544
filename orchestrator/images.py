"""`python -m orchestrator images`: build each family's runner image (images/runner.Dockerfile with FAMILY=<family>,
pins from images/<family>/requirements.txt) and the scoring image (images/scoring/Dockerfile) through the Docker
SDK, with the repository as the build context, tagged as runner/registry.py names them."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from orchestrator.ablation import SCORING_IMAGE
from orchestrator.engines import EngineError
from orchestrator.plan import PlanError
from runner.registry import FAMILIES, IMAGE_PREFIX

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGETS = [*FAMILIES, "scoring"]


def image_tag(target: str) -> str:
    return SCORING_IMAGE if target == "scoring" else f"{IMAGE_PREFIX}/{target}:latest"


def parse_targets(text: str) -> list[str]:
    if text.strip().lower() == "all":
        return list(TARGETS)
    targets = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise PlanError(f"--families {text!r}: unknown {unknown}; choose from {', '.join(TARGETS)} or all")
    return targets


def dockerfile_for(target: str) -> str:
    """The Dockerfile (relative to the repository) that builds `target`."""
    return "images/scoring/Dockerfile" if target == "scoring" else "images/runner.Dockerfile"


def build_image(client, target: str, buildargs: dict[str, str], offline: bool) -> str:  # noqa: ANN001
    dockerfile = dockerfile_for(target)
    needed = [REPO_ROOT / dockerfile]
    if target != "scoring":
        buildargs = {**buildargs, "FAMILY": target}
        needed.append(REPO_ROOT / "images" / target / "requirements.txt")
    for path in needed:
        if not path.is_file():
            raise PlanError(f"{path} not found: `images` must run from a checkout of the repository")
    tag = image_tag(target)
    started = time.monotonic()
    print(f"[{target}] building {tag} ({', '.join(f'{k}={v}' for k, v in sorted(buildargs.items()))})", flush=True)
    stream = client.api.build(
        path=str(REPO_ROOT),
        dockerfile=dockerfile,
        tag=tag,
        buildargs=buildargs,
        rm=True,
        forcerm=True,
        decode=True,
        # Offline builds get no network at all, so a missing wheel fails loudly instead of waiting on a timeout.
        network_mode="none" if offline else None,
    )
    for chunk in stream:
        if "error" in chunk:
            raise EngineError(f"[{target}] image build failed: {chunk['error'].strip()}")
        for line in str(chunk.get("stream", "")).splitlines():
            if line.strip():
                print(f"[{target}] {line}", flush=True)
    print(f"[{target}] built {tag} in {time.monotonic() - started:.0f} s", flush=True)
    return tag


def images_command(args: argparse.Namespace) -> int:
    from orchestrator.docker_engine import connect

    targets = parse_targets(args.families)
    client = connect()
    for target in targets:
        buildargs = {"PIP_NO_INDEX": "1" if args.offline else "0"}
        base = args.scoring_base_image if target == "scoring" else args.base_image
        if base:
            buildargs["BASE_IMAGE"] = base
        if target == "scoring":
            buildargs["FETCH_SPICE_JARS"] = "0" if args.skip_spice_jars else "1"
        build_image(client, target, buildargs, args.offline)
    return 0
