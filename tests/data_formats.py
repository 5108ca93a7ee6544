"""Writers of the same samples in every data file format (CSV, COCO annotations, Karpathy split file, JSONL), written
here from plain lists (not by the project's readers), so a test can load each and compare it with the CSV."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from contract import CAPTION_QUERY

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_ROOT / "data" / "sample"
NOCAPS_DOMAINS = ("in-domain", "near-domain", "out-domain")


@dataclass
class TruthSample:
    image: str  # as written in the file
    query: str | None  # None: a data set without queries
    references: list[str]
    group: str | None = None
    record_id: int | None = None


def sample_captions(query_index: int = 0) -> list[TruthSample]:
    """data/sample's panoramas, each with the captions of its `query_index`-th query, without queries; the image as
    `images/<name>` (relative to data/sample)."""
    by_image: dict[str, dict[str, list[str]]] = {}
    with open(SAMPLE_DIR / "sample.csv", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            by_image.setdefault(row["url"], {}).setdefault(row["query"], []).append(row["annotation"])
    samples = []
    for index, (image, queries) in enumerate(by_image.items()):
        captions = list(queries.values())[query_index % len(queries)]
        samples.append(TruthSample(image, None, captions, NOCAPS_DOMAINS[index % 3], record_id=1000 + index))
    return samples


def write_csv(path: Path, samples: Sequence[TruthSample], delimiter: str = ",") -> Path:
    """url,query,annotation; a sample without a query gets CAPTION_QUERY, as the other formats' samples do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["url", "query", "annotation"])
        for sample in samples:
            for reference in sample.references:
                writer.writerow([sample.image, sample.query or CAPTION_QUERY, reference])
    return path


def write_coco(
    path: Path, samples: Sequence[TruthSample], domains: bool = False, uncaptioned: Sequence[str] = ()
) -> Path:
    """COCO caption annotations; annotations interleaved across images (as real files have them); `uncaptioned`:
    images listed without any annotation (NoCaps' test images look like this)."""
    images, annotations = [], []
    for index, sample in enumerate(samples):
        assert sample.query is None
        image_id = sample.record_id if sample.record_id is not None else index
        entry = {"id": image_id, "file_name": sample.image, "height": 512, "width": 1024, "license": 1}
        if domains:
            entry["domain"] = sample.group
        images.append(entry)
    for index, name in enumerate(uncaptioned):
        images.append({"id": 90000 + index, "file_name": name})
    longest = max(len(sample.references) for sample in samples)
    for position in range(longest):
        for index, sample in enumerate(samples):
            if position < len(sample.references):
                image_id = sample.record_id if sample.record_id is not None else index
                annotations.append(
                    {"image_id": image_id, "id": len(annotations) + 1, "caption": sample.references[position]}
                )
    document = {"info": {"description": "test"}, "licenses": [], "images": images, "annotations": annotations}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1), encoding="utf-8")
    return path


def write_karpathy(
    path: Path, splits: dict[str, Sequence[TruthSample]], dataset: str = "coco", with_filepath: bool = True
) -> Path:
    """A Karpathy split file (dataset_coco.json style) with the samples of each split; with_filepath: the image's
    folder in "filepath", its name in "filename" (COCO's file); else all in "filename" (Flickr30k's)."""
    images = []
    sentence_id = 0
    for split, samples in splits.items():
        for sample in samples:
            assert sample.query is None
            folder, _, name = sample.image.rpartition("/")
            entry: dict[str, object] = {"filename": name if with_filepath else sample.image, "split": split}
            if with_filepath:
                entry["filepath"] = folder
            entry["imgid"] = len(images)
            sentences = []
            for reference in sample.references:
                tokens = reference.lower().rstrip(".").split()
                sentences.append({"tokens": tokens, "raw": reference, "imgid": len(images), "sentid": sentence_id})
                sentence_id += 1
            entry["sentences"] = sentences
            entry["sentids"] = [s["sentid"] for s in sentences]
            if sample.record_id is not None and dataset == "coco":
                entry["cocoid"] = sample.record_id
            images.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "dataset": dataset}), encoding="utf-8")
    return path


def write_jsonl(path: Path, samples: Sequence[TruthSample], groups: bool = True) -> Path:
    lines = []
    for sample in samples:
        record: dict[str, object] = {"image": sample.image}
        if sample.query is not None:
            record["query"] = sample.query
        record["references"] = sample.references
        if groups and sample.group is not None:
            record["group"] = sample.group
        lines.append(json.dumps(record, ensure_ascii=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
