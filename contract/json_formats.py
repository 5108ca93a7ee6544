"""The JSON data file formats: COCO caption annotations, Karpathy split files, JSONL (one sample per line).

Each reads its file into `CaptionRecord`s (contract.sources) and nothing more; grouping, ids and counts are
`contract.dataset`'s. Fields are checked with pydantic (strict: a number is not a caption); a file's other fields
(COCO's licenses, widths, urls; Karpathy's tokens) are allowed and ignored, except in JSONL, whose records are this
project's own format and where an unknown field is more likely a misspelt one.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from contract.sources import CaptionRecord, DataContent, DataFileError, DataSource, ReadOptions, SourceRead, field_error

M = TypeVar("M", bound=BaseModel)

# Karpathy's files name the splits test, val, train and restval; --split takes any value the file uses.
DEFAULT_KARPATHY_SPLIT = "test"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class CocoImage(_Open):
    id: int | str
    file_name: str
    domain: str | None = None  # NoCaps: in-domain, near-domain, out-domain
    group: str | None = None


class CocoAnnotation(_Open):
    image_id: int | str
    caption: str


class KarpathySentence(_Open):
    raw: str


class KarpathyImage(_Open):
    filename: str
    filepath: str | None = None
    split: str
    sentences: list[KarpathySentence]
    cocoid: int | str | None = None
    imgid: int | str | None = None


class JsonlSample(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    image: str
    query: str | None = None
    references: list[str]
    group: str | None = None
    id: int | str | None = None


def _records_list(content: DataContent, key: str, model: type[M], describe: Any = None) -> list[M]:
    """`document[key]`, a list of `model` records; the first bad one is an error naming its index and field."""
    document = content.document
    items = document.get(key) if isinstance(document, dict) else None
    if not isinstance(items, list):
        shown = type(items).__name__ if items is not None else "missing"
        raise DataFileError(f"{content.path}: field {key!r} must be a list of records (it is {shown})")
    try:
        return TypeAdapter(list[model]).validate_python(items)
    except ValidationError as error:
        index = error.errors()[0]["loc"][0]
        where = f"{key}[{index}]"
        if describe is not None and isinstance(index, int):
            where += describe(items[index])
        raise field_error(content.path, where, error, skip=1) from None


def _coco_id(raw: Any) -> str:
    return f" (id {raw['id']!r})" if isinstance(raw, dict) and "id" in raw else ""


def _nonempty(content: DataContent, where: str, field: str, value: str) -> str:
    if not value.strip():
        raise DataFileError(f"{content.path}: {where}: field {field!r} is empty")
    return value.strip()


class CocoSource(DataSource):
    """`{"images": [{"id", "file_name", "domain"?}], "annotations": [{"image_id", "caption"}]}`; one sample per
    image, its references the captions of the annotations naming it, in file order."""

    name = "coco"
    record_noun = "captions"
    merges_records = False  # the annotations are gathered per image here; two images with one file_name are an error

    def read(self, content: DataContent, options: ReadOptions) -> SourceRead:
        images = _records_list(content, "images", CocoImage, _coco_id)
        annotations = _records_list(content, "annotations", CocoAnnotation, _coco_id)
        index_of: dict[int | str, int] = {}
        for index, image in enumerate(images):
            if image.id in index_of:
                raise DataFileError(
                    f"{content.path}: images[{index}]: field 'id' {image.id!r} is also the id of "
                    f"images[{index_of[image.id]}]"
                )
            index_of[image.id] = index
        captions: list[list[str]] = [[] for _ in images]
        for number, annotation in enumerate(annotations):
            if annotation.image_id not in index_of:
                raise DataFileError(
                    f"{content.path}: annotations[{number}]{_coco_id(content.document['annotations'][number])}: field "
                    f"'image_id' {annotation.image_id!r} is not the id of any image in 'images'"
                )
            captions[index_of[annotation.image_id]].append(annotation.caption)
        records = [
            CaptionRecord(
                image=_nonempty(content, f"images[{index}] (id {image.id!r})", "file_name", image.file_name),
                query=None,
                captions=captions[index],
                where=f"images[{index}] (id {image.id!r})",
                group=image.group if image.group is not None else image.domain,
                record_id=image.id,
            )
            for index, image in enumerate(images)
        ]
        return SourceRead(records=records, num_records=len(annotations))


class KarpathySource(DataSource):
    """Karpathy's split files (`dataset_coco.json`, `dataset_flickr30k.json`, `dataset_flickr8k.json`):
    `{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw"}], "cocoid"?, "imgid"?}]}`; the images of
    one split, each a sample whose references are its sentences' `raw` text. The image is `filepath/filename`."""

    name = "karpathy"
    record_noun = "captions"
    merges_records = False

    def read(self, content: DataContent, options: ReadOptions) -> SourceRead:
        def describe(raw: Any) -> str:
            return f" ({raw['filename']!r})" if isinstance(raw, dict) and isinstance(raw.get("filename"), str) else ""

        images = _records_list(content, "images", KarpathyImage, describe)
        split = options.split or DEFAULT_KARPATHY_SPLIT
        splits = Counter(image.split for image in images)
        if split not in splits:
            found = ", ".join(f"{name} ({count} images)" for name, count in sorted(splits.items())) or "none"
            raise DataFileError(
                f"{content.path}: no image is in split {split!r} (--split); splits in the file: {found}"
            )
        records = []
        for index, image in enumerate(images):
            if image.split != split:
                continue
            where = f"images[{index}] ({image.filename!r})"
            name = _nonempty(content, where, "filename", image.filename)
            folder = (image.filepath or "").strip().strip("/")
            record_id = image.cocoid if image.cocoid is not None else image.imgid
            records.append(
                CaptionRecord(
                    image=f"{folder}/{name}" if folder else name,
                    query=None,
                    captions=[sentence.raw for sentence in image.sentences],
                    where=where,
                    record_id=record_id,
                )
            )
        others = ", ".join(f"{name} {count}" for name, count in sorted(splits.items()) if name != split)
        notes = [f"split {split}: {splits[split]} of {len(images)} images" + (f" (others: {others})" if others else "")]
        return SourceRead(records=records, split=split, notes=notes, num_records=sum(len(r.captions) for r in records))


class JsonlSource(DataSource):
    """One sample per line: `{"image": path, "query"?: str, "references": [str, ...], "group"?: str, "id"?: ...}`.
    Either every line has a query or none has."""

    name = "jsonl"
    record_noun = "lines"
    merges_records = False  # a line is a whole sample: a second line with its image and query is an error

    def read(self, content: DataContent, options: ReadOptions) -> SourceRead:
        records = []
        with_query: str | None = None  # where the first line with a query is, or without one
        without_query: str | None = None
        allowed = tuple(JsonlSample.model_fields)
        for number, line in enumerate(content.text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"line {number}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataFileError(
                    f"{content.path}: {where} column {error.colno}: not valid JSON: {error.msg}"
                ) from None
            if not isinstance(raw, dict):
                raise DataFileError(f"{content.path}: {where}: expected a JSON object, got {type(raw).__name__}")
            try:
                sample = JsonlSample.model_validate(raw)
            except ValidationError as error:
                raise field_error(content.path, where, error, allowed=allowed) from None
            image = _nonempty(content, where, "image", sample.image)
            query = None if sample.query is None else _nonempty(content, where, "query", sample.query)
            if query is None:
                without_query = without_query or where
            else:
                with_query = with_query or where
            if with_query and without_query:
                raise DataFileError(
                    f"{content.path}: {without_query} has no field 'query' but {with_query} has one: give every line "
                    "a query, or none (a data set without queries is captioned with the caption instruction)"
                )
            records.append(
                CaptionRecord(
                    image=image,
                    query=query,
                    captions=list(sample.references),
                    where=where,
                    group=None if sample.group is None else _nonempty(content, where, "group", sample.group),
                    record_id=sample.id,
                )
            )
        return SourceRead(records=records, num_records=len(records))


# ---------------------------------------------------------------------------------------------------------
# COCO caption results: another tool's predictions, one caption per image id (`python -m scoring score
# --coco-results`). Not a data file: it has no references; its image ids are those of a COCO annotations file.


class CocoResult(_Open):
    image_id: int | str
    caption: str


def read_coco_results(path: Path) -> list[CocoResult]:
    """`[{"image_id": ..., "caption": "..."}, ...]` (other fields, such as a score, are ignored); an entry that is
    not one is an error naming the file, the entry and the field."""
    if not path.is_file():
        raise DataFileError(f"{path}: results file not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataFileError(f"{path}: not valid UTF-8 (byte offset {error.start})") from None
    content = DataContent(path, text)
    document = content.document
    if not isinstance(document, list):
        keys = sorted(document)[:8] if isinstance(document, dict) else type(document).__name__
        raise DataFileError(
            f'{path}: a COCO results file is a JSON list of {{"image_id", "caption"}} objects; this is a '
            f"{type(document).__name__} ({keys})"
        )
    if not document:
        raise DataFileError(f"{path}: the results list is empty")
    try:
        return TypeAdapter(list[CocoResult]).validate_python(document)
    except ValidationError as error:
        index = error.errors()[0]["loc"][0]
        raise field_error(path, f"entry {index}", error, skip=1) from None
