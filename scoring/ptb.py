"""PTB tokenization exactly as pycocoevalcap's PTBTokenizer does it, for many documents in ONE JVM.

pycocoevalcap tokenizes one document per `tokenize` call: all captions of a dict joined by newlines (no newline after
the last one), in a fresh JVM. The tokenizer's look-ahead crosses line ends (a line-final one-letter word + "." keeps
or splits its period depending on whether the NEXT line starts a sentence: "the letter b." + "A dog" gives
"b ." but + "the dog" gives "b."), so a text's tokens depend on its document. `COCOEvalCap.evaluate` makes two
documents per model: all references of all samples in sample order, and all predictions in sample order. The engine
passes exactly those documents here; each becomes a file of its own, and one JVM tokenizes every file with a fresh
tokenizer per file (the jar's `-ioFileList`), which is what separate pycocoevalcap calls do. Identical documents (all
models share their references) are tokenized once.

pycocoevalcap writes its temporary input file inside its own package folder (fails on a read-only install); here the
files live in our own work folder. Then the punctuation tokens pycocoevalcap removes are removed.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

from scoring.cleanup import LINE_SEPARATORS
from scoring.java import JVM_LOCALE_FLAGS, ToolProcessError, ptb_tokenizer_jar, stderr_tail

_PUNCTUATION = frozenset(PUNCTUATIONS)


def _strip_punctuation(line: str) -> str:
    return " ".join(word for word in line.rstrip().split(" ") if word not in _PUNCTUATION)


def ptb_tokenize_documents(documents: Sequence[Sequence[str]], java: str, work_dir: Path) -> list[list[str]]:
    """Each document's lines PTB-tokenized, lower-cased and punctuation-free, as one pycocoevalcap `tokenize` call
    over those lines (in that order, repeats included) gives them.

    Texts must already be separator-normalised (one text = one line); a text with a line separator is a bug
    upstream and is refused rather than allowed to shift every following line.
    """
    unique = list(dict.fromkeys(tuple(document) for document in documents))
    for document in unique:
        for text in document:
            if any(separator in text for separator in LINE_SEPARATORS):
                raise ValueError(f"text contains a line separator, normalise it first: {text!r}")
    tokenized: dict[tuple[str, ...], list[str]] = {(): []}
    pending = [document for document in unique if document]
    if pending:
        with tempfile.TemporaryDirectory(prefix="ptb_", dir=work_dir) as temp:
            folder = Path(temp)
            for index, document in enumerate(pending):
                # pycocoevalcap: '\n'.join(captions), no final newline (what the last line's look-ahead sees).
                (folder / f"{index}.txt").write_text("\n".join(document), encoding="utf-8")
            # Relative names: the list is split on whitespace, and the work folder's path may contain spaces.
            listing = "".join(f"{index}.txt {index}.tok\n" for index in range(len(pending)))
            (folder / "files.txt").write_text(listing, encoding="utf-8")
            command = [
                java,
                *JVM_LOCALE_FLAGS,
                "-cp",
                str(ptb_tokenizer_jar()),
                "edu.stanford.nlp.process.PTBTokenizer",
            ]
            command += ["-preserveLines", "-lowerCase", "-ioFileList", "files.txt"]
            completed = subprocess.run(command, capture_output=True, cwd=folder, check=False)
            if completed.returncode != 0:
                raise ToolProcessError(
                    f"PTB tokenizer exited with status {completed.returncode}:\n{stderr_tail(completed.stderr)}"
                )
            for index, document in enumerate(pending):
                output = folder / f"{index}.tok"
                lines = output.read_text(encoding="utf-8").split("\n") if output.is_file() else []
                # One output line per input line (pycocoevalcap zips them); anything after them must be empty.
                if len(lines) < len(document) or any(line.strip() for line in lines[len(document) :]):
                    raise ToolProcessError(
                        f"PTB tokenizer returned {len(lines)} lines for {len(document)} texts (line structure lost):\n"
                        f"{stderr_tail(completed.stderr)}"
                    )
                tokenized[document] = [_strip_punctuation(line) for line in lines[: len(document)]]
    return [list(tokenized[tuple(document)]) for document in documents]
