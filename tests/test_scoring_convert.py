"""`python -m scoring convert`: lmms-eval's logged samples and VLMEvalKit's prediction tables become a COCO results
file (and annotations file) that `score --coco-results` takes, with the same captions, ids and references."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from contract import CAPTION_QUERY, sample_id
from scoring.cli import main as scoring_main
from scoring.inputs import load_coco_results, load_data

REFERENCES = {
    139: ["A woman stands in the dining area at the table.", "A room with chairs, a table, and a woman in it."],
    285: ["A big burly grizzly bear is show with grass in the background."],
    632: ["Bedroom scene with a bookcase, blue comforter and window.", "A bedroom with a bookshelf full of books."],
}
PREDICTIONS = {139: "a woman standing in a kitchen", 285: "a brown bear sitting in the grass", 632: ""}


def lmms_eval_line(doc_id: int, image_id: int) -> dict:
    """One sample as lmms-eval logs it for a COCO caption task: the metric fields hold the same dict."""
    logged = {"answer": REFERENCES[image_id], "pred": PREDICTIONS[image_id], "image_id": image_id}
    return {
        "doc_id": doc_id,
        "target": REFERENCES[image_id][0],
        "arguments": [["Provide a one-sentence caption for the provided image.", {"max_new_tokens": 64}]],
        "resps": [[PREDICTIONS[image_id]]],
        "filtered_resps": [PREDICTIONS[image_id]],
        "doc_hash": "x",
        **{f"coco_{metric}": logged for metric in ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr")},
    }


def _convert(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    code = scoring_main(["convert", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _expected_annotations() -> dict:
    images = [{"id": image_id, "file_name": str(image_id)} for image_id in REFERENCES]
    captions = [(image_id, caption) for image_id, refs in REFERENCES.items() for caption in refs]
    return {
        "images": images,
        "annotations": [{"image_id": i, "id": n, "caption": c} for n, (i, c) in enumerate(captions, start=1)],
    }


@pytest.mark.parametrize("layout", ["jsonl", "logs"])
def test_lmms_eval_samples_become_results_and_annotations(tmp_path: Path, capsys, layout: str) -> None:
    lines = [lmms_eval_line(doc_id, image_id) for doc_id, image_id in enumerate(REFERENCES)]
    source = tmp_path / "20250101_samples_coco2017_cap_val.jsonl"
    if layout == "jsonl":
        source.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    else:
        source = tmp_path / "coco2017_cap_val.json"
        source.write_text(json.dumps({"logs": lines}), encoding="utf-8")
    results, annotations = tmp_path / "llava_results.json", tmp_path / "coco_annotations.json"
    code, text = _convert(capsys, source, "--from", "lmms-eval", "--results", results, "--annotations", annotations)
    assert code == 0, text
    assert json.loads(results.read_text()) == [{"image_id": i, "caption": PREDICTIONS[i]} for i in REFERENCES]
    assert json.loads(annotations.read_text()) == _expected_annotations()
    assert f"wrote {results} (3 captions)" in text and f"wrote {annotations} (3 images with their references)" in text
    model = load_coco_results(results, load_data(annotations, data_format="coco"))
    assert model.model_name == "llava_results" and model.raw_predictions == list(PREDICTIONS.values())
    assert model.references == list(REFERENCES.values())
    assert model.sample_ids == [sample_id(str(i), CAPTION_QUERY) for i in REFERENCES]


def test_vlmevalkit_tables_become_results_and_annotations(tmp_path: Path, capsys) -> None:
    source = tmp_path / "Qwen2-VL-2B_COCO_VAL.tsv"
    with open(source, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["index", "question", "answer", "prediction"])
        for image_id, refs in REFERENCES.items():
            answer = repr(refs) if image_id != 285 else json.dumps(refs)  # Python list text, or JSON
            writer.writerow([image_id, "Please describe this image in general.", answer, PREDICTIONS[image_id]])
    results, annotations = tmp_path / "qwen_results.json", tmp_path / "qwen_annotations.json"
    code, text = _convert(capsys, source, "--from", "vlmevalkit", "--results", results, "--annotations", annotations)
    assert code == 0, text
    assert json.loads(results.read_text()) == [{"image_id": i, "caption": PREDICTIONS[i]} for i in REFERENCES]
    assert json.loads(annotations.read_text()) == _expected_annotations()
    model = load_coco_results(results, load_data(annotations))
    assert model.raw_predictions == list(PREDICTIONS.values()) and model.references == list(REFERENCES.values())


def test_what_cannot_be_converted_is_refused_by_name(tmp_path: Path, capsys) -> None:
    lmms = tmp_path / "samples.jsonl"
    lmms.write_text(json.dumps(lmms_eval_line(0, 139)) + "\n" + json.dumps({"doc_id": 1, "resps": [["x"]]}) + "\n")
    code, text = _convert(capsys, lmms, "--from", "lmms-eval", "--results", tmp_path / "r.json")
    assert code == 2 and f"{lmms}: line 2: no field holds both 'image_id' and 'pred'" in text
    assert not (tmp_path / "r.json").exists()

    table = tmp_path / "model_COCO_VAL.tsv"
    table.write_text("index\tquestion\tprediction\n0\tq\tp\n", encoding="utf-8")
    code, text = _convert(capsys, table, "--from", "vlmevalkit", "--results", tmp_path / "r.json", "--annotations",
                          tmp_path / "a.json")  # fmt: skip
    assert code == 2 and "missing column(s) ['answer']" in text
    table.write_text("index\tanswer\tprediction\n0\t['a caption']\tp\n", encoding="utf-8")
    code, text = _convert(capsys, table, "--from", "vlmevalkit", "--results", tmp_path / "r.json")
    assert code == 2 and "--from vlmevalkit needs --annotations FILE" in text
    table.write_text("index\tanswer\tprediction\n0\t['a', __import__('os')]\tp\n", encoding="utf-8")
    code, text = _convert(capsys, table, "--from", "vlmevalkit", "--results", tmp_path / "r.json", "--annotations",
                          tmp_path / "a.json")  # fmt: skip
    assert code == 2 and "row 2: column 'answer' is not a list of captions" in text  # a literal, never code

    existing = tmp_path / "mine.json"
    existing.write_text("[]")
    code, text = _convert(capsys, lmms, "--from", "lmms-eval", "--results", existing)
    assert code == 2 and f"{existing} exists; choose another name (nothing is overwritten)" in text
    assert existing.read_text() == "[]"


@pytest.mark.skipif(importlib.util.find_spec("openpyxl") is not None, reason="openpyxl is installed")
def test_an_xlsx_table_without_openpyxl_says_what_to_do(tmp_path: Path, capsys) -> None:
    table = tmp_path / "model_COCO_VAL.xlsx"
    table.write_bytes(b"PK\x03\x04")
    code, text = _convert(capsys, table, "--from", "vlmevalkit", "--results", tmp_path / "r.json", "--annotations",
                          tmp_path / "a.json")  # fmt: skip
    assert code == 2 and "reading .xlsx needs openpyxl" in text and "PRED_FORMAT=tsv" in text
