"""Defects a second hostile test campaign found (silent loss, path escapes, crashes, untrue states, what a
reproduction keeps), each reproduced on real runs: real processes, files on disk, exit codes and messages."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest
from _orchestrator_helpers import (
    REPO_ROOT,
    manifest,
    model_root,
    orchestrator_command,
    orchestrator_env,
    predictions,
    processes_mentioning,
    run_orchestrator,
)
from conftest import CAPTION_WORDS, WITHOUT_SPICE, write_quic_csv

from contract import (
    ABLATION_MANIFEST,
    METRICS_JSON,
    PREDICTIONS_CSV,
    PREDICTIONS_JSONL,
    RUN_MANIFEST,
    MetricsFile,
    PredictionRecord,
    RunManifest,
    read_json,
    read_jsonl,
    results_file,
)

FAST_MODEL = "blip2-opt-2.7b"


def _env(**extra: str) -> dict[str, str]:
    return orchestrator_env(**extra)


def _orchestrate(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 600):  # noqa: ANN202
    return run_orchestrator(*args, env=env or _env(), timeout=timeout)


def _record(index: int, model: str = "m", **fields: object) -> PredictionRecord:
    values: dict[str, object] = {
        "sample_id": f"s{index:03d}",
        "image": f"img{index}.jpg",
        "query": "location",
        "prediction": CAPTION_WORDS[index % len(CAPTION_WORDS)],
        "references": [
            CAPTION_WORDS[(index + 1) % len(CAPTION_WORDS)],
            CAPTION_WORDS[(index + 2) % len(CAPTION_WORDS)],
        ],
        "model_name": model,
    }
    values.update(fields)
    return PredictionRecord.model_validate(values)


def _score(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    # SPICE is not what these tests are about (ablations leave it out through run_orchestrator, scoring here).
    scoring = args and args[0] in ("score", "human-baseline") and "--metrics" not in args
    args = (*args, *WITHOUT_SPICE) if scoring else args
    return subprocess.run(
        [sys.executable, "-m", "scoring", *(str(a) for a in args)], capture_output=True, text=True,
        env=env or _env(), cwd=REPO_ROOT, timeout=timeout,
    )  # fmt: skip


def _runner(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess:
    from conftest import runner_command, runner_env

    return subprocess.run(
        runner_command(*args), capture_output=True, text=True, env=runner_env(), cwd=REPO_ROOT, timeout=timeout
    )


def _local_ablation(data: Path, root: Path, out: Path, models: str = FAST_MODEL, *extra: str | Path) -> list:
    return ["ablation", "--engine", "local", "--gpus", "none", "--models", models, "--data", data, "--output-dir", out,
            "--model-path-root", root, "--max-new-tokens", "4", "--no-report", *extra]  # fmt: skip


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1, 11: a last line without its newline is a record; a torn one is said; a BOM is skipped -----------------------


def test_read_jsonl_keeps_a_complete_last_line_and_says_when_it_drops_a_torn_one(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(_record(i).model_dump_json() for i in range(3)), encoding="utf-8")
    said: list[str] = []
    assert [r.sample_id for r in read_jsonl(path, PredictionRecord, warn=said.append)] == ["s000", "s001", "s002"]
    assert said == []
    path.write_text(path.read_text() + '\n{"sample_id": "s003", "ima', encoding="utf-8")
    assert len(list(read_jsonl(path, PredictionRecord, warn=said.append))) == 3
    assert len(said) == 1 and str(path) in said[0] and "line 4" in said[0] and "incomplete last line" in said[0]
    path.write_text("\ufeff" + _record(0).model_dump_json() + "\n", encoding="utf-8")  # a BOM, as editors write
    assert [r.sample_id for r in read_jsonl(path, PredictionRecord)] == ["s000"]


def test_scoring_counts_a_last_record_without_newline_says_it_dropped_a_torn_one_and_skips_a_bom(
    tmp_path: Path,
) -> None:
    joined = tmp_path / "joined_predictions.jsonl"  # written by another tool: "\n".join(records)
    joined.write_text("\n".join(_record(i, "joined").model_dump_json() for i in range(3)), encoding="utf-8")
    torn = tmp_path / "torn_predictions.jsonl"  # a kill cut the last write
    torn.write_text("".join(_record(i, "torn").model_dump_json() + "\n" for i in range(3)) + '{"sample_id": "s0',
                    encoding="utf-8")  # fmt: skip
    bom = tmp_path / "bom_predictions.jsonl"
    bom.write_text("\ufeff" + "".join(_record(i, "bom").model_dump_json() + "\n" for i in range(3)), encoding="utf-8")
    out = tmp_path / "out"
    done = _score("score", "--predictions", joined, torn, bom, "--output-dir", out)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    counts = {m: read_json(results_file(out, METRICS_JSON, m), MetricsFile) for m in ("joined", "torn", "bom")}
    assert {m: metrics.num_samples for m, metrics in counts.items()} == {"joined": 3, "torn": 3, "bom": 3}
    dropped = [w for w in counts["torn"].warnings if "incomplete last line" in w]
    assert len(dropped) == 1 and str(torn) in dropped[0]
    assert "incomplete last line" in done.stdout  # said on the console, not only in the file
    assert not any("incomplete" in w for w in counts["joined"].warnings + counts["bom"].warnings)


def test_a_resumed_runner_keeps_a_last_record_without_newline_and_cuts_a_torn_one(tmp_path: Path) -> None:
    from runner.loop import read_done

    path = tmp_path / "m_predictions.jsonl"
    lines = [_record(i).model_dump_json() for i in range(3)]
    path.write_text("\n".join(lines), encoding="utf-8")
    said: list[str] = []
    assert len(read_done(path, said.append)) == 3
    assert path.read_text() == "\n".join(lines) + "\n" and said == []  # completed, so the next append stays clean
    path.write_text(path.read_text() + lines[0][:20], encoding="utf-8")
    assert len(read_done(path, said.append)) == 3
    assert path.read_text() == "\n".join(lines) + "\n"
    assert len(said) == 1 and "removed an incomplete last line" in said[0] and str(path) in said[0]


# --- 2: a repeated column is refused --------------------------------------------------------------------------------


def test_a_data_file_that_repeats_a_column_is_refused_with_the_file_and_the_column(tmp_path: Path) -> None:
    from contract import DataFileError, load_dataset

    data = tmp_path / "dup.csv"
    data.write_text("url,query,annotation,annotation\na.jpg,location,first text,second text\n", encoding="utf-8")
    with pytest.raises(DataFileError) as error:
        load_dataset(data)
    assert str(data) in str(error.value) and "['annotation']" in str(error.value)
    assert "more than once" in str(error.value)
    done = _score("score", "--predictions", tmp_path / "m_predictions.jsonl", "--data", data, "--output-dir", tmp_path)
    assert done.returncode == 2 and str(data) in done.stderr and "more than once" in done.stderr


# --- 3, 11: generate_kwargs is an allow-list, recorded, and part of the resume check ------------------------------


ENTRY = """[models."my-blip"]
hub_id = "Salesforce/blip2-opt-2.7b"
family = "blip2"
prompt_format = "Question: {{prompt}} Answer:"
max_image_side = 448
{extra}
"""


@pytest.mark.parametrize(
    "setting",
    ["repetition_penalty = 1.3", "no_repeat_ngram_size = 3", "min_length = 5", "num_return_sequences = 2",
     "do_sample = true", 'eos_token_id = "2"', "pad_token_id = -1", "eos_token_id = []"],
)  # fmt: skip
def test_generate_kwargs_outside_the_allow_list_are_refused_with_file_entry_and_field(
    setting: str, tmp_path: Path
) -> None:
    from runner.registry import CatalogueError, read_catalogue_file

    path = tmp_path / "mine.toml"
    path.write_text(ENTRY.format(extra=f"generate_kwargs = {{ {setting} }}"), encoding="utf-8")
    with pytest.raises(CatalogueError) as error:
        read_catalogue_file(path)
    message = str(error.value)
    assert str(path) in message and "'my-blip'" in message and "generate_kwargs" in message
    assert setting.split(" =")[0] in message


def test_allowed_generate_kwargs_are_accepted() -> None:
    from runner.registry import ModelSpec

    spec = ModelSpec(name="x", hub_id="a/b", generate_kwargs={"eos_token_id": [1, 2], "stop_strings": ["\n\n"]})
    assert spec.generate_kwargs == {"eos_token_id": [1, 2], "stop_strings": ["\n\n"]}


def test_changed_generate_kwargs_are_recorded_and_never_mixed_into_earlier_predictions(
    tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    data = make_panorama_data(tmp_path / "data", num_images=2)
    entries = tmp_path / "mine.toml"
    entries.write_text(ENTRY.format(extra="generate_kwargs = { eos_token_id = 2 }"), encoding="utf-8")
    out = tmp_path / "results"
    args = ["--model", "my-blip", "--models-file", entries, "--model-path", tiny_checkpoint(FAST_MODEL),
            "--data", data.data_file, "--output-dir", out, "--max-new-tokens", "4", "--device", "cpu",
            "--no-progress"]  # fmt: skip
    first = _runner(*args, "--limit", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    run = read_json(results_file(out, RUN_MANIFEST, "my-blip"), RunManifest)
    assert run.decoding["generate_kwargs"] == {"eos_token_id": 2}
    assert run.generate_kwargs_used["eos_token_id"] == 2 and "pad_token_id" in run.generate_kwargs_used  # type: ignore[attr-defined]
    before = results_file(out, PREDICTIONS_JSONL, "my-blip").read_bytes()
    entries.write_text(ENTRY.format(extra="generate_kwargs = { eos_token_id = 3 }"), encoding="utf-8")
    again = _runner(*args)
    assert again.returncode == 2, again.stderr[-3000:]
    assert "was made with other arguments" in again.stderr and "generate_kwargs" in again.stderr
    assert results_file(out, PREDICTIONS_JSONL, "my-blip").read_bytes() == before  # nothing appended


# --- 4: a shard merge is all or nothing ---------------------------------------------------------------------------


def test_a_shard_merge_missing_a_shard_run_record_writes_nothing(tmp_path: Path, make_panorama_data) -> None:
    from contract import file_sha256, load_dataset, write_json_atomic, write_jsonl_atomic
    from contract.shards import Shard, samples_of_shard

    data = make_panorama_data(tmp_path / "data", num_images=2)
    samples = load_dataset(data.data_file).samples
    out = tmp_path / "results"
    for index in range(2):
        shard = Shard(index, 2)
        records = [
            PredictionRecord(sample_id=s.sample_id, image=s.image, query=s.query, prediction="a view",
                             references=s.references, model_name="m")
            for s in samples_of_shard(samples, shard)
        ]  # fmt: skip
        write_jsonl_atomic(shard.predictions(out, "m"), records)
    run = RunManifest(model_name="m", model_id="a/b", family="blip2", dtype="float32", device="cpu",
                      prompt_template="{query}", data_file=str(data.data_file), data_sha256=file_sha256(data.data_file),
                      num_samples=2, batch_size_requested=2, batch_size_used=2, random_weights=True)  # fmt: skip
    write_json_atomic(Shard(0, 2).manifest(out, "m"), run)  # shard 1's run record is missing
    before = _files(out)
    done = _score("score", "--predictions", results_file(out, PREDICTIONS_JSONL, "m"), "--data", data.data_file,
                  "--merge-shards", "2", "--output-dir", out)  # fmt: skip
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "m_run.shard-1-of-2.json missing" in done.stderr and "nothing was merged" in done.stderr
    assert _files(out) == before  # no merged predictions, CSV or run record
    for pattern in (PREDICTIONS_JSONL, PREDICTIONS_CSV, RUN_MANIFEST):
        assert not results_file(out, pattern, "m").exists()


# --- 5, 8: every name that becomes a file name is checked in one place ---------------------------------------------


@pytest.mark.parametrize("name", ["../../escaped/evil", "ABSOLUTE"])
def test_scoring_refuses_a_records_model_name_that_would_leave_the_output_dir(name: str, tmp_path: Path) -> None:
    if name == "ABSOLUTE":
        name = str(tmp_path / "absolute" / "evil")
    records = tmp_path / "a" / "preds.jsonl"  # not <model>_predictions.jsonl: the name comes from the records
    records.parent.mkdir(parents=True)
    records.write_text("".join(_record(i, name).model_dump_json() + "\n" for i in range(3)), encoding="utf-8")
    out = tmp_path / "a" / "b" / "out"
    done = _score("score", "--predictions", records, "--output-dir", out)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"model name {name!r}" in done.stderr and "becomes part of file names" in done.stderr
    assert [p for p in tmp_path.rglob("*") if "evil" in p.name] == []
    assert not out.exists()


def test_human_baseline_refuses_a_name_that_would_leave_the_output_dir(tmp_path: Path, panorama_data) -> None:
    out = tmp_path / "out"
    done = _score("human-baseline", "--data", panorama_data.data_file, "--name", "../evil", "--output-dir", out)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "--name '../evil'" in done.stderr
    assert [p for p in tmp_path.rglob("*") if "evil" in p.name] == []


def test_a_model_name_too_long_for_a_file_name_is_refused_before_anything_starts(tmp_path: Path, panorama_data) -> None:
    (tmp_path / "models").mkdir()
    out = tmp_path / "results"
    hub = _orchestrate(*_local_ablation(panorama_data.data_file, tmp_path / "models", out, "hf:Org/" + "n" * 300))
    assert hub.returncode == 2, hub.stdout[-2000:] + hub.stderr[-2000:]
    assert "is 305 bytes long; at most 160 are allowed" in hub.stderr and "Traceback" not in hub.stderr
    entries = tmp_path / "mine.toml"
    entries.write_text(f'[models."{"m" * 200}"]\nhub_id = "a/b"\n', encoding="utf-8")
    entry = _orchestrate(
        *_local_ablation(panorama_data.data_file, tmp_path / "models", out, "m" * 200, "--models-file", entries)
    )
    assert entry.returncode == 2 and str(entries) in entry.stderr and "is 200 bytes long" in entry.stderr
    assert not out.exists()  # nothing started, no manifest


@pytest.mark.parametrize("family", ["ABSOLUTE", "../../../x"])
def test_a_catalogue_family_that_is_a_path_is_refused_before_any_file_is_copied(family: str, tmp_path: Path) -> None:
    escaped = tmp_path / "escaped"
    if family == "ABSOLUTE":
        family = str(escaped)
    (tmp_path / "pins.txt").write_text("transformers==5.0.0\n")
    entries = tmp_path / "mine.toml"
    entries.write_text(f'[models."evil"]\nhub_id = "a/b"\nfamily = "{family}"\npins = "pins.txt"\n', encoding="utf-8")
    # No Docker engine: the refusal must come first (and a build must never start).
    env = _env(DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock")
    done = _orchestrate("images", "--models", "evil", "--models-file", entries, env=env, timeout=120)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert str(entries) in done.stderr and "'evil'" in done.stderr and "field family" in done.stderr
    assert not escaped.exists()
    assert not (REPO_ROOT / "images" / ".user-pins" / family).exists()


# --- 7: CSV cells a spreadsheet would run are text; the JSONL stays verbatim ----------------------------------------

FORMULAS = ('=HYPERLINK("http://x","y")', "+1+2", "-3+4", "@SUM(A1:A2)", "\tcmd", "\rcmd")


def test_the_predictions_csv_writes_formula_cells_as_text(tmp_path: Path) -> None:
    from contract import Sample
    from contract.shards import write_predictions_csv

    samples = [Sample(sample_id=f"s{i}", image=f"{i}.jpg", image_path=f"/x/{i}.jpg", query=text,
                      references=[text, "ok"]) for i, text in enumerate(FORMULAS)]  # fmt: skip
    records = {s.sample_id: PredictionRecord(sample_id=s.sample_id, image=s.image, query=s.query, prediction=s.query,
                                             references=s.references, error=s.query) for s in samples}  # fmt: skip
    path = tmp_path / "m_predictions.csv"
    write_predictions_csv(path, samples, records)
    rows = list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8"), newline="")))[1:]
    for row, text in zip(rows, FORMULAS, strict=True):
        assert row[1:] == ["'" + text, "'" + text, "'" + text + " | ok", "'" + text]


def test_comparison_csv_writes_a_formula_model_id_as_text() -> None:
    from contract import Summary, SummaryEntry
    from scoring.outputs import comparison_csv

    entry = SummaryEntry(model_name="m", model_id="=cmd|' /C calc'!A0", num_samples=1, metrics={"bleu4": 0.5})
    row = next(csv.DictReader(io.StringIO(comparison_csv(Summary(models=[entry])))))
    assert row["model_id"] == "'=cmd|' /C calc'!A0" and row["bleu4"] == "0.5"


def test_a_run_neutralises_formulas_in_its_csv_and_keeps_them_in_its_jsonl(
    tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    images = make_panorama_data(tmp_path / "data", num_images=1).images
    data = write_quic_csv(tmp_path / "data" / "formulas.csv", [
        (images[0].relative_to(tmp_path / "data").as_posix(), "=1+1", "@SUM(A1)"),
        (images[0].relative_to(tmp_path / "data").as_posix(), "=1+1", "-2+3"),
    ])  # fmt: skip
    out = tmp_path / "results"
    done = _runner("--model", FAST_MODEL, "--model-path", tiny_checkpoint(FAST_MODEL), "--data", data, "--output-dir",
                   out, "--max-new-tokens", "3", "--device", "cpu", "--no-progress")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = list(csv.DictReader(io.StringIO(results_file(out, PREDICTIONS_CSV, FAST_MODEL).read_text())))
    assert row["query"] == "'=1+1" and row["references"] == "'@SUM(A1) | -2+3"
    (record,) = predictions(out, FAST_MODEL)
    assert record.query == "=1+1" and record.references == ["@SUM(A1)", "-2+3"]


# --- 9, 10, 11: clear errors before the model loads ---------------------------------------------------------------


def test_a_models_file_that_is_not_utf8_is_named_with_its_line_and_byte(tmp_path: Path, panorama_data) -> None:
    entries = tmp_path / "latin1.toml"
    entries.write_bytes('# café\n[models."x"]\nhub_id = "a/b"\n'.encode("latin-1"))
    out = tmp_path / "results"
    done = _orchestrate(*_local_ablation(panorama_data.data_file, tmp_path, out, "x", "--models-file", entries))
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"{entries}: line 1 is not valid UTF-8 (byte 0xe9 at offset 5)" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_a_prompt_format_with_another_field_is_refused_before_the_model_loads(
    tmp_path: Path, tiny_checkpoint, panorama_data
) -> None:
    entries = tmp_path / "mine.toml"
    entries.write_text(ENTRY.replace("Question: {{prompt}} Answer:", "{{image}} {{prompt}}").format(extra=""))
    out = tmp_path / "results"
    done = _runner("--model", "my-blip", "--models-file", entries, "--model-path", tiny_checkpoint(FAST_MODEL),
                   "--data", panorama_data.data_file, "--output-dir", out, "--device", "cpu",
                   "--no-progress")  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    assert str(entries) in done.stderr and "'my-blip'" in done.stderr and "field prompt_format" in done.stderr
    assert "{image}" in done.stderr and "loading" not in done.stderr
    assert not results_file(out, PREDICTIONS_JSONL, "my-blip").exists()


def test_an_empty_revision_after_the_at_is_refused(tmp_path: Path, panorama_data) -> None:
    (tmp_path / "models").mkdir()
    done = _orchestrate(*_local_ablation(panorama_data.data_file, tmp_path / "models", tmp_path / "out",
                                             "hf:Org/Name@"))  # fmt: skip
    assert done.returncode == 2 and "'hf:Org/Name@': nothing after @" in done.stderr
    assert not (tmp_path / "out").exists()


def test_an_image_path_that_is_a_folder_is_called_a_folder(tmp_path: Path, panorama_data) -> None:
    from runner.images import ImageLimits, ImageLoadError, load_image

    (tmp_path / "data" / "folder.jpg").mkdir(parents=True)
    data = write_quic_csv(tmp_path / "data" / "d.csv", [("folder.jpg", "location", "a view")])
    (tmp_path / "models" / FAST_MODEL).mkdir(parents=True)
    done = _orchestrate(*_local_ablation(data, tmp_path / "models", tmp_path / "out"))
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "folder.jpg is a folder, not an image file" in done.stderr
    with pytest.raises(ImageLoadError) as error:
        load_image(str(tmp_path / "data" / "folder.jpg"), ImageLimits(max_side=None))
    assert "a folder, not an image file" in str(error.value)


def _full_tmpfs(folder: Path, size: str) -> None:
    if os.getuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]).returncode:
        pytest.skip("tmpfs cannot be mounted here")


def test_disk_full_during_generation_names_the_file_without_a_traceback(
    tmp_path: Path, make_panorama_data, tiny_checkpoint
) -> None:
    data = make_panorama_data(tmp_path / "data", num_images=10, queries=("location", "people", "weather", "sky"))
    full = tmp_path / "full"
    _full_tmpfs(full, "12k")
    try:
        done = _runner("--model", FAST_MODEL, "--model-path", tiny_checkpoint(FAST_MODEL), "--data", data.data_file,
                       "--output-dir", full, "--batch-size", "2", "--max-new-tokens", "4", "--device", "cpu",
                       "--no-progress")  # fmt: skip
        assert done.returncode == 1, done.stderr[-3000:]
        assert "Traceback" not in done.stderr
        assert f"No space left on device: '{full}/{FAST_MODEL}_" in done.stderr
    finally:
        subprocess.run(["umount", str(full)], check=False)


def test_disk_full_during_scoring_names_the_file_without_a_traceback(tmp_path: Path) -> None:
    records = tmp_path / "m_predictions.jsonl"
    records.write_text("".join(_record(i).model_dump_json() + "\n" for i in range(4)), encoding="utf-8")
    full = tmp_path / "full"
    _full_tmpfs(full, "64k")
    try:
        with open(full / "filler", "wb", buffering=0) as filler:  # the output folder is full before scoring starts
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError:
                pass
        done = _score("score", "--predictions", records, "--output-dir", full)
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert f"No space left on device: '{full}/m_" in done.stderr
    finally:
        subprocess.run(["umount", str(full)], check=False)


# --- 12: a sharded --limit run extends to the whole data set with the same --shards --------------------------------


def test_a_limited_sharded_run_is_extended_to_every_sample_with_the_same_shards(
    tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    data = make_panorama_data(tmp_path / "data", num_images=3)  # 6 samples
    root = model_root(tmp_path, tiny_checkpoint, [FAST_MODEL])
    out = tmp_path / "results"
    first = _orchestrate(*_local_ablation(data.data_file, root, out, FAST_MODEL, "--shards", "2", "--limit", "3"))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    earlier = {r.sample_id: r for r in predictions(out, FAST_MODEL)}
    assert len(earlier) == 3
    whole = _orchestrate(*_local_ablation(data.data_file, root, out, FAST_MODEL, "--shards", "2"))
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-2000:]
    assert "unfinished run without shards" not in whole.stdout
    now = {r.sample_id: r for r in predictions(out, FAST_MODEL)}
    assert len(now) == 6 and all(now[sid] == record for sid, record in earlier.items())
    assert read_json(results_file(out, METRICS_JSON, FAST_MODEL), MetricsFile).num_samples == 6


# --- 13: the run manifest records how scoring ended; status says it -------------------------------------------------


def test_status_exits_1_when_scoring_failed_and_the_manifest_says_so(
    tmp_path: Path, tiny_checkpoint, panorama_data
) -> None:
    root = model_root(tmp_path, tiny_checkpoint, [FAST_MODEL])
    out = tmp_path / "results"
    env = _env(SCORING_JAVA=str(tmp_path / "no-java"))  # the scorer stops: Java is not there
    done = _orchestrate(*_local_ablation(panorama_data.data_file, root, out), env=env)
    assert done.returncode == 1, done.stdout[-3000:]
    assert "see logs/scoring.scoring.log" in done.stdout and (out / "logs" / "scoring.scoring.log").is_file()
    status = _orchestrate("status", "--output-dir", out)
    assert status.returncode == 1, status.stdout
    assert "scoring: failed: exited with code 2" in status.stdout
    scoring = manifest(out).scoring
    assert scoring is not None and scoring.status == "failed" and "exited with code 2" in (scoring.message or "")


def test_status_exits_1_when_the_orchestrator_was_killed_while_scoring(
    tmp_path: Path, tiny_checkpoint, panorama_data
) -> None:
    root = model_root(tmp_path, tiny_checkpoint, [FAST_MODEL])
    out = tmp_path / "results"
    process = subprocess.Popen(
        orchestrator_command(*_local_ablation(panorama_data.data_file, root, out)), cwd=REPO_ROOT,
        env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    log = out / "logs" / "scoring.scoring.log"
    deadline = time.monotonic() + 300
    while not (log.exists() and "waiting for METEOR" in log.read_text()):
        assert time.monotonic() < deadline and process.poll() is None, "scoring never started"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while processes_mentioning(str(out)):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    status = _orchestrate("status", "--output-dir", out)
    assert status.returncode == 1, status.stdout
    assert "scoring: did not record its end" in status.stdout
    assert manifest(out).scoring is not None and manifest(out).scoring.status == "running"  # type: ignore[union-attr]


# --- 14: a completed result line is honoured when the time limit fires after it ------------------------------------

SLEEP_AT_EXIT = """import atexit, sys, time
if sys.orig_argv[1:3] == ["-m", "runner"]:
    atexit.register(time.sleep, 600)  # the runner has printed its result line; it now lingers past --timeout
"""


def test_a_runner_that_completed_before_its_time_limit_fired_is_completed_and_scored(
    tmp_path: Path, tiny_checkpoint, panorama_data
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLEEP_AT_EXIT)
    root = model_root(tmp_path, tiny_checkpoint, [FAST_MODEL])
    out = tmp_path / "results"
    env = _env()
    env["PYTHONPATH"] += os.pathsep + str(hook)
    done = _orchestrate(*_local_ablation(panorama_data.data_file, root, out, FAST_MODEL, "--timeout", "90"),
                            env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "its time limit expired after it had completed" in done.stdout
    assert {r.model_name: r.status for r in manifest(out).models} == {FAST_MODEL: "completed"}
    assert read_json(results_file(out, METRICS_JSON, FAST_MODEL), MetricsFile).num_samples == panorama_data.num_samples


# --- 16: catalogue entries are written back with a TOML library ------------------------------------------------------


def test_reproduce_writes_back_an_entry_with_patches(tmp_path: Path, panorama_data) -> None:
    from contract import AblationManifest, file_sha256
    from orchestrator.engines import LocalEngine
    from orchestrator.reproduce import options_from_manifest
    from runner.registry import read_catalogue_file

    fields = {"hub_id": "Qwen/Qwen2.5-VL-3B-Instruct", "family": "qwen2.5-vl", "patches": ["qwen2_5_vl_vision"],
              "generate_kwargs": {"eos_token_id": [1, 2]}, "prompt_format": "<image>{prompt}"}  # fmt: skip
    original = AblationManifest(engine="local", arguments={}, data_file=str(panorama_data.data_file),
                                data_sha256=file_sha256(panorama_data.data_file), models=[],
                                catalogue_entries={"my-qwen": fields})  # fmt: skip
    (tmp_path / "old").mkdir()
    path = tmp_path / "old" / ABLATION_MANIFEST
    path.write_text(original.model_dump_json())
    args = Namespace(manifest=path, output_dir=tmp_path / "new", data=None, gpus=None, model_path_root=None)
    options = options_from_manifest(original, args, LocalEngine())
    assert options.models_file == tmp_path / "new" / "models_file.toml"
    spec = read_catalogue_file(options.models_file)["my-qwen"]
    assert spec.patches == ("qwen2_5_vl_vision",) and spec.generate_kwargs == {"eos_token_id": [1, 2]}
    assert spec.model_dump(exclude={"name", "source"}, exclude_defaults=True) == {
        **fields,
        "patches": ("qwen2_5_vl_vision",),
    }


# --- 18: another data file is refused before anything starts; --overwrite moves the old results aside ---------------


def test_another_data_file_is_refused_before_anything_starts_and_overwrite_moves_the_old_results_aside(
    tmp_path: Path, tiny_checkpoint, make_panorama_data
) -> None:
    first = make_panorama_data(tmp_path / "first", num_images=1)
    other = make_panorama_data(tmp_path / "other", num_images=2, queries=("weather",))
    root = model_root(tmp_path, tiny_checkpoint, [FAST_MODEL])
    out = tmp_path / "results"
    done = _orchestrate(*_local_ablation(first.data_file, root, out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    before = _files(out)

    refused = _orchestrate(*_local_ablation(other.data_file, root, out))
    assert refused.returncode == 2, refused.stdout[-3000:] + refused.stderr[-2000:]
    assert refused.stderr.count("predictions made from another data file") == 1
    assert f"{FAST_MODEL} ({FAST_MODEL}_run.json: {first.data_file.resolve()}" in refused.stderr
    assert "started at" not in refused.stdout and _files(out) == before  # nothing started, nothing touched

    replaced = _orchestrate(*_local_ablation(other.data_file, root, out, FAST_MODEL, "--overwrite"))
    assert replaced.returncode == 0, replaced.stdout[-3000:] + replaced.stderr[-2000:]
    aside = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("replaced-")]
    assert len(aside) == 1 and f"earlier result file(s) to {aside[0]}/" in replaced.stdout
    moved = [f"{FAST_MODEL}_predictions.jsonl", f"{FAST_MODEL}_predictions.csv", f"{FAST_MODEL}_run.json",
             f"{FAST_MODEL}_metrics.json", f"{FAST_MODEL}_sample_scores.jsonl", "all_models_summary.json",
             "comparison.csv"]  # fmt: skip
    assert {name: (aside[0] / name).read_bytes() for name in moved} == {name: before[name] for name in moved}
    assert len(predictions(out, FAST_MODEL)) == other.num_samples  # the new data set's, alone
    new_run = read_json(results_file(out, RUN_MANIFEST, FAST_MODEL), RunManifest)
    assert new_run.data_file == str(other.data_file.resolve())
