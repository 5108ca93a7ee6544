"""`--batch-size auto` (the default): how the size is chosen, what the manifest records, what the CLIs accept.

The GPU branch reads torch.cuda.mem_get_info, which cannot run here; `auto_batch_size` takes the free bytes as an
argument so the policy itself is tested with the memory figures of real cards."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT, runner_command, runner_env

from contract import RUN_MANIFEST, RunManifest, read_json, results_file
from orchestrator.ablation import runner_argv
from orchestrator.engines import RunPaths
from orchestrator.plan import AblationOptions, GpuSelection, PlanError, build_plan
from runner.adapters.base import Adapter
from runner.cli import batch_size
from runner.loop import AUTO_BATCH_CPU, AUTO_BATCH_MAX, RunConfig, RunnerError, auto_batch_size, run
from runner.registry import MODELS, get_model

GB = 10**9


def test_auto_on_a_gpu_is_the_largest_power_of_two_that_fits_80_percent_of_free_memory() -> None:
    llava_next = get_model("llava-1.6-mistral-7b").gpu_gb_per_sample  # the hungriest per sample (0.49 GB)
    # 60 GB free (an 80 GB card after 15 GB of weights): 0.8 * 60 / 0.49 = 97.9 -> 64.
    assert auto_batch_size(llava_next, 60 * GB, 1211) == 64
    size = auto_batch_size(llava_next, 60 * GB, 1211)
    assert size * llava_next * GB <= 0.8 * 60 * GB < 2 * size * llava_next * GB
    # 125 GB free (an H200): 204 fit, capped at AUTO_BATCH_MAX.
    assert auto_batch_size(llava_next, 125 * GB, 1211) == AUTO_BATCH_MAX == 128
    # Almost nothing free: 1, never 0; the OOM halving is the safety net below that.
    assert auto_batch_size(llava_next, GB // 10, 1211) == 1
    assert auto_batch_size(llava_next, 0, 1211) == 1
    # Never more than the samples left to caption.
    assert auto_batch_size(llava_next, 125 * GB, 20) == 20
    # CPU: the old fixed default.
    assert auto_batch_size(llava_next, None, 1211) == AUTO_BATCH_CPU == 8
    # Every model has a measured, positive figure, and a small one gets a bigger batch in the same memory.
    assert all(spec.gpu_gb_per_sample > 0 for spec in MODELS.values())
    blip2 = get_model("blip2-opt-2.7b").gpu_gb_per_sample
    assert auto_batch_size(blip2, 20 * GB, 1211) > auto_batch_size(llava_next, 20 * GB, 1211)


def test_default_run_records_auto_and_the_size_it_chose(make_panorama_data, tiny_checkpoint, tmp_path) -> None:
    data = make_panorama_data(num_images=6, queries=("location", "people"), captions_per_sample=1)
    assert data.num_samples == 12
    rows_per_call: list[int] = []

    class CountingBlip2(Adapter):
        def generate(self, inputs, max_new_tokens, min_new_tokens=0):
            rows_per_call.append(int(inputs["input_ids"].shape[0]))
            return super().generate(inputs, max_new_tokens, min_new_tokens)

    lines: list[str] = []
    config = RunConfig(model_name="blip2-opt-2.7b", data_file=data.data_file, output_dir=tmp_path / "out",
                       model_path=tiny_checkpoint("blip2-opt-2.7b"), max_new_tokens=3, device="cpu",
                       progress="none")  # fmt: skip
    assert config.batch_size == "auto"
    result = run(config, log=lines.append, adapter_class=CountingBlip2)
    assert result.status == "completed" and result.num_written == 12
    assert rows_per_call == [8, 4]  # the CPU choice, 8, then the remainder
    assert "batch size auto: 8 (CPU)" in lines
    manifest = read_json(results_file(tmp_path / "out", RUN_MANIFEST, "blip2-opt-2.7b"), RunManifest)
    assert (manifest.batch_size_requested, manifest.batch_size_used) == ("auto", 8)


def test_bad_batch_sizes_are_refused_before_loading(panorama_data, tmp_path) -> None:
    for text in ("0", "-3", "lots", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="auto|at least 1"):
            batch_size(text)
    assert batch_size("AUTO") == "auto" and batch_size("16") == 16
    with pytest.raises(RunnerError, match="--batch-size must be `auto` or at least 1, got 0"):
        run(RunConfig(model_name="blip2-opt-2.7b", data_file=panorama_data.data_file, output_dir=tmp_path / "o",
                      batch_size=0, device="cpu"))  # fmt: skip
    completed = subprocess.run(
        runner_command("--model", "blip2-opt-2.7b", "--data", panorama_data.data_file, "--output-dir", tmp_path / "o",
                       "--batch-size", "lots"),
        capture_output=True, text=True, env=runner_env(), cwd=REPO_ROOT, timeout=60,
    )  # fmt: skip
    assert completed.returncode == 2
    assert "--batch-size: must be `auto` or a whole number, got 'lots'" in completed.stderr


def test_orchestrator_passes_auto_to_every_runner(panorama_data, tmp_path: Path) -> None:
    options = AblationOptions(models=["blip2-opt-2.7b"], data_file=panorama_data.data_file, output_dir=tmp_path / "o")
    assert options.batch_size == "auto"
    plan = build_plan(options)
    paths = RunPaths(str(plan.data_file), str(plan.output_dir), None, None, None)
    argv = runner_argv(plan, get_model("blip2-opt-2.7b"), paths, GpuSelection("all"), None)
    assert argv[argv.index("--batch-size") + 1] == "auto"
    with pytest.raises(PlanError, match="--batch-size must be `auto` or at least 1, got 0"):
        build_plan(AblationOptions(models=["blip2-opt-2.7b"], data_file=panorama_data.data_file,
                                   output_dir=tmp_path / "o", batch_size=0))  # fmt: skip
