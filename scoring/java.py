"""Finding Java and the jars pycocoevalcap ships, and reporting a Java tool that failed."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

JAVA_PACKAGE = "default-jre-headless"  # the Debian/Ubuntu package that provides `java`
# A non-English default locale makes METEOR parse "0.5" with the wrong decimal separator; the file encoding
# decides how non-ASCII captions reach the tokenizer and come back.
JVM_LOCALE_FLAGS = ("-Duser.language=en", "-Duser.country=US", "-Dfile.encoding=UTF-8")


class ScoringError(RuntimeError):
    """A problem the user can fix (bad input, missing tool); the message says what and where."""


class JavaMissingError(ScoringError):
    pass


class ToolProcessError(ScoringError):
    """A Java tool (tokenizer, METEOR, SPICE) died or answered nonsense; the message ends with its stderr tail."""


def find_java() -> str:
    """The `java` executable ($SCORING_JAVA, else the one on PATH); an error naming the package when absent."""
    configured = os.environ.get("SCORING_JAVA")
    if configured:
        if Path(configured).is_file() and os.access(configured, os.X_OK):
            return configured
        raise JavaMissingError(f"SCORING_JAVA={configured!r} is not an executable file")
    found = shutil.which("java")
    if found is None:
        raise JavaMissingError(
            "Java is required for PTB tokenization, METEOR and SPICE but `java` was not found on PATH. "
            f"Install it, e.g. `apt-get install {JAVA_PACKAGE}` (Debian/Ubuntu), or set SCORING_JAVA."
        )
    return found


@cache
def java_version(java: str) -> str:
    completed = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    lines = (completed.stderr or completed.stdout).strip().splitlines()
    return lines[0] if lines else "unknown"


@cache
def pycocoevalcap_dir() -> Path:
    """Folder of the installed pycocoevalcap package (a namespace package: no __file__)."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise ScoringError("pycocoevalcap is not installed (pip install 'pycocoevalcap==1.2')")
    return Path(next(iter(spec.submodule_search_locations)))


def ptb_tokenizer_jar() -> Path:
    return pycocoevalcap_dir() / "tokenizer" / "stanford-corenlp-3.4.1.jar"


def meteor_jar() -> Path:
    return pycocoevalcap_dir() / "meteor" / "meteor-1.5.jar"


def spice_jar() -> Path:
    return pycocoevalcap_dir() / "spice" / "spice-1.0.jar"


def spice_lib_dir() -> Path:
    return pycocoevalcap_dir() / "spice" / "lib"


def stderr_tail(text: str | bytes, lines: int = 25) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(no stderr output)"
