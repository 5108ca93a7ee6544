"""`python -m scoring convert`: other harnesses' caption outputs as a COCO results file (and, where they carry the
references, a COCO annotations file), for `python -m scoring score --coco-results ... --annotations ...`.

- lmms-eval (`--log_samples`): one JSON object per sample (a `*_samples_<task>.jsonl` file, or an older `<task>.json`
  holding them under "logs"). Its caption tasks (COCO, Flickr30k, NoCaps) log, per metric, a field such as
  `"coco_CIDEr": {"answer": [references...], "pred": "caption", "image_id": 42}`; the first field holding both
  "image_id" and "pred" gives the image id, the caption and (its "answer") the references.
- VLMEvalKit: its prediction table `<model>_<dataset>.xlsx` (or .tsv/.csv) with the columns `index`, `answer` (the
  references, a list written as Python or JSON text) and `prediction`; the row's `index` becomes the image id, and
  the file name is `image_path` where the table has one, else the index.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract import write_json_atomic
from scoring.java import ScoringError

SOURCES = ("lmms-eval", "vlmevalkit")


@dataclass
class Converted:
    image_id: int | str
    caption: str
    references: list[str] | None  # None: the source has none for this image
    file_name: str | None = None
    where: str = ""


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ScoringError(f"{path}: file not found")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ScoringError(f"{path}: not valid UTF-8 (byte offset {error.start})") from None


def _lmms_eval_records(path: Path) -> Iterable[tuple[str, Any]]:
    text = _read_text(path)
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("logs"), list):
        yield from ((f"logs[{index}]", record) for index, record in enumerate(document["logs"]))
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as error:
                raise ScoringError(f"{path}: line {number}: not valid JSON ({error.msg})") from None


def read_lmms_eval(path: Path) -> list[Converted]:
    converted = []
    for where, record in _lmms_eval_records(path):
        if not isinstance(record, dict):
            raise ScoringError(f"{path}: {where}: expected a JSON object per sample")
        logged = next(
            (value for value in record.values() if isinstance(value, dict) and {"image_id", "pred"} <= set(value)),
            None,
        )
        if logged is None:
            raise ScoringError(
                f"{path}: {where}: no field holds both 'image_id' and 'pred' (lmms-eval's caption tasks log one per "
                f"metric, e.g. 'coco_CIDEr'); fields: {sorted(record)[:12]}. Was it run with --log_samples on a "
                "caption task?"
            )
        image_id, caption = logged["image_id"], logged["pred"]
        if not isinstance(image_id, int | str) or isinstance(image_id, bool):
            raise ScoringError(f"{path}: {where}: 'image_id' {image_id!r} is neither a number nor a string")
        if not isinstance(caption, str):
            raise ScoringError(f"{path}: {where}: 'pred' is not a string: {caption!r}"[:300])
        answer = logged.get("answer")
        references = [answer] if isinstance(answer, str) else answer
        if references is not None and not (
            isinstance(references, list) and all(isinstance(r, str) for r in references)
        ):
            raise ScoringError(f"{path}: {where}: 'answer' is not a list of captions: {answer!r}"[:300])
        converted.append(Converted(image_id, caption, references, where=where))
    if not converted:
        raise ScoringError(f"{path}: no samples")
    return converted


def _cell(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _references(text: Any, where: str, path: Path) -> list[str]:
    """VLMEvalKit writes the `answer` list as Python text (`['a', 'b']`); JSON text or one plain caption also do."""
    if isinstance(text, list):
        return [str(item) for item in text]
    if not isinstance(text, str):
        raise ScoringError(f"{path}: {where}: column 'answer' is {text!r}, not a list of captions")
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            value = ast.literal_eval(stripped)  # a literal only: never code
        except (ValueError, SyntaxError):
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError:
                raise ScoringError(
                    f"{path}: {where}: column 'answer' is not a list of captions: {text!r}"[:300]
                ) from None
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        raise ScoringError(f"{path}: {where}: column 'answer' is not a list of captions: {text!r}"[:300])
    return [text]


def read_vlmevalkit(path: Path) -> list[Converted]:
    import pandas

    suffix = path.suffix.lower()
    if not path.is_file():
        raise ScoringError(f"{path}: file not found")
    if suffix not in (".xlsx", ".tsv", ".csv"):
        raise ScoringError(f"{path}: expected VLMEvalKit's .xlsx, .tsv or .csv prediction file")
    if suffix == ".xlsx" and importlib.util.find_spec("openpyxl") is None:
        raise ScoringError(
            f"{path}: reading .xlsx needs openpyxl, which is not installed; install it (pip install openpyxl), or "
            "save the table as .tsv (VLMEvalKit writes one with PRED_FORMAT=tsv)"
        )
    try:
        if suffix == ".xlsx":
            table = pandas.read_excel(path)
        else:
            table = pandas.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False)
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise ScoringError(f"{path}: cannot be read as a table: {error}") from None
    missing = [column for column in ("index", "answer", "prediction") if column not in table.columns]
    if missing:
        raise ScoringError(f"{path}: missing column(s) {missing}; columns found: {list(table.columns)}")
    converted = []
    for number, row in enumerate(table.to_dict("records"), start=2):  # row 1 is the header
        where = f"row {number}"
        index = _cell(row["index"])
        if isinstance(index, float) and index.is_integer():
            index = int(index)
        if not isinstance(index, int | str) or isinstance(index, bool) or index == "":
            raise ScoringError(f"{path}: {where}: column 'index' is {index!r}")
        prediction = _cell(row["prediction"])
        file_name = _cell(row.get("image_path"))
        converted.append(
            Converted(
                image_id=index,
                caption="" if prediction is None else str(prediction),
                references=_references(_cell(row["answer"]), where, path),
                file_name=file_name if isinstance(file_name, str) and file_name else None,
                where=where,
            )
        )
    if not converted:
        raise ScoringError(f"{path}: no rows")
    return converted


def convert(source: str, path: Path, results: Path, annotations: Path | None) -> tuple[int, int]:
    """Write the results file (and the annotations file); returns (results written, images annotated)."""
    for output in (results, annotations):
        if output is not None and output.exists():
            raise ScoringError(f"{output} exists; choose another name (nothing is overwritten)")
    if source == "lmms-eval":
        samples = read_lmms_eval(path)
    elif source == "vlmevalkit":
        samples = read_vlmevalkit(path)
        if annotations is None:
            raise ScoringError(
                "--from vlmevalkit needs --annotations FILE: its image ids are the table's row index, which only "
                "the references written next to it (its 'answer' column) match"
            )
    else:
        raise ScoringError(f"--from {source!r}: one of {', '.join(SOURCES)}")
    document = _annotations_document(path, samples) if annotations is not None else None
    write_json_atomic(results, [{"image_id": s.image_id, "caption": s.caption} for s in samples])
    if annotations is None or document is None:
        return len(samples), 0
    write_json_atomic(annotations, document)
    return len(samples), len(document["images"])


def _annotations_document(path: Path, samples: list[Converted]) -> dict[str, list[dict[str, Any]]]:
    without = [s.where for s in samples if not s.references]
    if without:
        raise ScoringError(f"{path}: {len(without)} sample(s) carry no references (first: {without[0]})")
    images: dict[int | str, Converted] = {}
    for sample in samples:
        images.setdefault(sample.image_id, sample)  # a repeated id: the results file keeps both, and score refuses
    captions = [(image_id, caption) for image_id, s in images.items() for caption in s.references or []]
    return {
        "images": [{"id": image_id, "file_name": s.file_name or str(image_id)} for image_id, s in images.items()],
        "annotations": [
            {"image_id": image_id, "id": number, "caption": caption}
            for number, (image_id, caption) in enumerate(captions, start=1)
        ],
    }
