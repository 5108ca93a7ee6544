"""The throughput benchmark: full-size configs, full-size processors, the GPU script in its CPU (--tiny) mode,
the CPU pipeline benchmark and the projection arithmetic. Small and fast: no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUIC360_TSV

from bench.fullsize import BenchConfigError, ParameterCounts, count_parameters, load_bench_config
from runner.registry import MODELS

REPO_ROOT = Path(__file__).resolve().parent.parent

# Parameter counts the model cards state ("Model size" on the Hub pages of the repos named in bench/configs).
PUBLISHED_PARAMETERS = {
    "blip2-opt-2.7b": 3.74e9,
    "internvl2-2b": 2.21e9,
    "blip2-flan-t5-xl": 3.94e9,
    "qwen2.5-vl-3b": 3.75e9,
    "gemma-3-4b": 4.30e9,
    "llava-1.5-7b": 7.06e9,
    "llava-1.6-mistral-7b": 7.57e9,
    "instructblip-vicuna-7b": 7.91e9,
}


def bench_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_module(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=bench_env(), cwd=REPO_ROOT
    )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bench_config_builds_the_published_model_size(name: str) -> None:
    bench = load_bench_config(name)
    assert bench.hub_id == MODELS[name].hub_id
    assert bench.source.startswith("https://huggingface.co/")
    counts = count_parameters(bench)  # meta device: no memory
    assert counts.total == pytest.approx(PUBLISHED_PARAMETERS[name], rel=0.03)
    assert 0 < counts.vision_side < counts.total
    assert counts.per_token + counts.vision_side + counts.encoder_only == counts.total


def test_unknown_bench_config_names_the_file() -> None:
    with pytest.raises(BenchConfigError, match=r"nope\.json.*known: \["):
        load_bench_config("nope")


@pytest.mark.parametrize(
    ("name", "image_tokens", "runner_image_size"),
    [("gemma-3-4b", 256, [1792, 896]), ("llava-1.5-7b", 576, [672, 336]), ("blip2-opt-2.7b", 32, [448, 224])],
)
def test_full_size_processor_gives_the_published_image_token_count(
    name: str, image_tokens: int, runner_image_size: list[int], tmp_path: Path
) -> None:
    from bench.projection import prompt_shape
    from bench.synthetic import write_panorama_jpeg

    panorama = write_panorama_jpeg(tmp_path / "pano.jpg", 2048, 1024, seed=0)
    shape = prompt_shape(MODELS[name], panorama, tmp_path / "tiny")
    assert shape["image_tokens"] == image_tokens
    assert shape["image_size"] == runner_image_size
    assert shape["prompt_tokens"] > image_tokens


@pytest.mark.slow
def test_gpu_bench_tiny_mode_runs_both_paths_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "gpu_bench.json"
    completed = run_module(
        "bench.gpu_bench", "--tiny", "--families", "llava-1.5-7b", "gemma-3-4b", "--image-size", "256x128",
        "--num-samples", "3", "--old-way-samples", "2", "--batch-size", "2", "--max-new-tokens", "6",
        "--work-dir", str(tmp_path / "work"), "--out", str(out),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["mode"] == "tiny"
    assert report["settings"]["min_new_tokens"] == report["settings"]["max_new_tokens"] == 6
    # As the measured runs: every sample encodes its own image; 3 queries per panorama (QuIC-360's usual).
    assert (report["settings"]["reuse_images"], report["settings"]["queries_per_image"]) == ("off", 3)
    by_model = {entry["model"]: entry for entry in report["models"]}
    assert set(by_model) == {"llava-1.5-7b", "gemma-3-4b"}
    for name, old_batch in (("llava-1.5-7b", 2), ("gemma-3-4b", 1)):
        entry = by_model[name]
        assert entry["runner"]["num_samples"] == 3 and entry["runner"]["batch_size"] == 2
        assert entry["old_way"]["num_samples"] == 2 and entry["old_way"]["batch_size"] == old_batch
        for path in ("runner", "old_way"):
            assert entry[path]["new_tokens_per_sample"] == [6]  # every sample did the same decoding work
            assert entry[path]["samples_per_s"] > 0 and entry[path]["generate_s"] > 0
            assert entry[path]["mean_prompt_tokens"] > 0
        assert entry["speedup"] == pytest.approx(entry["runner"]["samples_per_s"] / entry["old_way"]["samples_per_s"],
                                                 abs=0.01)  # fmt: skip
        # The runner path is the runner's own loop: its predictions file holds one record per sample.
        predictions = tmp_path / "work" / name / "runner_eager" / f"{name}_predictions.jsonl"
        assert len(predictions.read_text().splitlines()) == 3
        # The compiled path ran too, on the same weights, with its compilations counted (a bucket or two).
        compiled = entry["runner_compiled"]
        assert compiled["decode"] == "compiled" and compiled["new_tokens_per_sample"] == [6]
        assert 1 <= compiled["warmup_compilations"] <= 3 and compiled["compile_warmup_s"] > 0
        assert compiled["compilations"] <= 1  # the measured run reuses what the warm-up compiled
        assert entry["compiled_vs_eager"] == pytest.approx(compiled["samples_per_s"] / entry["runner"]["samples_per_s"],
                                                           abs=0.01)  # fmt: skip
        eager_ids = (tmp_path / "work" / name / "runner_compiled" / f"{name}_predictions.jsonl").read_text()
        assert sorted(eager_ids.splitlines()) == sorted(predictions.read_text().splitlines())  # token-identical
    assert "llava-1.5-7b" in completed.stdout and "ratio" in completed.stdout


def test_gpu_bench_rejects_an_unknown_family_before_any_work(tmp_path: Path) -> None:
    from bench.gpu_bench import main

    with pytest.raises(SystemExit, match="'nope' is neither a model"):
        main(["--tiny", "--families", "nope", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_cpu_pipeline_measures_runner_and_naive_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "cpu.json"
    completed = run_module(
        "bench.cpu_pipeline", "--images", "1", "--repeats", "1", "--skip-4k", "--families", "llava-1.5-7b",
        "--tiny-samples", "2", "--batch", "2", "--out", str(out),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    sides = {row["max_side"] for row in report["decode"]}
    assert 672 in sides and all(row["source"] == "2048x1024 JPEG" for row in report["decode"])
    for row in report["decode"]:
        assert row["naive_images_per_s"] > 0 and row["runner_images_per_s"] > 0
        assert row["ratio_runner_vs_naive"] == pytest.approx(row["runner_images_per_s"] / row["naive_images_per_s"],
                                                             rel=0.05)  # fmt: skip
    (pre,) = report["preprocessing"]
    assert pre["model"] == "llava-1.5-7b" and pre["runner_input_size"] == [672, 336]
    (tiny,) = report["tiny_runner"]
    assert tiny["samples"] == 2 and tiny["errors"] == 0
    assert report["writing"]["records_per_s"] > 0


def test_projection_is_the_stated_bandwidth_arithmetic() -> None:
    import argparse

    from bench.projection import project_model

    counts = ParameterCounts(total=7_000_000_000, vision_side=300_000_000, per_token=6_700_000_000, encoder_only=0,
                             kv_bytes_per_token_bf16=524_288)  # fmt: skip
    shape = {"prompt_tokens": 600, "image_tokens": 576, "image_size": [672, 336]}
    args = argparse.Namespace(samples=1211, new_tokens=64, batch_size=32, bandwidth=3.35e12, peak_flops=989e12,
                              mfu=0.4, disk_bytes_per_s=2e9, startup_s=10.0, step_overhead_ms=10.0,
                              reuse_images=False, images=393)  # fmt: skip
    row = project_model(MODELS["llava-1.5-7b"], counts, shape, args)
    steps = 38 * 64  # ceil(1211 / 32) batches x 64 tokens
    step_s = (2 * 6.7e9 + 32 * (600 + 32) * 524_288) / 3.35e12
    assert row["decode_steps"] == steps
    assert row["decode_s"] == pytest.approx(steps * step_s, abs=0.05)
    assert row["load_s"] == pytest.approx(2 * 7e9 / 2e9 + 10, abs=0.05)
    assert row["step_overhead_s"] == pytest.approx(steps * 0.010, abs=0.05)
    prefill = 2 * 1211 * (6.7e9 * 600 + 0.3e9 * 577) / (989e12 * 0.4)
    assert row["prefill_s"] == pytest.approx(prefill, abs=0.05)
    assert row["total_s"] == pytest.approx(row["decode_s"] + row["prefill_s"] + row["load_s"] + row["step_overhead_s"],
                                           abs=0.2)  # fmt: skip
    # --reuse-images: the vision side runs over the 393 distinct images instead of the 1,211 samples.
    args.reuse_images = True
    reused = project_model(MODELS["llava-1.5-7b"], counts, shape, args)
    prefill = 2 * (1211 * 6.7e9 * 600 + 393 * 0.3e9 * 577) / (989e12 * 0.4)
    assert reused["prefill_s"] == pytest.approx(prefill, abs=0.05)
    assert reused["decode_s"] == row["decode_s"] and reused["load_s"] == row["load_s"]


def test_reuse_skips_only_the_vit_for_the_blip_family() -> None:
    """What reuse encodes once per image: the whole vision side, but only the ViT for BLIP-2 and InstructBLIP
    (their Q-Former and projection run per sample; InstructBLIP's Q-Former reads the instruction)."""
    from bench.projection import reused_parameters

    for name in ("qwen2.5-vl-3b", "gemma-3-4b", "llava-1.6-mistral-7b", "internvl2-2b"):
        counts = count_parameters(load_bench_config(name))
        assert reused_parameters(MODELS[name], counts) == counts.vision_side
    for name in ("instructblip-vicuna-7b", "blip2-opt-2.7b"):
        counts = count_parameters(load_bench_config(name))
        vit = reused_parameters(MODELS[name], counts)
        assert 0.9e9 < vit < counts.vision_side  # EVA ViT-g: about 1 B parameters


@pytest.mark.skipif(not QUIC360_TSV.is_file(), reason=f"{QUIC360_TSV} (the QuIC-360 test split text) is not here")
def test_image_reuse_bench_takes_the_split_structure_and_counts_the_tower_runs(tmp_path: Path) -> None:
    from bench.image_reuse import quic360_structure

    structure = quic360_structure(QUIC360_TSV, 393)
    assert (structure.images, structure.samples) == (393, 1211)
    assert sum(len(queries) for _, queries in structure.chosen) == 1211
    out = tmp_path / "image_reuse.json"
    done = run_module("bench.image_reuse", "--tiny", "--images", "2", "--families", "llava-1.5-7b", "--dtype",
                      "float32", "--data", str(QUIC360_TSV), "--out", str(out),
                      "--work-dir", str(tmp_path / "w"))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["data"]["images"] == 2 and report["data"]["samples"] == sum(report["data"]["queries_per_image"])
    (entry,) = report["models"]
    assert entry["identical_predictions"] is True
    assert entry["off"]["image_encodings"] == report["data"]["samples"]
    assert entry["on"]["image_encodings"] == 2 == entry["on"]["distinct_images"]


def test_cpu_vision_share_is_scaled_to_the_real_depths(tmp_path: Path) -> None:
    from bench.projection import cpu_vision_shares, stack_depths

    assert stack_depths("qwen2.5-vl-3b") == (32, 36) and stack_depths("gemma-3-4b") == (27, 34)
    off = {"cpu_s": 30.0, "vision_cpu_s": 10.0}
    run = {"settings": {"layers": 2}, "models": [{"model": "qwen2.5-vl-3b", "off": off}]}
    path = tmp_path / "image_reuse.json"
    path.write_text(json.dumps(run))
    vision, rest = 10.0 * 32 / 2, 20.0 * 36 / 2
    assert cpu_vision_shares(path) == {"qwen2.5-vl-3b": pytest.approx(vision / (vision + rest))}
