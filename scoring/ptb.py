"""PTB tokenization exactly as pycocoevalcap's PTBTokenizer does it, in ONE JVM for every distinct text.

pycocoevalcap writes its temporary input file inside its own package folder (fails on a read-only install);
this drives the same jar with the same options on a file in our own work folder, then removes the same
punctuation tokens pycocoevalcap removes.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

from scoring.cleanup import LINE_SEPARATORS
from scoring.java import JVM_LOCALE_FLAGS, ToolProcessError, ptb_tokenizer_jar, stderr_tail

_PUNCTUATION = frozenset(PUNCTUATIONS)


def _strip_punctuation(line: str) -> str:
    return " ".join(word for word in line.rstrip().split(" ") if word not in _PUNCTUATION)


def ptb_tokenize(texts: Iterable[str], java: str, work_dir: Path) -> dict[str, str]:
    """Map each distinct text to its PTB-tokenized, lower-cased, punctuation-free form.

    Texts must already be separator-normalised (one text = one line); a text with a line separator is a bug
    upstream and is refused rather than allowed to shift every following line.
    """
    unique = list(dict.fromkeys(texts))
    if not unique:
        return {}
    for text in unique:
        if any(separator in text for separator in LINE_SEPARATORS):
            raise ValueError(f"text contains a line separator, normalise it first: {text!r}")
    handle = tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=work_dir, prefix="ptb_input_", suffix=".txt", delete=False
    )
    with handle:
        handle.write("\n".join(unique) + "\n")
    command = [
        java,
        *JVM_LOCALE_FLAGS,
        "-cp",
        str(ptb_tokenizer_jar()),
        "edu.stanford.nlp.process.PTBTokenizer",
        "-preserveLines",
        "-lowerCase",
        handle.name,
    ]
    try:
        completed = subprocess.run(command, capture_output=True, cwd=work_dir, check=False)
    finally:
        Path(handle.name).unlink(missing_ok=True)
    if completed.returncode != 0:
        raise ToolProcessError(
            f"PTB tokenizer exited with status {completed.returncode}:\n{stderr_tail(completed.stderr)}"
        )
    lines = completed.stdout.decode("utf-8").split("\n")
    # One output line per input line, then the empty string after the final newline.
    if len(lines) < len(unique) or any(line.strip() for line in lines[len(unique) :]):
        raise ToolProcessError(
            f"PTB tokenizer returned {len(lines)} lines for {len(unique)} texts (line structure lost):\n"
            f"{stderr_tail(completed.stderr)}"
        )
    return {text: _strip_punctuation(line) for text, line in zip(unique, lines, strict=False)}
