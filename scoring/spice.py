"""SPICE 1.0 (the jar pycocoevalcap ships) with Stanford CoreNLP 3.6.0 jars from a folder the user configures.

pycocoevalcap's own wrapper downloads CoreNLP into, and writes temp/cache files inside, its package folder;
here the jars come from `--spice-jars DIR` (or $SCORING_SPICE_JARS, or the default cache folder that
`python -m scoring fetch-spice` fills), and every temp and cache file lives in our own folders. When the jars
are absent SPICE is reported as unavailable (null + reason + warning), never as 0.0.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scoring.java import JVM_LOCALE_FLAGS, ScoringError, ToolProcessError, spice_jar, spice_lib_dir, stderr_tail

CORENLP_VERSION = "3.6.0"
CORENLP_JARS = (f"stanford-corenlp-{CORENLP_VERSION}.jar", f"stanford-corenlp-{CORENLP_VERSION}-models.jar")
MAVEN_CENTRAL = "https://repo1.maven.org/maven2/edu/stanford/nlp/stanford-corenlp/" + CORENLP_VERSION
# Pinned SHA-256 of the two jars. They could not be read from Maven Central on the machine this was written
# on (no route to it); until they are filled in, `fetch-spice` verifies each download against the SHA-1 that
# Maven Central publishes next to it and prints the SHA-256 to pin here (or pass with --sha256).
PINNED_SHA256: dict[str, str | None] = {name: None for name in CORENLP_JARS}
# SPICE's cache serialises with fst/lmdbjni, which needs these packages opened on Java 9+.
ADD_OPENS = tuple(
    f"--add-opens=java.base/{package}=ALL-UNNAMED"
    for package in ("java.lang", "java.util", "java.math", "java.util.concurrent", "java.net", "java.text")
)
SPICE_HEAP = "8G"


def default_jar_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vlm-ablation" / "spice"


def configured_jar_dir(option: str | Path | None) -> Path:
    if option is not None:
        return Path(option)
    from_env = os.environ.get("SCORING_SPICE_JARS")
    return Path(from_env) if from_env else default_jar_dir()


def missing_jars(jar_dir: Path) -> list[str]:
    return [name for name in CORENLP_JARS if not (jar_dir / name).is_file()]


def unavailable_reason(jar_dir: Path) -> str | None:
    """Why SPICE cannot run with this folder, or None when it can."""
    missing = missing_jars(jar_dir)
    if not missing:
        return None
    return (
        f"SPICE needs Stanford CoreNLP {CORENLP_VERSION} jars ({', '.join(missing)}) in {jar_dir}; "
        f"run `python -m scoring fetch-spice --dest {jar_dir}` on a connected host, or pass --spice-jars DIR"
    )


@dataclass
class SpiceItem:
    key: str
    hypothesis: str
    references: list[str]


def run_spice(
    items: Sequence[SpiceItem], java: str, jar_dir: Path, work_dir: Path, cache_dir: Path | None = None
) -> dict[str, float]:
    """SPICE F-score ('All' category) of every item, in ONE JVM run; NaN where SPICE gives none."""
    classpath = [spice_jar(), jar_dir / CORENLP_JARS[0], jar_dir / CORENLP_JARS[1]]
    classpath += sorted(spice_lib_dir().glob("*.jar"))
    payload = [{"image_id": item.key, "test": item.hypothesis, "refs": item.references} for item in items]
    with tempfile.TemporaryDirectory(prefix="spice_", dir=work_dir) as temp:
        input_file, output_file = Path(temp) / "input.json", Path(temp) / "output.json"
        input_file.write_text(json.dumps(payload), encoding="utf-8")
        command = [java, f"-Xmx{SPICE_HEAP}", *JVM_LOCALE_FLAGS, *ADD_OPENS, f"-Djava.io.tmpdir={temp}"]
        command += ["-cp", os.pathsep.join(str(path) for path in classpath), "edu.anu.spice.SpiceScorer"]
        command += [str(input_file), "-out", str(output_file), "-subset", "-silent"]
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            command += ["-cache", str(cache_dir)]
        completed = subprocess.run(command, capture_output=True, cwd=temp, check=False)
        if completed.returncode != 0 or not output_file.is_file():
            raise ToolProcessError(f"SPICE exited with status {completed.returncode}:\n{stderr_tail(completed.stderr)}")
        results = json.loads(output_file.read_text(encoding="utf-8"))
    scores: dict[str, float] = {}
    for result in results:
        value = result.get("scores", {}).get("All", {}).get("f")
        try:
            scores[str(result["image_id"])] = float(value)
        except (TypeError, ValueError):
            scores[str(result["image_id"])] = math.nan
    missing = [item.key for item in items if item.key not in scores]
    if missing:
        raise ToolProcessError(f"SPICE returned no score for {len(missing)} items (first: {missing[0]})")
    return scores


def _sha_of(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_corenlp(dest: Path, sha256: dict[str, str] | None = None, timeout: float = 120.0) -> list[Path]:
    """Download the two CoreNLP jars from Maven Central into dest, verified, written atomically."""
    try:
        return _fetch_corenlp(dest, sha256, timeout)
    except (urllib.error.URLError, TimeoutError) as error:
        raise ScoringError(f"could not download from {MAVEN_CENTRAL} (this needs network access): {error}") from error


def _fetch_corenlp(dest: Path, sha256: dict[str, str] | None, timeout: float) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in CORENLP_JARS:
        target = dest / name
        expected_sha256 = (sha256 or {}).get(name) or PINNED_SHA256.get(name)
        url = f"{MAVEN_CENTRAL}/{name}"
        with urllib.request.urlopen(f"{url}.sha1", timeout=timeout) as response:
            published_sha1 = response.read().decode("ascii").split()[0].strip().lower()
        fd, temp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=dest)
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as handle, urllib.request.urlopen(url, timeout=timeout) as response:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    handle.write(chunk)
            actual_sha1 = _sha_of(temp, "sha1")
            actual_sha256 = _sha_of(temp, "sha256")
            if actual_sha1 != published_sha1:
                raise ToolProcessError(f"{url}: SHA-1 {actual_sha1} does not match the published {published_sha1}")
            if expected_sha256 and actual_sha256 != expected_sha256.lower():
                raise ToolProcessError(f"{url}: SHA-256 {actual_sha256} does not match the pinned {expected_sha256}")
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        print(f"{target}  sha1={actual_sha1}  sha256={actual_sha256}")
        written.append(target)
    return written
