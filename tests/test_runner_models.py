"""End to end, per model: tiny checkpoint of the real classes -> `python -m runner` -> predictions and manifest.

The CLI run uses batch size 8; each prediction is then recomputed here ONE sample at a time (batch size 1), keeping
only the generated continuation ids, which checks batch invariance and that no prompt text or special token leaks
into a prediction in one comparison.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

from contract import PREDICTIONS_CSV, PredictionRecord, results_file
from runner.adapters import adapter_for, open_adapter
from runner.images import ImageLimits, load_image
from runner.loop import DEFAULT_PROMPT_TEMPLATE
from runner.registry import get_model

# The exact text each model must be given (chat template or documented format), for an instruction.
EXPECTED_PROMPT = {
    "blip2-opt-2.7b": "Question: {instruction} Answer:",
    "blip2-flan-t5-xl": "Question: {instruction} Answer:",
    "instructblip-vicuna-7b": "{instruction}",
    "llava-1.5-7b": "USER: <image>\n{instruction} ASSISTANT:",
    "llava-1.6-mistral-7b": "[INST] <image>\n{instruction} [/INST]",
}
MODELS = sorted(EXPECTED_PROMPT)
MAX_NEW_TOKENS = 8
MIN_NEW_TOKENS = 3  # random weights may emit EOS at once; a few forced tokens make every prediction non-empty
SPECIAL_TEXT = ("<image>", "<s>", "</s>", "<pad>", "<unk>")


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory: pytest.TempPathFactory):
    from conftest import build_panorama_data

    # 5 panoramas of different sizes x 2 queries = 10 samples: more than one batch of 8.
    return build_panorama_data(tmp_path_factory.mktemp("model_data"), num_images=5, queries=("location", "weather"))


def load_adapter(name: str, checkpoint: Path):
    return open_adapter(get_model(name), str(checkpoint), device=torch.device("cpu"), dtype=torch.float32)


@pytest.mark.parametrize("name", MODELS)
def test_model_end_to_end(name, shared_data, tiny_checkpoint, run_runner, tmp_path):
    checkpoint = tiny_checkpoint(name)
    out = tmp_path / "out"
    run = run_runner(
        "--model", name, "--model-path", checkpoint, "--data", shared_data.data_file, "--output-dir", out,
        "--batch-size", "8", "--max-new-tokens", str(MAX_NEW_TOKENS), "--min-new-tokens", str(MIN_NEW_TOKENS),
        "--device", "cpu", "--dtype", "float32",
    )  # fmt: skip

    # The orchestrator's line and the files on disk agree.
    assert run.result is not None and run.result.status == "completed"
    assert run.result.num_samples == run.result.num_written == shared_data.num_samples == 10
    assert run.result.num_errors == 0
    records = run.predictions
    assert sorted((r.image, r.query) for r in records) == sorted(shared_data.references)
    assert len({r.sample_id for r in records}) == len(records)
    for record in records:
        assert record.references == shared_data.references[(record.image, record.query)]
        assert record.model_name == name and record.error is None

    # The exact prompt text given to the processor.
    for record in records:
        instruction = DEFAULT_PROMPT_TEMPLATE.format(query=record.query)
        assert record.prompt == EXPECTED_PROMPT[name].format(instruction=instruction)

    # Batch size 1, continuation ids only: must equal the batch-8 prediction exactly.
    adapter = load_adapter(name, checkpoint)
    limits = ImageLimits(max_side=adapter.max_image_side)
    by_key = {(r.image, r.query): r for r in records}
    predictions = []
    for (image, query), record in sorted(by_key.items()):
        picture = load_image(str(shared_data.folder / image), limits)
        inputs = adapter.build_inputs([picture], [record.prompt])
        output = adapter.generate(inputs, MAX_NEW_TOKENS, MIN_NEW_TOKENS)
        continuation = adapter.generated_ids(output, inputs)
        if adapter.decoder_only:
            # The prompt really is the head of the output: the continuation starts after it.
            assert torch.equal(output[0, : inputs["input_ids"].shape[1]], inputs["input_ids"][0])
        assert continuation.shape[1] >= MIN_NEW_TOKENS
        expected = adapter.tokenizer.decode(continuation[0], skip_special_tokens=True).strip()
        assert record.prediction == expected, f"{name} {image} {query}: batch 8 != batch 1"
        # The model saw the prompt text (minus image placeholders the processor expanded).
        seen = adapter.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=True)
        assert seen.strip() == record.prompt.replace("<image>", "").strip() or seen == record.prompt
        assert record.prompt not in record.prediction
        assert "Answer:" not in record.prediction and "[/INST]" not in record.prediction
        assert not any(token in record.prediction for token in SPECIAL_TEXT)
        predictions.append(record.prediction)
    # Random weights still give image/prompt-dependent output, so these comparisons can fail.
    assert all(predictions), f"{name}: empty predictions {predictions}"
    assert len(set(predictions)) > 1, f"{name}: every sample got the same prediction {predictions[0]!r}"

    # Manifest: what was run, with what.
    manifest = run.manifest
    assert manifest is not None
    spec = get_model(name)
    assert (manifest.model_name, manifest.model_id, manifest.family) == (name, spec.hub_id, spec.family)
    assert manifest.model_path == str(checkpoint.resolve())
    assert manifest.resolved_revision is None  # a local folder has no Hub commit
    assert (manifest.dtype, manifest.device) == ("float32", "cpu")
    assert manifest.prompt_template == DEFAULT_PROMPT_TEMPLATE
    assert manifest.decoding["max_new_tokens"] == MAX_NEW_TOKENS and manifest.decoding["do_sample"] is False
    assert manifest.decoding["max_image_side"] == adapter.max_image_side
    assert manifest.batch_size_requested == manifest.batch_size_used == 8
    assert manifest.num_samples == 10 and manifest.num_errors == 0 and manifest.oom_retries == 0
    assert set(manifest.timings) == {"load_s", "generate_s", "samples_per_s", "wall_s", "wall_samples_per_s"}
    assert manifest.timings["samples_per_s"] > 0
    # The console's figure counts the whole run from the model load on: slower than generate() alone.
    assert manifest.timings["wall_s"] > manifest.timings["generate_s"] + manifest.timings["load_s"] * 0.99
    assert manifest.timings["wall_samples_per_s"] == pytest.approx(10 / manifest.timings["wall_s"], rel=0.01)
    assert {"python", "torch", "transformers", "vlm-ablation"} <= set(manifest.versions)
    import hashlib

    assert manifest.data_sha256 == hashlib.sha256(shared_data.data_file.read_bytes()).hexdigest()

    # CSV for people: data-file order, same predictions.
    with open(results_file(out, PREDICTIONS_CSV, name), encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["image_path"], row["query"]) for row in rows] == list(shared_data.references)
    for row in rows:
        record: PredictionRecord = by_key[(row["image_path"], row["query"])]
        assert row["prediction"] == record.prediction
        assert row["references"] == " | ".join(record.references)


@pytest.mark.parametrize("name", MODELS)
def test_tiny_checkpoint_uses_the_real_classes(name, tiny_checkpoint):
    import json

    config = json.loads((tiny_checkpoint(name) / "config.json").read_text())
    expected = {
        "blip2-opt-2.7b": ("Blip2ForConditionalGeneration", "opt"),
        "blip2-flan-t5-xl": ("Blip2ForConditionalGeneration", "t5"),
        "instructblip-vicuna-7b": ("InstructBlipForConditionalGeneration", "llama"),
        "llava-1.5-7b": ("LlavaForConditionalGeneration", "llama"),
        "llava-1.6-mistral-7b": ("LlavaNextForConditionalGeneration", "mistral"),
    }[name]
    assert (config["architectures"][0], config["text_config"]["model_type"]) == expected
    # Small enough to build and run in well under a second per batch.
    weights = tiny_checkpoint(name) / "model.safetensors"
    assert weights.stat().st_size < 2_000_000
    adapter = load_adapter(name, tiny_checkpoint(name))
    assert adapter.decoder_only is (name != "blip2-flan-t5-xl")
    if adapter.decoder_only:
        assert adapter.tokenizer.padding_side == "left"
    if name == "instructblip-vicuna-7b":
        # Its own Q-Former tokenizer, saved and loaded back from the checkpoint folder.
        assert (tiny_checkpoint(name) / "qformer_tokenizer").is_dir()
        assert adapter.processor.qformer_tokenizer.vocab_size != adapter.tokenizer.vocab_size


def test_tiny_command_line_builds_a_loadable_checkpoint(tmp_path):
    import subprocess

    from conftest import REPO_ROOT, runner_env

    out = tmp_path / "tiny-llava"
    completed = subprocess.run(
        [sys.executable, "-m", "runner.tiny", "--model", "llava-1.5-7b", "--out", str(out)],
        capture_output=True, text=True, timeout=180, env=runner_env(), cwd=REPO_ROOT,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    adapter = load_adapter("llava-1.5-7b", out)
    assert adapter.build_prompt("Describe it.") == "USER: <image>\nDescribe it. ASSISTANT:"


def test_tokenizer_without_pad_token_still_batches(tiny_checkpoint, shared_data):
    name = "llava-1.5-7b"
    spec = get_model(name)
    adapter_class = adapter_for(spec.adapter)
    device = torch.device("cpu")
    loaded = adapter_class.load(
        str(tiny_checkpoint(name)), revision=None, dtype=torch.float32, device=device, spec=spec
    )
    loaded.processor.tokenizer.pad_token = None  # as some Llama-family tokenizers ship
    adapter = adapter_class(spec, loaded, device, torch.float32)
    assert adapter.tokenizer.pad_token == adapter.tokenizer.eos_token
    images = [load_image(str(path), ImageLimits(max_side=adapter.max_image_side)) for path in shared_data.images[:2]]
    prompts = [adapter.build_prompt("Describe it."), adapter.build_prompt("Describe the people in it, briefly.")]
    inputs = adapter.build_inputs(images, prompts)
    assert inputs["attention_mask"][0, 0] == 0  # the shorter prompt is padded on the left
    assert len(adapter.decode(adapter.generate(inputs, 4, 4), inputs)) == 2


def test_greedy_decoding_ignores_the_checkpoints_generation_config(tiny_checkpoint, shared_data, tmp_path):
    """Qwen2.5-VL ships sampling settings and a repetition penalty in generation_config.json; "greedy" must stay
    plain greedy for every model, so a checkpoint's own settings may not change a prediction."""
    import json
    import shutil

    name = "llava-1.5-7b"
    plain = load_adapter(name, tiny_checkpoint(name))
    altered_dir = tmp_path / "altered"
    shutil.copytree(tiny_checkpoint(name), altered_dir)
    config_path = altered_dir / "generation_config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    config.update(do_sample=True, temperature=5.0, top_k=3, repetition_penalty=50.0, no_repeat_ngram_size=1)
    config_path.write_text(json.dumps(config))
    altered = load_adapter(name, altered_dir)
    assert altered.model.generation_config.repetition_penalty == 50.0  # the setting really is in the checkpoint

    limits = ImageLimits(max_side=plain.max_image_side)
    images = [load_image(str(path), limits) for path in shared_data.images[:3]]
    prompts = [plain.build_prompt(DEFAULT_PROMPT_TEMPLATE.format(query="location"))] * len(images)
    outputs = []
    for adapter in (plain, altered):
        inputs = adapter.build_inputs(images, prompts)
        outputs.append(adapter.decode(adapter.generate(inputs, MAX_NEW_TOKENS, MAX_NEW_TOKENS), inputs))
    assert outputs[0] == outputs[1]
