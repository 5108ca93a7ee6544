"""Whether a model's scores are up to date: every input of scoring is recorded in its metrics file
(`contract.ScoringInputs`) and compared on the next run, which then scores only what changed.

The inputs: the predictions file's content (sha256), the data file's content, the model id and random-weights flag the
metrics file carries, the options that change numbers (metrics, bootstrap resamples and seed, --limit,
--intersection, data columns), and the versions of everything that computes them: Java, sacreBLEU, pycocoevalcap
(its PTB tokenizer and METEOR jars), SPICE's CoreNLP jars when SPICE is computed, and this scoring code itself (a
hash of its source files and the contract's). Cheap: file hashes, package metadata and one `java -version`.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from contract import METRICS_JSON, SAMPLE_SCORES_JSONL, MetricsFile, ScoringInputs, file_sha256, read_json, results_file
from scoring.java import find_java, java_version
from scoring.metrics import Metric

_CODE_ROOTS = ("scoring", "contract")  # packages whose source decides the numbers and the files' contents


@cache
def code_sha256() -> str:
    """One hash of the scoring and contract packages' source files (Python, the report's templates and assets)."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in _CODE_ROOTS:
        for path in sorted((root / package).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".html", ".css", ".js", ".md", ".tex", ".toml"):
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def tool_versions(computed: tuple[Metric, ...], spice_jars: Path | None) -> dict[str, str]:
    """What computes the numbers, as versions (SPICE's jars by name and size: they are not versioned files)."""
    versions = {
        "java": java_version(find_java()),
        "sacrebleu": _version("sacrebleu"),
        "pycocoevalcap": _version("pycocoevalcap"),
        "scoring_code_sha256": code_sha256(),
    }
    if any(m.key == "spice" for m in computed):
        from scoring.spice import configured_jar_dir

        folder = configured_jar_dir(spice_jars)
        jars = sorted(folder.glob("*.jar")) if folder.is_dir() else []
        versions["spice_jars"] = ", ".join(f"{jar.name} ({jar.stat().st_size} bytes)" for jar in jars) or "none"
    return versions


def model_inputs(
    *,
    predictions: Path | None,
    data_sha256: str | None,
    model_id: str,
    random_weights: bool,
    options: dict[str, Any],
    versions: dict[str, str],
) -> ScoringInputs:
    return ScoringInputs(
        predictions_sha256=file_sha256(predictions) if predictions is not None else None,
        data_sha256=data_sha256,
        model_id=model_id,
        random_weights=random_weights,
        options=options,
        versions=versions,
    )


def is_up_to_date(out_dir: Path, model_name: str, inputs: ScoringInputs) -> bool:
    """The folder holds this model's metrics and sample scores, computed from exactly these inputs."""
    metrics_path = results_file(out_dir, METRICS_JSON, model_name)
    if not metrics_path.is_file() or not results_file(out_dir, SAMPLE_SCORES_JSONL, model_name).is_file():
        return False
    try:
        recorded = read_json(metrics_path, MetricsFile).inputs
    except (OSError, ValueError):
        return False  # unreadable or from another version: score again
    return recorded is not None and recorded.model_dump(mode="json") == inputs.model_dump(mode="json")
