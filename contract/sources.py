"""The data-source interface: every data file format reads its records into `CaptionRecord`s, nothing more.

What a record becomes (samples grouped by (image, query), empty captions and reference-less samples dropped and
counted, image paths resolved, stable sample ids) is decided once, in `contract.dataset`, for every format. A format
only says how its file turns into records, and where each record is, for error messages that name the file, the
record and the field.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationError

# The query of every sample of a data set without queries (COCO, Karpathy, JSONL without "query"). It enters the
# sample id (`sample_id(image, CAPTION_QUERY)`), so a CSV whose query column says `caption` on every row is the same
# data set, with the same ids. Such a data set is captioned with the caption instruction (runner.loop).
CAPTION_QUERY = "caption"


class DataFileError(ValueError):
    """A data file that cannot be used; the message names the file and the row or value."""


@dataclass(frozen=True)
class ReadOptions:
    """What a format may need besides the file: CSV column names, a Karpathy split."""

    image_column: str = "url"
    query_column: str = "query"
    annotation_column: str = "annotation"
    split: str | None = None


@dataclass
class CaptionRecord:
    """One record of a data file: an image, its query (None: the data set has none), and captions of it.

    A CSV row holds one caption (rows of one sample are merged); a COCO or Karpathy image, or a JSONL line, holds all
    of a sample's.
    """

    image: str  # as written in the data file
    query: str | None
    captions: list[str]  # as written; stripped, and dropped when empty, by the assembly
    where: str  # "line 3", "images[4] (id 17)": the record, for messages
    group: str | None = None  # a breakdown label (NoCaps' domain, JSONL "group")
    record_id: int | str | None = None  # the file's own id of the image (COCO id, Karpathy cocoid/imgid, JSONL id)


@dataclass
class DataContent:
    """A data file's text (decoded once) and, for the JSON formats, its parsed document (parsed once)."""

    path: Path
    text: str

    @cached_property
    def document(self) -> Any:
        try:
            return json.loads(self.text)
        except json.JSONDecodeError as error:
            raise DataFileError(
                f"{self.path}: line {error.lineno} column {error.colno}: not valid JSON: {error.msg}"
            ) from None


@dataclass
class SourceRead:
    """What a format read: its records in file order, and what the assembly reports about them."""

    records: list[CaptionRecord]
    num_records: int  # what the summary counts, in `record_noun` (CSV rows, COCO annotations, JSONL lines)
    split: str | None = None  # the Karpathy split read
    notes: list[str] = field(default_factory=list)  # format-specific lines for the summary (e.g. other splits)


class DataSource(ABC):
    """One data file format. Subclasses set the class attributes and implement `read`."""

    name: ClassVar[str]  # what --data-format takes and the manifests record
    record_noun: ClassVar[str]  # what one record is, plural, for the summary line ("rows", "captions")
    # True when several records may add captions to one sample (CSV rows, COCO annotations); False when a repeated
    # (image, query) is an error (a Karpathy image or JSONL line is a whole sample).
    merges_records: ClassVar[bool]
    # The warning for captions repeated exactly within a sample (kept: the reference tools score them as given).
    duplicate_message: ClassVar[str] = "caption(s) repeat an earlier caption of the same sample exactly"

    @abstractmethod
    def read(self, content: DataContent, options: ReadOptions) -> SourceRead:
        """Every record of the file; a record that cannot be used raises DataFileError naming it."""


def field_error(
    path: Path, where: str, error: ValidationError, skip: int = 0, allowed: Sequence[str] = ()
) -> DataFileError:
    """A pydantic validation error as one line naming the file, the record and the field. `skip`: leading parts of
    the error's location that `where` already names (a list index)."""
    first = error.errors()[0]
    location = [str(part) for part in first["loc"][skip:]]
    shown = ".".join(location) if location else "record"
    if first["type"] == "missing":
        detail = "is missing"
    elif first["type"] == "extra_forbidden":
        detail = "is not a field of this format" + (f" (its fields: {', '.join(allowed)})" if allowed else "")
    else:
        detail = f"{first['msg'][0].lower()}{first['msg'][1:]}, got {first.get('input')!r}"[:300]
    return DataFileError(f"{path}: {where}: field {shown!r} {detail}")
