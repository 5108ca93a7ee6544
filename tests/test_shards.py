"""Data-parallel shards on the local engine: deterministic split, one runner per (model, shard) spread over the
listed GPUs, merge in data order, identical to an unsharded run (fp32, CPU), resume per shard, one count per folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _orchestrator_helpers import model_root, predictions, run_orchestrator, statuses

from contract import PREDICTIONS_JSONL, RUN_MANIFEST, RunManifest, load_dataset, read_json
from contract.shards import Shard, shard_assignment

MODELS = ["blip2-opt-2.7b", "llava-1.5-7b"]


def test_the_assignment_is_a_pure_balanced_function_of_the_ids_and_the_count() -> None:
    ids = [f"{i:016x}" for i in range(11)]
    first = shard_assignment(ids, 3)
    assert first == shard_assignment(list(reversed(ids)), 3)  # order of the data file does not matter
    sizes = [sum(1 for s in first.values() if s == k) for k in range(3)]
    assert sorted(sizes) == [3, 4, 4] and set(first) == set(ids)
    assert shard_assignment(ids, 1) == dict.fromkeys(ids, 0)


def only(common: list, model: str) -> list:
    """The common ablation arguments with one model instead of all."""
    index = common.index("--models")
    return [*common[: index + 1], model, *common[index + 2 :]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_checkpoint):
    from conftest import build_panorama_data

    tmp = tmp_path_factory.mktemp("shards")
    data = build_panorama_data(tmp / "data", num_images=5, queries=("location", "people"))  # 10 samples
    root = model_root(tmp, tiny_checkpoint, MODELS)
    common = ["ablation", "--engine", "local", "--models", ",".join(MODELS), "--data", data.data_file,
              "--model-path-root", root, "--batch-size", "2", "--max-new-tokens", "5", "--no-report"]  # fmt: skip
    plain = run_orchestrator(*common, "--gpus", "none", "--output-dir", tmp / "plain")
    sharded = run_orchestrator(*common, "--gpus", "0,1", "--shards", "2", "--output-dir", tmp / "sharded")
    return data, tmp, root, common, plain, sharded


def test_two_shards_over_two_gpus_give_what_one_run_gives(runs) -> None:
    data, tmp, _root, _common, plain, sharded = runs
    assert plain.returncode == 0, plain.stdout[-3000:]
    assert sharded.returncode == 0, sharded.stdout[-3000:] + sharded.stderr[-2000:]
    assert statuses(tmp / "sharded") == dict.fromkeys(MODELS, "completed")
    samples = load_dataset(data.data_file).samples
    for model in MODELS:
        one = {r.sample_id: (r.prompt, r.prediction, r.error) for r in predictions(tmp / "plain", model)}
        merged = predictions(tmp / "sharded", model)
        assert [r.sample_id for r in merged] == [s.sample_id for s in samples]  # data-file order
        assert {r.sample_id: (r.prompt, r.prediction, r.error) for r in merged} == one
        for index in range(2):  # each shard file holds exactly its own samples
            shard_ids = {json.loads(line)["sample_id"] for line in
                         Shard(index, 2).predictions(tmp / "sharded", model).read_text().splitlines()}  # fmt: skip
            assert shard_ids == {s for s, k in shard_assignment(one, 2).items() if k == index}
        run = read_json(tmp / "sharded" / RUN_MANIFEST.format(model=model), RunManifest)
        assert run.num_samples == data.num_samples and len(run.shards) == 2  # type: ignore[attr-defined]
    # Each model's two shards ran on the two GPUs (no GPU here: CPU, but each process got its own id).
    started = [line for line in sharded.stdout.splitlines() if " started at " in line]
    assert {line.split("] ", 1)[1].split(" ")[0] for line in started} == {f"{m}#{k}" for m in MODELS for k in (0, 1)}
    assert {line.rsplit("(", 1)[1] for line in started} == {"GPU 0)", "GPU 1)"}


def test_another_shard_count_is_refused_until_merged_and_then_nothing_reruns(runs) -> None:
    data, tmp, root, common, _plain, _sharded = runs
    model = MODELS[0]
    # Unmerged shards of another count: the first shard of 2 done by hand, then an ablation with 3.
    out = tmp / "half"
    first = run_orchestrator(*only(common, model), "--gpus", "none", "--shards", "2",
                             "--output-dir", out, "--limit", "4")  # fmt: skip
    assert first.returncode == 0
    (out / PREDICTIONS_JSONL.format(model=model)).unlink()  # as if the merge had not happened yet
    other = run_orchestrator(*only(common, model), "--gpus", "none", "--shards", "3",
                             "--output-dir", out, "--limit", "4")  # fmt: skip
    assert other.returncode == 1
    assert "unmerged shards of blip2-opt-2.7b made with --shards 2" in other.stdout
    # A merged folder: any count finds nothing to caption.
    again = run_orchestrator(*common, "--gpus", "none", "--shards", "3", "--output-dir", tmp / "sharded")
    assert again.returncode == 0, again.stdout[-3000:]
    for model in MODELS:  # complete: not started at all, whatever the shard count
        assert f"{model} already complete: {data.num_samples}/{data.num_samples}, skipped" in again.stdout
    assert not list((tmp / "sharded" / "logs").glob("*#2.runner.log"))
    for model in MODELS:
        assert len(predictions(tmp / "sharded", model)) == data.num_samples


def test_a_shard_resumes_only_its_missing_samples(runs, tmp_path: Path) -> None:
    data, _tmp, root, common, _plain, _sharded = runs
    model = MODELS[1]
    out = tmp_path / "resume"
    done = run_orchestrator(*only(common, model), "--gpus", "none", "--shards", "2", "--output-dir", out)
    assert done.returncode == 0
    shard_file = Shard(1, 2).predictions(out, model)
    lines = shard_file.read_text().splitlines()
    shard_file.write_text("\n".join(lines[:2]) + "\n")  # shard 1 lost its last samples (a kill)
    (out / PREDICTIONS_JSONL.format(model=model)).unlink()
    resumed = run_orchestrator(*only(common, model), "--gpus", "none", "--shards", "2",
                               "--output-dir", out)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    log = (out / "logs" / f"{model}#1.runner.log").read_text()
    assert f"resuming: 2 sample(s) already in {shard_file}, {len(lines) - 2} to go" in log
    assert len(predictions(out, model)) == data.num_samples
