"""Data-parallel shards of one model's samples: which shard a sample is in, the shard files, and their merge.

`--shards N` splits a model's samples into N shards, each captioned by its own runner process (a GPU, a Slurm
array task) into `<model>_predictions.shard-K-of-N.jsonl`; the merge writes `<model>_predictions.jsonl` (data-file
order), `<model>_run.json` and `<model>_predictions.csv`, exactly the files an unsharded run writes, and scoring
reads only those. The assignment is a pure function of the data file's sample ids and N, so every process, engine
and rerun agrees on it, and a killed shard resumes only its own missing samples.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.records import (
    PREDICTIONS_CSV,
    PREDICTIONS_JSONL,
    RUN_MANIFEST,
    PredictionRecord,
    RunManifest,
    Sample,
    read_json,
    read_jsonl,
    results_file,
    spreadsheet_safe,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)

SHARD_PREDICTIONS = "{model}_predictions.shard-{index}-of-{count}.jsonl"
SHARD_RUN_MANIFEST = "{model}_run.shard-{index}-of-{count}.json"
_SHARD_FILE = re.compile(r"_predictions\.shard-(\d+)-of-(\d+)\.jsonl$")


class ShardError(ValueError):
    """Shards that cannot be used as asked (another count on the folder, overlapping shards); says what to do."""


@dataclass(frozen=True)
class Shard:
    index: int  # 0 .. count-1 (a Slurm array task id)
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`K/N`, e.g. `0/4`."""
        index_text, _, count_text = text.partition("/")
        if not (index_text.isdigit() and count_text.isdigit()) or not 0 <= int(index_text) < int(count_text):
            raise ShardError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/4")
        return cls(int(index_text), int(count_text))

    def predictions(self, out_dir: str | Path, model: str) -> Path:
        return Path(out_dir) / SHARD_PREDICTIONS.format(model=model, index=self.index, count=self.count)

    def manifest(self, out_dir: str | Path, model: str) -> Path:
        return Path(out_dir) / SHARD_RUN_MANIFEST.format(model=model, index=self.index, count=self.count)


def shard_assignment(sample_ids: Iterable[str], count: int) -> dict[str, int]:
    """Sample id -> shard: round robin over the sorted ids, so shard sizes differ by at most one."""
    if count < 1:
        raise ShardError(f"--shards must be at least 1, got {count}")
    return {sample_id: position % count for position, sample_id in enumerate(sorted(set(sample_ids)))}


def samples_of_shard(samples: Sequence[Sample], shard: Shard) -> list[Sample]:
    assignment = shard_assignment((s.sample_id for s in samples), shard.count)
    return [sample for sample in samples if assignment[sample.sample_id] == shard.index]


def shards_on_disk(out_dir: str | Path, model: str) -> list[Shard]:
    """The shards of `model` that have a predictions file in the folder."""
    found = []
    for path in Path(out_dir).glob(f"{model}_predictions.shard-*-of-*.jsonl"):
        match = _SHARD_FILE.search(path.name)
        if match and path.name.startswith(f"{model}_predictions."):
            found.append(Shard(int(match.group(1)), int(match.group(2))))
    return sorted(found, key=lambda shard: (shard.count, shard.index))


def shard_counts_on_disk(out_dir: str | Path, model: str) -> set[int]:
    """The shard counts of `model`'s shard files in the folder (empty: none)."""
    return {shard.count for shard in shards_on_disk(out_dir, model)}


def _records(path: Path) -> dict[str, PredictionRecord]:
    return {record.sample_id: record for record in read_jsonl(path, PredictionRecord)} if path.is_file() else {}


def merged_is_complete(out_dir: str | Path, model: str, samples: Sequence[Sample]) -> bool:
    """Whether `<model>_predictions.jsonl` already holds a record for every sample."""
    done = _records(results_file(out_dir, PREDICTIONS_JSONL, model))
    return bool(samples) and all(sample.sample_id in done for sample in samples)


def merged_shard_count(out_dir: str | Path, model: str) -> int | None:
    """The shard count `<model>_predictions.jsonl` was merged from (its run record lists the shards); None when it
    was not made by a merge (or has no readable run record)."""
    try:
        manifest = read_json(results_file(out_dir, RUN_MANIFEST, model), RunManifest)
    except (OSError, ValueError):
        return None
    shards = getattr(manifest, "shards", None)
    return int(shards[0]["count"]) if isinstance(shards, list) and shards else None


def merged_sample_ids(out_dir: str | Path, model: str) -> set[str]:
    """Samples `<model>_predictions.jsonl` holds (empty when there is none)."""
    return set(_records(results_file(out_dir, PREDICTIONS_JSONL, model)))


@dataclass
class MergeOutcome:
    complete: bool
    written: int
    missing: list[str]  # sample ids no shard has captioned (yet)


def merge_shards(out_dir: str | Path, model: str, count: int, samples: Sequence[Sample]) -> MergeOutcome:
    """Merge the N shard files into the model's predictions file, in data-file order, with its run manifest and CSV.

    Written only when every sample has exactly one record: a partial merge would look complete to scoring. A sample
    recorded by two shards (impossible with one N; possible when someone mixed counts by hand) is an error."""
    out_dir = Path(out_dir)
    if count <= 1 or merged_is_complete(out_dir, model, samples):
        # Nothing to merge: an unsharded run, or an earlier merge that covers every sample (its runners then had
        # nothing to caption, whatever the shard count now).
        return MergeOutcome(complete=merged_is_complete(out_dir, model, samples), written=0, missing=[])
    shards = [Shard(index, count) for index in range(count)]
    records: dict[str, PredictionRecord] = {}
    for shard in shards:
        for sample_id, record in _records(shard.predictions(out_dir, model)).items():
            if sample_id in records:
                raise ShardError(f"{model}: sample {sample_id} is in two shard files; move the shard files aside")
            records[sample_id] = record
    missing = [sample.sample_id for sample in samples if sample.sample_id not in records]
    if missing:
        return MergeOutcome(complete=False, written=0, missing=missing)
    ordered = [records[sample.sample_id] for sample in samples]
    # All or nothing: everything is read and checked before the first file is written, and the predictions file,
    # which says "merged" to scoring and to every later run, is written last.
    absent = [path.name for path in (shard.manifest(out_dir, model) for shard in shards) if not path.is_file()]
    if absent:
        raise ShardError(
            f"{model}: cannot merge its shards: {', '.join(absent)} missing (the run record of each shard); nothing "
            "was merged. Rerun the ablation to rewrite it"
        )
    manifests = [read_json(shard.manifest(out_dir, model), RunManifest) for shard in shards]
    merged = merged_manifest(manifests, len(ordered))
    write_json_atomic(results_file(out_dir, RUN_MANIFEST, model), merged)
    write_predictions_csv(results_file(out_dir, PREDICTIONS_CSV, model), samples, records)
    write_jsonl_atomic(results_file(out_dir, PREDICTIONS_JSONL, model), ordered)
    return MergeOutcome(complete=True, written=len(ordered), missing=[])


def merged_manifest(manifests: Sequence[RunManifest], num_samples: int) -> RunManifest:
    """One `<model>_run.json` for the merged predictions: the shards' common settings, their summed work, and each
    shard's own record under `shards`."""
    first = manifests[0]
    merged: dict[str, Any] = first.model_dump()
    generate_s = sum(m.timings.get("generate_s", 0.0) for m in manifests)
    rates = [m.timings.get("samples_per_s") for m in manifests]
    merged.update(
        num_samples=num_samples,
        num_errors=sum(m.num_errors for m in manifests),
        oom_retries=sum(m.oom_retries for m in manifests),
        batch_size_used=max(m.batch_size_used for m in manifests),
        timings={
            "load_s": max(m.timings.get("load_s", 0.0) for m in manifests),
            "generate_s": round(generate_s, 3),
            # Shards run side by side: their speeds add up.
            "samples_per_s": round(sum(r for r in rates if r), 3),
        },
        started_at=min((m.started_at for m in manifests if m.started_at), default=None),
        finished_at=max((m.finished_at for m in manifests if m.finished_at), default=None),
        status="completed",
        num_written=num_samples,
        shards=[
            {
                "index": i,
                "count": len(manifests),
                "device_name": m.device_name,
                "batch_size_used": m.batch_size_used,
                "num_samples": m.num_samples,
                "timings": m.timings,
                "image_reuse": m.image_reuse,
            }
            for i, m in enumerate(manifests)
        ],
    )
    errors: dict[str, int] = {}
    for manifest in manifests:
        for kind, number in manifest.errors_by_kind.items():
            errors[kind] = errors.get(kind, 0) + number
    merged["errors_by_kind"] = errors
    reuse = [m.image_reuse for m in manifests]
    if all(isinstance(record, dict) for record in reuse):
        # The shards' work added up: an image whose queries fall into two shards is encoded (and counted as one of
        # the distinct images) in each of them.
        counted = ("image_encodings", "distinct_images", "samples", "cache_hits")
        merged["image_reuse"] = {
            **reuse[0],
            **{key: None if any(r.get(key) is None for r in reuse) else sum(r[key] for r in reuse) for key in counted},
            "active": all(r.get("active") for r in reuse),
            "reason": next((r["reason"] for r in reuse if r.get("reason")), None),
        }
    else:
        merged.pop("image_reuse", None)
    merged.pop("shard", None)
    return RunManifest.model_validate(merged)


def write_predictions_csv(path: Path, samples: Sequence[Sample], records: dict[str, PredictionRecord]) -> None:
    """`<model>_predictions.csv`, for people: one row per sample in data-file order; references joined by ' | '
    (the JSONL keeps the list). A text a spreadsheet would run as a formula is written as text (spreadsheet_safe)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image_path", "query", "prediction", "references", "error"])
    for sample in samples:
        record = records.get(sample.sample_id)
        if record is not None:
            cells = [sample.image, sample.query, record.prediction, " | ".join(record.references), record.error]
            writer.writerow([spreadsheet_safe(cell) for cell in cells])
    write_text_atomic(path, buffer.getvalue())
