"""Tiny random-weight checkpoints for every model, built through the runner's own CLI (`python -m runner.tiny`)."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from orchestrator.plan import PlanError


def _build_one(python: str, model: str, folder: Path) -> str:
    if (folder / "config.json").is_file():
        return f"tiny {model} already in {folder}"
    done = subprocess.run(
        [python, "-m", "runner.tiny", "--model", model, "--out", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise PlanError(f"tiny checkpoint for {model} could not be built:\n{done.stderr.strip()[-2000:]}")
    return done.stdout.strip() or f"tiny {model} written to {folder}"


def build_tiny_checkpoints(models: list[str], out: Path, python: str = sys.executable, workers: int = 2) -> list[Path]:
    """DIR/<model> for each model; a folder that already holds a config.json is kept as it is.

    Each build is its own process (most of its time is importing torch and transformers), two at a time."""
    folders = [out / model for model in models]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for message in pool.map(lambda pair: _build_one(python, *pair), zip(models, folders, strict=True)):
            print(message, flush=True)
    return folders
