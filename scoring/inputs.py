"""Reading predictions (and optionally the data file) into what the engine scores; bad input fails early."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from contract import (
    HUMAN_BASELINE,
    PREDICTIONS_JSONL,
    RUN_MANIFEST,
    DataFileError,
    Dataset,
    PredictionRecord,
    RunManifest,
    SubsetInfo,
    load_dataset,
    read_json,
    read_jsonl,
)
from contract.json_formats import read_coco_results
from contract.names import FileNameError, check_file_name
from scoring.engine import ModelPredictions
from scoring.java import ScoringError

_PREDICTIONS_SUFFIX = PREDICTIONS_JSONL.replace("{model}", "")  # "_predictions.jsonl"


def model_name_for(path: Path, records: list[PredictionRecord]) -> str:
    """From the file's name (`<model>_predictions.jsonl`), else the records' one `model_name`, else the file's stem;
    checked, as every name that becomes part of a result file's name (contract.names)."""
    if path.name.endswith(_PREDICTIONS_SUFFIX) and len(path.name) > len(_PREDICTIONS_SUFFIX):
        name = path.name[: -len(_PREDICTIONS_SUFFIX)]
    else:
        names = {record.model_name for record in records if record.model_name}
        name = names.pop() if len(names) == 1 else path.stem
    try:
        return check_file_name(name)
    except FileNameError as error:
        raise ScoringError(f"{path}: {error}") from None


def run_manifest_for(path: Path, model_name: str) -> RunManifest | None:
    """`<model>_run.json` next to the predictions, if the runner wrote one."""
    manifest = path.parent / RUN_MANIFEST.format(model=model_name)
    return read_json(manifest, RunManifest) if manifest.is_file() else None


def model_id_for(path: Path, model_name: str, overrides: Mapping[str, str]) -> str:
    """From `<model>_run.json` next to the predictions, else --model-id NAME=ID, else the model name."""
    manifest = run_manifest_for(path, model_name)
    if manifest is not None:
        return manifest.model_id
    return overrides.get(model_name, model_name)


def read_predictions(path: Path, warnings: list[str] | None = None) -> list[PredictionRecord]:
    """The records; an incomplete last line (a write cut off) is left out and said in `warnings`."""
    if not path.is_file():
        raise ScoringError(f"{path}: predictions file not found")
    try:
        records = list(read_jsonl(path, PredictionRecord, warn=(warnings if warnings is not None else []).append))
    except ValueError as error:
        raise ScoringError(str(error)) from error
    if not records:
        raise ScoringError(f"{path}: no prediction records")
    return records


def _deduplicate(path: Path, records: list[PredictionRecord]) -> tuple[list[PredictionRecord], list[str]]:
    """The runner appends per batch; a resumed run may repeat a sample. The last record wins, with a warning."""
    by_id: dict[str, PredictionRecord] = {}
    for record in records:
        by_id[record.sample_id] = record
    warnings = []
    if len(by_id) != len(records):
        warnings.append(f"{path}: {len(records) - len(by_id)} repeated sample_id lines; the last one of each is used")
    return list(by_id.values()), warnings


def load_model_predictions(
    path: Path,
    dataset: Dataset | None = None,
    intersection: bool = False,
    model_ids: Mapping[str, str] | None = None,
    subset: SubsetInfo | None = None,
) -> ModelPredictions:
    """`subset`: `dataset` holds only the first `subset.limit` samples (--limit); predictions of later samples of the
    same data file are expected then, and left out (an earlier full run, or a run with a larger limit)."""
    torn: list[str] = []
    records, warnings = _deduplicate(path, read_predictions(path, torn))
    warnings = torn + warnings
    if subset is not None and dataset is not None:
        wanted = {sample.sample_id for sample in dataset.samples}
        beyond = [record for record in records if record.sample_id not in wanted]
        if beyond:
            records = [record for record in records if record.sample_id in wanted]
            warnings.append(f"{len(beyond)} predictions beyond the first {subset.limit} samples left out (--limit)")
        if not records:
            raise ScoringError(f"{path}: no prediction for the first {subset.limit} samples of {dataset.path}")
    name = model_name_for(path, records)
    model_id = model_id_for(path, name, model_ids or {})
    run = run_manifest_for(path, name)
    missing = unknown = 0
    if dataset is not None:
        samples = {sample.sample_id: sample for sample in dataset.samples}
        known = [record for record in records if record.sample_id in samples]
        unknown_ids = [record.sample_id for record in records if record.sample_id not in samples]
        predicted = {record.sample_id for record in records}
        missing_ids = [sample.sample_id for sample in dataset.samples if sample.sample_id not in predicted]
        if (unknown_ids or missing_ids) and not intersection:
            raise ScoringError(
                f"{path}: predictions do not match {dataset.path}: {len(unknown_ids)} sample_ids not in the data "
                f"(first: {unknown_ids[:3]}), {len(missing_ids)} data samples without a prediction "
                f"(first: {missing_ids[:3]}). Pass --intersection to score only the samples present in both."
            )
        if not known:
            raise ScoringError(f"{path}: no prediction matches a sample of {dataset.path}")
        missing, unknown = len(missing_ids), len(unknown_ids)
        if missing or unknown:
            warnings.append(
                f"scored the intersection: {len(known)} samples; {missing} data samples without a prediction, "
                f"{unknown} predictions not in the data were left out"
            )
        # Data-file order, references from the data file (the source of truth).
        order = {sample.sample_id: index for index, sample in enumerate(dataset.samples)}
        known.sort(key=lambda record: order[record.sample_id])
        references = [list(samples[record.sample_id].references) for record in known]
        queries = [samples[record.sample_id].query for record in known]
        images = [samples[record.sample_id].image for record in known]
        groups = [samples[record.sample_id].group for record in known] if dataset.has_groups else None
        records = known
    else:
        for number, record in enumerate(records, start=1):
            if not any(ref.strip() for ref in record.references):
                raise ScoringError(
                    f"{path}: sample {record.sample_id} (record {number}) has no references; pass --data FILE"
                )
        references = [list(record.references) for record in records]
        queries = [record.query for record in records]
        images = [record.image for record in records]
        groups = None
    return ModelPredictions(
        model_name=name,
        model_id=model_id,
        sample_ids=[record.sample_id for record in records],
        queries=queries,
        raw_predictions=[record.prediction for record in records],  # a failed sample is scored as "" anyway
        references=references,
        errors=[record.error for record in records],
        images=images,
        missing=missing,
        unknown=unknown,
        warnings=warnings,
        source=str(path),
        random_weights=bool(run is not None and run.random_weights),
        subset=subset,
        groups=groups,
    )


HUMAN_BASELINE_ID = "human (leave-one-out: first reference vs the rest)"


def leave_one_out(dataset: Dataset, model_name: str = HUMAN_BASELINE) -> ModelPredictions:
    """Human agreement: each sample's first reference scored against the others (samples with >= 2)."""
    human = human_baseline_for(dataset, model_name)
    if human is None:
        raise ScoringError(f"{dataset.path}: no sample has two or more references")
    return human


def human_baseline_for(dataset: Dataset, model_name: str = HUMAN_BASELINE) -> ModelPredictions | None:
    """The leave-one-out human agreement over the samples with at least two references; None when there are none.
    Humans are scored against one reference fewer than the models: a rough ceiling, said wherever it is shown."""
    try:
        check_file_name(model_name, "--name")
    except FileNameError as error:
        raise ScoringError(str(error)) from None
    samples = [sample for sample in dataset.samples if len(sample.references) >= 2]
    if not samples:
        return None
    fewer = len(dataset.samples) - len(samples)
    return ModelPredictions(
        model_name=model_name,
        model_id=HUMAN_BASELINE_ID,
        sample_ids=[sample.sample_id for sample in samples],
        queries=[sample.query for sample in samples],
        raw_predictions=[sample.references[0] for sample in samples],
        references=[list(sample.references[1:]) for sample in samples],
        errors=[None] * len(samples),
        images=[sample.image for sample in samples],
        warnings=[f"{fewer} samples with fewer than 2 references left out"] if fewer else [],
        source=str(dataset.path),
        apply_cleanup=False,
        human_baseline=True,
        groups=[sample.group for sample in samples] if dataset.has_groups else None,
    )


def load_data(path: Path, data_format: str | None = None, split: str | None = None, **columns: str) -> Dataset:
    """The data file, any format (`data_format` None: detected); `columns`: a CSV's column names."""
    try:
        return load_dataset(path, data_format=data_format, split=split, **columns)
    except DataFileError as error:
        raise ScoringError(str(error)) from error


def limit_samples(dataset: Dataset, limit: int | None) -> SubsetInfo | None:
    """Keep the data file's first `limit` samples (as `python -m runner --limit` captions them); None: all of them."""
    if limit is None or limit >= len(dataset.samples):
        return None
    if limit < 1:
        raise ScoringError(f"--limit must be at least 1, got {limit}")
    subset = SubsetInfo(num_samples=limit, data_samples=len(dataset.samples), limit=limit)
    dataset.samples = dataset.samples[:limit]
    return subset


def load_coco_results(
    path: Path, annotations: Dataset, name: str | None = None, model_ids: Mapping[str, str] | None = None
) -> ModelPredictions:
    """Another tool's COCO caption results (`[{"image_id", "caption"}]`) scored against a COCO annotations file as
    COCOEvalCap scores them with `params["image_id"] = cocoRes.getImgIds()`: over the images the results cover (in
    the annotations' order), each caption as written (no cleanup: it is the other tool's final text). Refused, as
    pycocotools' loadRes and COCOEvalCap refuse them: an image id that is not an annotated image, and an image with
    two captions. Annotated images without a caption are counted (`missing`) and said in a warning."""
    try:
        model_name = check_file_name(name, "--name") if name is not None else check_file_name(path.stem)
    except FileNameError as error:
        where = "" if name is not None else f"{path}: the name comes from the file's name; "
        raise ScoringError(f"{where}{error}; give another with --name") from None
    try:
        results = read_coco_results(path)
    except DataFileError as error:
        raise ScoringError(str(error)) from None
    by_id = {record_id: sample_id for sample_id, record_id in annotations.record_ids.items()}
    positions: dict[int | str, list[int]] = {}
    for index, result in enumerate(results):
        positions.setdefault(result.image_id, []).append(index)
    repeated = {image_id: where for image_id, where in positions.items() if len(where) > 1}
    if repeated:
        image_id, where = next(iter(repeated.items()))
        raise ScoringError(
            f"{path}: {len(repeated)} image id(s) have more than one caption (first: image_id {image_id!r} in entries "
            f"{', '.join(map(str, where[:5]))}); a results file holds one caption per image (COCOEvalCap cannot "
            "score two: its BLEU needs exactly one hypothesis per image)"
        )
    unknown = [(index, result.image_id) for index, result in enumerate(results) if result.image_id not in by_id]
    if unknown:
        index, image_id = unknown[0]
        hint = ""
        as_text = {str(record_id): record_id for record_id in by_id}
        if str(image_id) in as_text:
            hint = f" (the annotations' id is {as_text[str(image_id)]!r}: a number and a string are different ids)"
        raise ScoringError(
            f"{path}: {len(unknown)} result(s) name an image id that is not an image with captions in "
            f"{annotations.path} (first: entry {index}, image_id {image_id!r}{hint}); pycocotools refuses such a file "
            "('Results do not correspond to current coco set')"
        )
    caption_of = {by_id[result.image_id]: result.caption for result in results}
    samples = [sample for sample in annotations.samples if sample.sample_id in caption_of]
    missing = len(annotations.samples) - len(samples)
    warnings = []
    if missing:
        warnings.append(
            f"scored the {len(samples)} images {path.name} covers, as COCOEvalCap does; {missing} annotated images "
            f"of {annotations.path.name} have no prediction and are not scored"
        )
    return ModelPredictions(
        model_name=model_name,
        model_id=(model_ids or {}).get(model_name, model_name),
        sample_ids=[sample.sample_id for sample in samples],
        queries=[sample.query for sample in samples],
        raw_predictions=[caption_of[sample.sample_id] for sample in samples],
        references=[list(sample.references) for sample in samples],
        errors=[None] * len(samples),
        images=[sample.image for sample in samples],
        missing=missing,
        warnings=warnings,
        source=str(path),
        apply_cleanup=False,
        groups=[sample.group for sample in samples] if annotations.has_groups else None,
    )
