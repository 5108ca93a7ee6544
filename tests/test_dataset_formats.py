"""The data file formats behind contract.load_dataset: COCO caption annotations, Karpathy split files, JSONL, and
CSV/TSV. The same samples in any format give the same samples (ids, images, queries, references in order), and a
file that cannot be used is refused with its file, record and field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_formats import (
    SAMPLE_DIR,
    TruthSample,
    sample_captions,
    write_coco,
    write_csv,
    write_jsonl,
    write_karpathy,
)

from contract import CAPTION_QUERY, DataFileError, load_dataset, sample_id
from orchestrator.plan import AblationOptions, PlanError, build_plan
from runner.loop import DEFAULT_CAPTION_PROMPT, DEFAULT_PROMPT_TEMPLATE, RunnerError, prompt_template_for

WITH_QUERIES = [
    TruthSample("images/beach.jpg", "people", ["Three people on the sand.", "People at the sea."], "coast"),
    TruthSample("images/beach.jpg", "sea", ["The calm blue sea."], "coast"),
    TruthSample("images/street.jpg", "cars", ["A red car and a blue car.", "Two cars.", "Cars on a road."], "town"),
]


def _as_tuples(dataset) -> list[tuple[str, str, str, list[str], str | None]]:  # noqa: ANN001
    return [(s.sample_id, s.image, s.query, s.references, s.group) for s in dataset.samples]


def _expected(samples: list[TruthSample], groups: bool = True) -> list[tuple[str, str, str, list[str], str | None]]:
    rows = []
    for sample in samples:
        query = sample.query or CAPTION_QUERY
        rows.append(
            (sample_id(sample.image, query), sample.image, query, sample.references, sample.group if groups else None)
        )
    return rows


@pytest.mark.parametrize("name", ["coco", "nocaps", "karpathy", "karpathy-flickr", "jsonl"])
def test_every_format_gives_the_samples_of_the_same_csv(tmp_path: Path, name: str) -> None:
    truth = sample_captions()
    groups = name in ("nocaps", "jsonl")
    if name in ("coco", "nocaps"):
        path = write_coco(tmp_path / "captions.json", truth, domains=name == "nocaps")
    elif name.startswith("karpathy"):
        others = {"train": sample_captions(1)[:3], "val": sample_captions(2)[3:5], "restval": sample_captions(1)[5:]}
        for split, samples in others.items():  # other images: the test split must not read them
            for sample in samples:
                sample.image = sample.image.replace("images/", f"images/{split}_")
        path = write_karpathy(
            tmp_path / "dataset_coco.json", {"test": truth, **others}, with_filepath=name == "karpathy"
        )
    else:
        path = write_jsonl(tmp_path / "data.jsonl", truth)
    dataset = load_dataset(path, image_root=SAMPLE_DIR)
    csv_dataset = load_dataset(write_csv(tmp_path / "same.csv", truth), image_root=SAMPLE_DIR)

    assert dataset.format == {"nocaps": "coco", "karpathy-flickr": "karpathy"}.get(name, name)
    assert _as_tuples(dataset) == _expected(truth, groups)
    assert [s.model_dump(exclude={"group"}) for s in dataset.samples] == [
        s.model_dump(exclude={"group"}) for s in csv_dataset.samples
    ]
    assert dataset.samples[0].image_path == str(SAMPLE_DIR / "images" / "beach.jpg")
    assert not dataset.has_queries and not csv_dataset.has_queries
    assert dataset.has_groups == groups
    assert load_dataset(path, image_root=SAMPLE_DIR, data_format=dataset.format).samples == dataset.samples


def test_jsonl_with_queries_and_groups_equals_the_csv(tmp_path: Path) -> None:
    dataset = load_dataset(write_jsonl(tmp_path / "data.jsonl", WITH_QUERIES))
    assert _as_tuples(dataset) == _expected(WITH_QUERIES)
    assert dataset.has_queries and dataset.has_groups
    csv_dataset = load_dataset(write_csv(tmp_path / "data.csv", WITH_QUERIES))
    assert [s.sample_id for s in csv_dataset.samples] == [s.sample_id for s in dataset.samples]
    assert dataset.summary_line().endswith(
        "3 samples from 3 lines (0 empty annotations dropped, 0 samples without any reference dropped) [jsonl]"
    )


def test_coco_reads_ids_domains_and_drops_images_without_captions(tmp_path: Path) -> None:
    truth = sample_captions()
    path = write_coco(tmp_path / "nocaps_val.json", truth, domains=True, uncaptioned=["test_only.jpg"])
    document = json.loads(path.read_text())
    document["annotations"].append({"image_id": truth[0].record_id, "id": 999, "caption": "   "})
    path.write_text(json.dumps(document))
    dataset = load_dataset(path)
    assert len(dataset.samples) == len(truth)
    assert dataset.samples_without_reference_dropped == 1 and dataset.empty_annotations_dropped == 1
    assert dataset.num_rows == sum(len(s.references) for s in truth) + 1
    assert dataset.record_ids == {sample_id(s.image, CAPTION_QUERY): s.record_id for s in truth}
    assert {s.group for s in dataset.samples} == {"in-domain", "near-domain", "out-domain"}


def test_karpathy_splits(tmp_path: Path) -> None:
    test, val = sample_captions()[:4], sample_captions(1)[4:]
    path = write_karpathy(tmp_path / "dataset_coco.json", {"train": [], "val": val, "test": test})
    assert [s.image for s in load_dataset(path).samples] == [s.image for s in test]  # test by default
    chosen = load_dataset(path, split="val")
    assert chosen.split == "val" and [s.references for s in chosen.samples] == [s.references for s in val]
    assert chosen.record_ids[chosen.samples[0].sample_id] == val[0].record_id  # cocoid
    assert "split val: 3 of 7 images (others: test 4)" in chosen.notes
    with pytest.raises(
        DataFileError,
        match=r"dataset_coco.json: no image is in split 'restval' \(--split\); "
        r"splits in the file: test \(4 images\), val \(3 images\)",
    ):
        load_dataset(path, split="restval")
    flickr = write_karpathy(
        tmp_path / "dataset_flickr30k.json", {"test": test}, dataset="flickr30k", with_filepath=False
    )
    loaded = load_dataset(flickr)
    assert loaded.record_ids[loaded.samples[1].sample_id] == 1  # imgid when there is no cocoid


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "id": 7, "caption": 5}]},
            r"annotations\[0\] \(id 7\): field 'caption' input should be a valid string, got 5",
        ),
        (
            {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 7, "caption": "x"}]},
            r"annotations\[0\] \(id 7\): field 'image_id' is missing",
        ),
        (
            {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 2, "id": 7, "caption": "x"}]},
            r"annotations\[0\] \(id 7\): field 'image_id' 2 is not the id of any image in 'images'",
        ),
        (
            {"images": [{"id": 1}], "annotations": []},
            r"images\[0\] \(id 1\): field 'file_name' is missing",
        ),
        (
            {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}], "annotations": []},
            r"images\[1\]: field 'id' 1 is also the id of images\[0\]",
        ),
        (
            {
                "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "a.jpg"}],
                "annotations": [{"image_id": 1, "caption": "x"}, {"image_id": 2, "caption": "y"}],
            },
            r"images\[1\] \(id 2\) has the image 'a.jpg' of images\[0\] \(id 1\): one sample per image",
        ),
        ({"images": {"id": 1}, "annotations": []}, r"field 'images' must be a list of records \(it is dict\)"),
    ],
)
def test_bad_coco_files_name_the_record_and_field(tmp_path: Path, document: dict, message: str) -> None:
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(DataFileError, match=message) as error:
        load_dataset(path)
    assert str(error.value).startswith(f"{path}: ")


def test_bad_karpathy_records_name_the_image_and_field(tmp_path: Path) -> None:
    path = tmp_path / "dataset_flickr8k.json"
    images = [
        {"filename": "ok.jpg", "split": "test", "sentences": [{"raw": "fine"}]},
        {"filename": "bad.jpg", "split": "test", "sentences": [{"raw": "fine"}, {"tokens": ["no", "raw"]}]},
    ]
    path.write_text(json.dumps({"images": images}), encoding="utf-8")
    with pytest.raises(DataFileError, match=r"images\[1\] \('bad.jpg'\): field 'sentences.1.raw' is missing"):
        load_dataset(path)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ['{"image": "a.jpg", "references": ["x"]}', '{"image": "b.jpg", "references": ["y"'],
            r"line 2 column \d+: not valid JSON",
        ),
        (['{"image": "a.jpg", "refs": ["x"]}'], r"line 1: field 'references' is missing"),
        (
            ['{"image": "a.jpg", "references": ["x"], "qeury": "people"}'],
            r"line 1: field 'qeury' is not a field of this format \(its fields: image, query, references, group, id\)",
        ),
        (['{"image": "a.jpg", "references": "x"}'], r"line 1: field 'references' input should be a valid list"),
        (
            ['{"image": "a.jpg", "references": ["x", 3]}'],
            r"line 1: field 'references.1' input should be a valid string, got 3",
        ),
        (['{"image": " ", "references": ["x"]}'], r"line 1: field 'image' is empty"),
        (
            ['{"image": "a.jpg", "query": "sea", "references": ["x"]}', "", '{"image": "b.jpg", "references": ["y"]}'],
            r"line 3 has no field 'query' but line 1 has one",
        ),
        (
            ['{"image": "a.jpg", "references": ["x"]}', '{"image": "a.jpg", "references": ["y"]}'],
            r"line 2 has the image 'a.jpg' of line 1: one sample per image$",
        ),
        (
            ['{"image": "a.jpg", "references": ["x"]}', '["not", "an", "object"]'],
            r"line 2: expected a JSON object, got list",
        ),
    ],
)
def test_bad_jsonl_lines_name_the_line_and_field(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataFileError, match=message) as error:
        load_dataset(path, data_format="jsonl")
    assert str(error.value).startswith(f"{path}: ")


def test_format_detection_and_its_refusals(tmp_path: Path) -> None:
    one_line = tmp_path / "one.jsonl"
    one_line.write_text('{"image": "a.jpg", "references": ["x"]}\n', encoding="utf-8")
    assert load_dataset(one_line).format == "jsonl"
    tsv = tmp_path / "data.txt"
    tsv.write_text("url\tquery\tannotation\na.jpg\tsea\tx\n", encoding="utf-8")
    assert load_dataset(tsv).format == "csv"

    results = tmp_path / "results.json"
    results.write_text('[{"image_id": 1, "caption": "a dog"}]', encoding="utf-8")
    with pytest.raises(DataFileError, match=r"results.json: a JSON list is not a data file \(a COCO results file\?"):
        load_dataset(results)
    other = tmp_path / "other.json"
    other.write_text('{"categories": [], "licenses": []}', encoding="utf-8")
    with pytest.raises(
        DataFileError,
        match=r"other.json: a JSON file of no known data format \(its keys: \['categories', 'licenses'\]\)",
    ):
        load_dataset(other)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [\n  {"id": 1,}\n]}', encoding="utf-8")
    with pytest.raises(DataFileError, match=r"broken.json: line 2 column 12: not valid JSON"):
        load_dataset(broken)
    with pytest.raises(DataFileError, match=r"--split 'test' applies to a Karpathy split file only; this file is csv"):
        load_dataset(tsv, split="test")
    with pytest.raises(DataFileError, match=r"unknown data format 'yaml'"):
        load_dataset(tsv, data_format="yaml")
    # Forcing a format the content is not: the format's own error.
    with pytest.raises(DataFileError, match=r"data.txt: line 1 column 1: not valid JSON"):
        load_dataset(tsv, data_format="coco")


def test_a_csv_whose_every_query_is_caption_is_a_data_set_without_queries(tmp_path: Path) -> None:
    truth = sample_captions()[:2]
    assert not load_dataset(write_csv(tmp_path / "captions.csv", truth)).has_queries
    assert load_dataset(write_csv(tmp_path / "queries.csv", WITH_QUERIES)).has_queries


def test_the_prompt_template_a_data_set_gets() -> None:
    assert prompt_template_for(None, has_queries=True) == DEFAULT_PROMPT_TEMPLATE
    assert prompt_template_for(None, has_queries=False) == DEFAULT_CAPTION_PROMPT
    assert prompt_template_for("Caption it.", has_queries=False) == "Caption it."
    assert prompt_template_for("Describe the {query}.", has_queries=False) == "Describe the {query}."
    with pytest.raises(RunnerError, match=r"has no \{query\} placeholder \(the data set has queries"):
        prompt_template_for("Caption it.", has_queries=True)
    with pytest.raises(RunnerError, match=r"the only field allowed is a bare \{query\}"):
        prompt_template_for("Caption {image}.", has_queries=False)


def test_the_plan_checks_the_data_file_and_the_template_against_it(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "blip2-opt-2.7b").mkdir(parents=True)
    truth = sample_captions()[:3]
    coco = write_coco(tmp_path / "captions.json", truth, domains=True)

    def plan(data: Path, **options: object):  # noqa: ANN202
        return build_plan(
            AblationOptions(
                models=["blip2-opt-2.7b"], data_file=data, output_dir=tmp_path / "out", model_path_root=models,
                image_root=SAMPLE_DIR, **options,  # type: ignore[arg-type]
            )
        )  # fmt: skip

    planned = plan(coco, prompt_template="Write a caption.")
    assert (planned.data_format, planned.num_samples) == ("coco", 3)
    with pytest.raises(PlanError, match=r"--prompt-template: prompt template 'Write a caption.' has no \{query\}"):
        plan(write_csv(tmp_path / "queries.csv", WITH_QUERIES), prompt_template="Write a caption.")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": [{"image_id": 1}]}))
    with pytest.raises(PlanError, match=rf"data file: {bad}: annotations\[0\]: field 'caption' is missing"):
        plan(bad)
    karpathy = write_karpathy(tmp_path / "k.json", {"test": truth, "val": truth[:1]})
    assert plan(karpathy, split="val").num_samples == 1
    with pytest.raises(PlanError, match=r"no image is in split 'dev'"):
        plan(karpathy, split="dev")
