"""The data file format: QuIC-360-style CSV/TSV with one caption per row.

Rows sharing (image, query) are ONE sample whose references are all its captions, in file order.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from contract.records import Sample, sample_id

DEFAULT_COLUMNS = {"image": "url", "query": "query", "annotation": "annotation"}


class DataFileError(ValueError):
    """A data file that cannot be used; the message names the file and the row or value."""


@dataclass
class Dataset:
    path: Path
    samples: list[Sample]
    num_rows: int
    empty_annotations_dropped: int = 0
    samples_without_reference_dropped: int = 0
    warnings: list[str] = field(default_factory=list)

    def summary_line(self) -> str:
        return (
            f"{self.path}: {len(self.samples)} samples from {self.num_rows} rows "
            f"({self.empty_annotations_dropped} empty annotations dropped, "
            f"{self.samples_without_reference_dropped} samples without any reference dropped)"
        )


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


def load_dataset(
    path: str | Path,
    *,
    image_column: str = DEFAULT_COLUMNS["image"],
    query_column: str = DEFAULT_COLUMNS["query"],
    annotation_column: str = DEFAULT_COLUMNS["annotation"],
    image_root: str | Path | None = None,
) -> Dataset:
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: data file not found")
    text = _decode_utf8(path)
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

    grouped: dict[tuple[str, str], list[str]] = {}
    empty = 0
    num_rows = 0
    seen_rows: set[tuple[str, str, str]] = set()
    duplicates = 0
    first_duplicate = ""
    expected_fields = len(found)
    line_end = reader.line_num  # the header's last line
    for row in reader:
        # Positions are FILE lines (a quoted caption may span several), as an editor shows them.
        line_start, line_end = line_end + 1, reader.line_num
        where = f"line {line_start}" if line_start == line_end else f"lines {line_start}-{line_end}"
        num_rows += 1
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
        references = grouped.setdefault((image, query), [])
        annotation = (row.get(annotation_column) or "").strip()
        if annotation:
            if (image, query, annotation) in seen_rows:
                duplicates += 1
                first_duplicate = first_duplicate or where
            seen_rows.add((image, query, annotation))
            references.append(annotation)
        else:
            empty += 1
    warnings = []
    if duplicates:
        # Kept (the reference tools would score them as given), but a repeated reference weighs twice.
        warnings.append(
            f"{path}: {duplicates} row(s) repeat an earlier (url, query, annotation) row exactly (first at "
            f"{first_duplicate}); each is kept as a repeated reference"
        )

    root = Path(image_root) if image_root is not None else None
    samples = [
        Sample(
            sample_id=sample_id(image, query),
            image=image,
            image_path=resolve_image(image, path.parent.resolve(), root),
            query=query,
            references=references,
        )
        for (image, query), references in grouped.items()
        if references
    ]
    return Dataset(
        path=path,
        samples=samples,
        num_rows=num_rows,
        empty_annotations_dropped=empty,
        samples_without_reference_dropped=len(grouped) - len(samples),
        warnings=warnings,
    )
