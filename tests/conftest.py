"""Shared test helpers: generated panoramas, QuIC-360-style data files, tiny checkpoints, real runner runs.

Fixtures (use them from any test module, e.g. tests/test_runner_chat_families.py):

- ``make_panorama_data(folder=None, num_images=4, queries=("location", "people"), captions_per_sample=3,
  sizes=PANORAMA_SIZES) -> PanoramaData``
  Writes generated 2:1 equirectangular panoramas (JPEG and PNG, different sizes, different content so the model
  sees different pixels) and a data CSV in QuIC-360 format (columns ``url,query,annotation``, ONE caption per row,
  ``captions_per_sample`` rows per (image, query) sample, image paths relative to the CSV). Returns the data file,
  the image paths and the expected (image, query) -> references mapping. ``folder`` defaults to a fresh tmp dir.
- ``panorama_data``: ``make_panorama_data()`` with the defaults (4 panoramas x 2 queries = 8 samples).
- ``tiny_checkpoint(name) -> Path`` (session-scoped): builds the tiny random-weight checkpoint of a registry model
  name ONCE per test session with ``runner.tiny.build_tiny`` and returns its folder. Treat it as read-only.
- ``run_runner(*args, timeout=180, expect_ok=True) -> RunnerRun``: runs ``python -m runner *args`` as a real
  subprocess (offline, 1 CPU thread) and returns returncode, stdout, stderr, the parsed ``RunnerResult`` from
  the last stdout line, and the predictions / run manifest read from ``--output-dir`` when present.
  ``expect_ok=True`` asserts exit code 0 and shows stderr otherwise.
- ``runner_command(*args) -> list[str]`` and ``runner_env() -> dict``: the same command line and environment,
  for tests that manage the process themselves (kill-and-resume).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

# One torch thread per process: the test machine has 2 cores shared with other jobs, and an oversubscribed torch
# ran the tiny models ~20x slower. Set before anything imports torch; tests and runner subprocesses both get it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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

REPO_ROOT = Path(__file__).resolve().parent.parent
# `python -m scoring` / `python -m orchestrator ablation` arguments that leave SPICE out deliberately: for tests that do
# not check SPICE (a run that should compute SPICE and cannot fails; its CoreNLP jars are not everywhere).
WITHOUT_SPICE = ("--metrics", "all,-spice")
# CI sets VLM_ABLATION_REQUIRE_SPICE=1: a test that needs SPICE's jars then fails without them instead of skipping.
REQUIRE_SPICE = os.environ.get("VLM_ABLATION_REQUIRE_SPICE") == "1"
# The real QuIC-360 test text: the shared data folder next to the checkout, or QUIC360_TEST_TSV (a checkout kept
# elsewhere). Tests that need it skip with the reason when it is absent.
QUIC360_TSV = Path(os.environ.get("QUIC360_TEST_TSV") or REPO_ROOT.parent / "shared" / "data" / "quic360" / "test.tsv")

# (width, height, format): 2:1 equirectangular, small so tests stay fast, different sizes and encodings.
PANORAMA_SIZES: tuple[tuple[int, int, str], ...] = (
    (512, 256, "JPEG"),
    (384, 192, "PNG"),
    (640, 320, "JPEG"),
    (256, 128, "PNG"),
    (448, 224, "JPEG"),
    (320, 160, "PNG"),
)

CAPTION_WORDS = (
    "a wide view of a sunny beach with blue sky",
    "people are walking on the street under a cloudy sky",
    "the room is bright and empty",
    "green trees and a red house near the road",
    "a building next to the water",
)


def write_panorama(path: Path, width: int, height: int, image_format: str, seed: int) -> Path:
    """One synthetic equirectangular panorama: sky/ground gradient, a horizon, random coloured blocks."""
    rng = np.random.default_rng(seed)
    rows = np.broadcast_to(np.linspace(0.0, 1.0, height)[:, None], (height, width))
    cols = np.broadcast_to(np.linspace(0.0, 1.0, width)[None, :], (height, width))
    sky = np.stack([80 + 100 * rows, 140 + 60 * rows, 230 - 80 * rows], axis=-1)
    ground = np.stack([90 + 60 * cols, 120 + 40 * rows, 60 + 20 * cols], axis=-1)
    pixels = np.where((rows < 0.5)[..., None], sky, ground).copy()
    for _ in range(6):
        x, y = int(rng.integers(0, width - 16)), int(rng.integers(0, height - 16))
        w, h = int(rng.integers(8, width // 4)), int(rng.integers(8, height // 3))
        pixels[y : y + h, x : x + w] = rng.integers(0, 256, size=3)
    pixels += rng.normal(0, 6, size=pixels.shape)
    from PIL import Image

    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=image_format, **({"quality": 90} if image_format == "JPEG" else {}))
    return path


@dataclass
class PanoramaData:
    folder: Path
    data_file: Path
    images: list[Path]
    # (image as written in the CSV, query) -> references in file order
    references: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return len(self.references)


def write_quic_csv(path: Path, rows: Sequence[tuple[str, str, str]]) -> Path:
    """A data CSV with QuIC-360's columns; each row is (url, query, annotation)."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "query", "annotation"])
        writer.writerows(rows)
    return path


def build_panorama_data(
    folder: Path,
    num_images: int = 4,
    queries: Sequence[str] = ("location", "people"),
    captions_per_sample: int = 3,
    sizes: Sequence[tuple[int, int, str]] = PANORAMA_SIZES,
) -> PanoramaData:
    images: list[Path] = []
    for index in range(num_images):
        width, height, image_format = sizes[index % len(sizes)]
        suffix = ".jpg" if image_format == "JPEG" else ".png"
        images.append(
            write_panorama(folder / "images" / f"pano_{index:03d}{suffix}", width, height, image_format, index)
        )
    rows: list[tuple[str, str, str]] = []
    references: dict[tuple[str, str], list[str]] = {}
    for index, image in enumerate(images):
        relative = image.relative_to(folder).as_posix()
        for query in queries:
            for caption_index in range(captions_per_sample):
                caption = f"{CAPTION_WORDS[(index + caption_index) % len(CAPTION_WORDS)]} ({query} {caption_index})."
                rows.append((relative, query, caption))
                references.setdefault((relative, query), []).append(caption)
    data_file = write_quic_csv(folder / "data.csv", rows)
    return PanoramaData(folder=folder, data_file=data_file, images=images, references=references)


@pytest.fixture
def make_panorama_data(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., PanoramaData]:
    def make(folder: Path | None = None, **kwargs: object) -> PanoramaData:
        return build_panorama_data(folder or tmp_path_factory.mktemp("panoramas"), **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def panorama_data(make_panorama_data: Callable[..., PanoramaData]) -> PanoramaData:
    return make_panorama_data()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Path]]:
    built: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("tiny_checkpoints")

    def get(name: str) -> Path:
        if name not in built:
            from runner.tiny import build_tiny

            folder = root / name
            build_tiny(name, str(folder))
            built[name] = folder
        return built[name]

    yield get


def runner_env() -> dict[str, str]:
    """Offline, single-threaded (the test machine has 2 shared cores), the repo importable."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p),
    )
    return env


def runner_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "runner", *(str(a) for a in args)]


@dataclass
class RunnerRun:
    returncode: int
    stdout: str
    stderr: str
    result: RunnerResult | None
    predictions: list[PredictionRecord]
    manifest: RunManifest | None


def _option(args: Sequence[str], name: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def parse_runner_output(args: Sequence[str], returncode: int, stdout: str, stderr: str) -> RunnerRun:
    lines = stdout.strip().splitlines()
    result = None
    if lines and lines[-1].startswith(RUNNER_RESULT_PREFIX):
        result = RunnerResult.model_validate(json.loads(lines[-1][len(RUNNER_RESULT_PREFIX) :]))
    predictions: list[PredictionRecord] = []
    manifest = None
    out_dir, model = _option(args, "--output-dir"), _option(args, "--model")
    if model and model.startswith("hf:"):
        from runner.registry import get_model

        model = get_model(model).name  # hf:Org/Name writes Org--Name_* files
    if out_dir and model:
        predictions_path = results_file(out_dir, PREDICTIONS_JSONL, model)
        if predictions_path.exists():
            predictions = list(read_jsonl(predictions_path, PredictionRecord))
        manifest_path = results_file(out_dir, RUN_MANIFEST, model)
        if manifest_path.exists():
            manifest = read_json(manifest_path, RunManifest)
    return RunnerRun(returncode, stdout, stderr, result, predictions, manifest)


@pytest.fixture
def run_runner() -> Callable[..., RunnerRun]:
    def run(*args: str | Path, timeout: float = 180, expect_ok: bool = True) -> RunnerRun:
        command = runner_command(*args)
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=runner_env(), cwd=REPO_ROOT
        )
        if expect_ok:
            assert completed.returncode == 0, f"{command} failed ({completed.returncode}):\n{completed.stderr[-4000:]}"
        return parse_runner_output(command[3:], completed.returncode, completed.stdout, completed.stderr)

    return run


from slurm_cluster import slurm_cluster_fixture  # noqa: E402, F401  (session fixture: a real single-node Slurm cluster)


@pytest.fixture(scope="session")
def spice_jars() -> Path:
    """The folder with SPICE's verified jars (scoring.spice.configured_jar_dir); skipped without them, or failed
    where they are required."""
    from scoring.spice import configured_jar_dir, unavailable_reason

    folder = configured_jar_dir(None)
    reason = unavailable_reason(folder)
    if reason:
        if REQUIRE_SPICE:
            pytest.fail(f"VLM_ABLATION_REQUIRE_SPICE=1 but {reason}")
        pytest.skip(f"SPICE jars absent: {reason}")
    return folder
