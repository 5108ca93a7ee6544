"""Data sets: the one reader every part uses (`load_dataset`), whatever the file's format.

A format (a `DataSource`, contract/sources.py) turns its file into records; everything else is decided here, once:
records sharing (image, query) are ONE sample whose references are all their captions, in file order; empty
captions and samples left without a reference are dropped and counted; a sample's id is `sample_id(image, query)`
with the image as written in the file, so the same samples give the same ids in every format. A data set without
queries gives every sample the query CAPTION_QUERY.

Formats: QuIC-360-style CSV/TSV with one caption per row (here), and COCO caption annotations, Karpathy split files
and JSONL (contract/json_formats.py). The format is detected from the content unless one is named.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from contract.json_formats import CocoSource, JsonlSource, KarpathySource
from contract.records import Sample, sample_id
from contract.sources import (
    CAPTION_QUERY,
    CaptionRecord,
    DataContent,
    DataFileError,
    DataSource,
    ReadOptions,
    SourceRead,
)

DEFAULT_COLUMNS = {"image": "url", "query": "query", "annotation": "annotation"}
AUTO_FORMAT = "auto"

__all__ = [
    "AUTO_FORMAT",
    "CAPTION_QUERY",
    "DATA_FORMATS",
    "DEFAULT_COLUMNS",
    "DataFileError",
    "Dataset",
    "add_data_format_arguments",
    "detect_format",
    "load_dataset",
    "resolve_image",
]


@dataclass
class Dataset:
    path: Path
    samples: list[Sample]
    num_rows: int  # records read, in `record_noun`: CSV rows, COCO or Karpathy captions, JSONL lines
    empty_annotations_dropped: int = 0
    samples_without_reference_dropped: int = 0
    warnings: list[str] = field(default_factory=list)
    format: str = "csv"
    split: str | None = None  # the Karpathy split read
    record_noun: str = "rows"
    # sample_id -> the file's own id of the sample's image (COCO image id, Karpathy cocoid or imgid, JSONL id)
    record_ids: dict[str, int | str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def has_queries(self) -> bool:
        """False when every sample has the query CAPTION_QUERY: captioned with the caption instruction."""
        return any(sample.query != CAPTION_QUERY for sample in self.samples)

    @property
    def has_groups(self) -> bool:
        return any(sample.group is not None for sample in self.samples)

    def summary_line(self) -> str:
        what = self.format + (f", split {self.split}" if self.split else "")
        line = (
            f"{self.path}: {len(self.samples)} samples from {self.num_rows} {self.record_noun} "
            f"({self.empty_annotations_dropped} empty annotations dropped, "
            f"{self.samples_without_reference_dropped} samples without any reference dropped)"
        )
        return line if self.format == "csv" else f"{line} [{what}]"


def _decode_utf8(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataFileError(
            f"{path}: line {line} is not valid UTF-8 (byte {raw[error.start]:#04x} at offset {error.start})"
        ) from error


def _delimiter(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return "\t"
    if suffix == ".csv":
        return ","
    first_line = text.split("\n", 1)[0]
    try:
        return csv.Sniffer().sniff(first_line, delimiters=",\t;").delimiter
    except csv.Error:
        return "\t" if "\t" in first_line else ","


def resolve_image(image: str, data_dir: Path, image_root: Path | None) -> str:
    """A local path (absolute, or relative to --image-root, else to the data file's folder) or a URL."""
    if image.startswith(("http://", "https://")):
        return image
    candidate = Path(image).expanduser()
    if candidate.is_absolute():
        return str(candidate)
    return str(((image_root or data_dir) / candidate).resolve())


# ---------------------------------------------------------------------------------------------------------
# CSV/TSV: QuIC-360's layout, one caption per row.


def _read_csv(
    path: Path,
    text: str,
    *,
    image_column: str = DEFAULT_COLUMNS["image"],
    query_column: str = DEFAULT_COLUMNS["query"],
    annotation_column: str = DEFAULT_COLUMNS["annotation"],
) -> list[CaptionRecord]:
    delimiter = _delimiter(path, text)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    found = reader.fieldnames or []
    repeated = sorted({name for name in found if found.count(name) > 1})
    if repeated:
        # csv.DictReader would keep only the LAST column of a name: the other one's text would silently be lost.
        raise DataFileError(
            f"{path}: the header names column(s) {repeated} more than once (columns found: {found}); "
            "rename or remove the repeated column"
        )
    missing = [c for c in (image_column, query_column, annotation_column) if c not in found]
    if missing:
        raise DataFileError(f"{path}: missing column(s) {missing}; columns found: {found}")

    records: list[CaptionRecord] = []
    expected_fields = len(found)
    line_end = reader.line_num  # the header's last line
    for row in reader:
        # Positions are FILE lines (a quoted caption may span several), as an editor shows them.
        line_start, line_end = line_end + 1, reader.line_num
        where = f"line {line_start}" if line_start == line_end else f"lines {line_start}-{line_end}"
        if None in row:  # more fields than the header: an unquoted delimiter inside a caption
            extra = row[None]  # type: ignore[index]
            raise DataFileError(
                f"{path}: {where} has {expected_fields + len(extra)} fields but the header has {expected_fields} "
                f"(extra: {extra!r}); a caption containing {delimiter!r} must be quoted"
            )
        if any(value is None for value in row.values()):
            count = sum(value is not None for value in row.values())
            raise DataFileError(f"{path}: {where} has {count} fields but the header has {expected_fields}")
        image = (row.get(image_column) or "").strip()
        query = (row.get(query_column) or "").strip()
        if not image or not query:
            raise DataFileError(f"{path}: row at {where} has an empty {image_column!r} or {query_column!r}")
        records.append(
            CaptionRecord(image=image, query=query, captions=[row.get(annotation_column) or ""], where=where)
        )
    return records


class CsvSource(DataSource):
    """Columns `url,query,annotation` (names configurable), one caption per row; TSV by suffix or sniffed."""

    name = "csv"
    record_noun = "rows"
    merges_records = True
    duplicate_message = "row(s) repeat an earlier (url, query, annotation) row exactly"

    def read(self, content: DataContent, options: ReadOptions) -> SourceRead:
        records = _read_csv(
            content.path,
            content.text,
            image_column=options.image_column,
            query_column=options.query_column,
            annotation_column=options.annotation_column,
        )
        return SourceRead(records=records, num_records=len(records))


# ---------------------------------------------------------------------------------------------------------
# Formats, detection, and the assembly every format shares.

SOURCES: dict[str, DataSource] = {
    source.name: source for source in (CsvSource(), CocoSource(), KarpathySource(), JsonlSource())
}
DATA_FORMATS = tuple(SOURCES)


def detect_format(content: DataContent) -> str:
    """The format of a data file from its content: a JSON object with "annotations" is COCO, one whose "images"
    have "sentences" is a Karpathy split file, JSON objects one per line are JSONL, anything else is CSV/TSV."""
    stripped = content.text.lstrip()
    if not stripped.startswith(("{", "[")):
        return "csv"
    first_line = stripped.split("\n", 1)[0].strip()
    try:
        document = content.document
    except DataFileError:
        if _is_json_object(first_line):
            return "jsonl"  # several JSON values: one per line
        raise
    if isinstance(document, list):
        raise DataFileError(
            f"{content.path}: a JSON list is not a data file (a COCO results file? score it with `python -m scoring "
            "score --coco-results FILE --annotations ANNOTATIONS`)"
        )
    if isinstance(document, dict):
        if "annotations" in document:
            return "coco"
        images = document.get("images")
        if isinstance(images, list) and images and isinstance(images[0], dict) and "sentences" in images[0]:
            return "karpathy"
        if "image" in document or "references" in document:
            return "jsonl"  # a JSONL file of one line
    keys = sorted(document)[:8] if isinstance(document, dict) else type(document).__name__
    raise DataFileError(
        f"{content.path}: a JSON file of no known data format (its keys: {keys}); expected COCO annotations "
        '("images" and "annotations"), a Karpathy split file ("images" with "sentences") or JSONL (one '
        '{"image", "references"} object per line); --data-format names the format'
    )


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _assemble(
    path: Path, source: DataSource, read: SourceRead, image_root: Path | None
) -> tuple[list[Sample], int, int, list[str], dict[str, int | str]]:
    """Records -> samples: (samples, empty captions dropped, samples without reference dropped, warnings, ids)."""
    grouped: dict[tuple[str, str], list[str]] = {}
    first_record: dict[tuple[str, str], CaptionRecord] = {}
    empty = 0
    duplicates = 0
    first_duplicate = ""
    for record in read.records:
        key = (record.image, record.query if record.query is not None else CAPTION_QUERY)
        earlier = first_record.get(key)
        if earlier is None:
            first_record[key] = record
            grouped[key] = []
        elif not source.merges_records:
            raise DataFileError(
                f"{path}: {record.where} has the image {record.image!r}"
                + (f" and query {record.query!r}" if record.query is not None else "")
                + f" of {earlier.where}: one sample per image"
                + (" and query" if record.query is not None else "")
            )
        references = grouped[key]
        for caption in record.captions:
            annotation = caption.strip()
            if not annotation:
                empty += 1
                continue
            if annotation in references:
                duplicates += 1
                first_duplicate = first_duplicate or record.where
            references.append(annotation)
    warnings = []
    if duplicates:
        # Kept (the reference tools would score them as given), but a repeated reference weighs twice.
        warnings.append(
            f"{path}: {duplicates} {source.duplicate_message} (first at {first_duplicate}); each is kept as a "
            "repeated reference"
        )
    samples = []
    record_ids: dict[str, int | str] = {}
    data_dir = path.parent.resolve()
    for (image, query), references in grouped.items():
        if not references:
            continue
        record = first_record[(image, query)]
        sample = Sample(
            sample_id=sample_id(image, query),
            image=image,
            image_path=resolve_image(image, data_dir, image_root),
            query=query,
            references=references,
            group=record.group,
        )
        samples.append(sample)
        if record.record_id is not None:
            record_ids[sample.sample_id] = record.record_id
    return samples, empty, len(grouped) - len(samples), warnings, record_ids


def load_dataset(
    path: str | Path,
    *,
    image_column: str = DEFAULT_COLUMNS["image"],
    query_column: str = DEFAULT_COLUMNS["query"],
    annotation_column: str = DEFAULT_COLUMNS["annotation"],
    image_root: str | Path | None = None,
    data_format: str | None = None,
    split: str | None = None,
) -> Dataset:
    """Read a data file of any format (`data_format` None or "auto": detected from the content). `split`: the
    Karpathy split (default test); an error for the other formats, which have none."""
    path = Path(path)
    if data_format not in (None, AUTO_FORMAT, *SOURCES):
        raise DataFileError(f"{path}: unknown data format {data_format!r}; one of {', '.join(DATA_FORMATS)}")
    if not path.is_file():
        raise DataFileError(f"{path}: data file not found")
    content = DataContent(path, _decode_utf8(path))
    name = detect_format(content) if data_format in (None, AUTO_FORMAT) else data_format
    source = SOURCES[name]
    if split is not None and not isinstance(source, KarpathySource):
        raise DataFileError(f"{path}: --split {split!r} applies to a Karpathy split file only; this file is {name}")
    options = ReadOptions(
        image_column=image_column, query_column=query_column, annotation_column=annotation_column, split=split
    )
    read = source.read(content, options)
    root = Path(image_root) if image_root is not None else None
    samples, empty, dropped, warnings, record_ids = _assemble(path, source, read, root)
    return Dataset(
        path=path,
        samples=samples,
        num_rows=read.num_records,
        empty_annotations_dropped=empty,
        samples_without_reference_dropped=dropped,
        warnings=warnings,
        format=name,
        split=read.split,
        record_noun=source.record_noun,
        record_ids=record_ids,
        notes=read.notes,
    )


def add_data_format_arguments(parser: argparse.ArgumentParser) -> None:
    """--data-format and --split: declared once for the runner, the orchestrator and scoring."""
    parser.add_argument(
        "--data-format",
        choices=(AUTO_FORMAT, *DATA_FORMATS),
        default=AUTO_FORMAT,
        help="the data file's format (default auto: detected from its content; docs/DATA.md)",
    )
    parser.add_argument(
        "--split",
        help="the split of a Karpathy split file to read: test (default), val, train, restval or another it names",
    )
