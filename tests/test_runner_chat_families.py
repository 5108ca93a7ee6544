"""The chat-template families (Qwen2.5-VL, Gemma 3, InternVL2) on tiny checkpoints of their real classes.

End to end: `python -m runner` at batch size 8 on generated panoramas of different sizes, then every sample is
recomputed here at batch size 1 keeping only the continuation ids: equal predictions prove batch invariance and
that no prompt text or special token leaks. In process: the exact token sequence each model is given (chat
template applied, image placeholders expanded, one BOS, left padding), Qwen's pixel budget, and the pure parts of
InternVL2's remote-code route (prompt, tiling, pixel tensors), which cannot load offline.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from contract import PREDICTIONS_CSV, results_file
from runner.adapters import open_adapter
from runner.adapters.base import cap_max_pixels, chat_template_prompt
from runner.adapters.internvl2 import (
    INTERNVL2_SYSTEM_MESSAGE,
    RemoteLayout,
    checkpoint_model_type,
    expand_image_placeholder,
    internvl2_chat_prompt,
    remote_inputs,
    tile_grid,
    tile_image,
    tiles_to_pixel_values,
)
from runner.images import ImageLimits, load_image
from runner.loop import DEFAULT_PROMPT_TEMPLATE
from runner.registry import get_model

# The exact text each model is given for an instruction, written out by hand from each model card's format.
EXPECTED_PROMPT = {
    "qwen2.5-vl-3b": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{instruction}<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "gemma-3-4b": "<bos><start_of_turn>user\n<start_of_image>{instruction}<end_of_turn>\n<start_of_turn>model\n",
    "internvl2-2b": (
        "<s><|im_start|>system\n" + INTERNVL2_SYSTEM_MESSAGE + "<|im_end|>"
        "<|im_start|>user\n<IMG_CONTEXT>\n{instruction}<|im_end|><|im_start|>assistant\n"
    ),
}
EXPECTED_CLASSES = {
    "qwen2.5-vl-3b": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
    "gemma-3-4b": ("Gemma3ForConditionalGeneration", "Gemma3Processor"),
    "internvl2-2b": ("InternVLForConditionalGeneration", "InternVLProcessor"),
}
MODELS = sorted(EXPECTED_PROMPT)
MAX_NEW_TOKENS = 10
MIN_NEW_TOKENS = 3  # random weights may emit EOS at once; a few forced tokens make every prediction non-empty


def load_adapter(name: str, checkpoint: Path):
    return open_adapter(get_model(name), str(checkpoint), device=torch.device("cpu"), dtype=torch.float32)


def special_token_texts(adapter) -> set[str]:
    return set(adapter.tokenizer.all_special_tokens) | {"<|image_pad|>", "<image_soft_token>", "<IMG_CONTEXT>"}


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory: pytest.TempPathFactory):
    from conftest import build_panorama_data

    # 5 panoramas (512x256 .. 640x320, JPEG and PNG) x 2 queries = 10 samples: a batch of 8 and a batch of 2.
    return build_panorama_data(tmp_path_factory.mktemp("chat_data"), num_images=5, queries=("location", "people"))


# --- end to end ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_chat_family_end_to_end(name, chat_data, tiny_checkpoint, run_runner, tmp_path):
    checkpoint = tiny_checkpoint(name)
    out = tmp_path / "out"
    run = run_runner(
        "--model", name, "--model-path", checkpoint, "--data", chat_data.data_file, "--output-dir", out,
        "--batch-size", "8", "--max-new-tokens", str(MAX_NEW_TOKENS), "--min-new-tokens", str(MIN_NEW_TOKENS),
        "--device", "cpu", "--dtype", "float32", "--no-progress",
    )  # fmt: skip
    assert run.result is not None and run.result.status == "completed"
    assert run.result.num_samples == run.result.num_written == chat_data.num_samples == 10
    assert run.result.num_errors == 0

    # Predictions file: one record per (image, query), with its references, and the exact chat prompt.
    records = run.predictions
    assert sorted((r.image, r.query) for r in records) == sorted(chat_data.references)
    assert len({r.sample_id for r in records}) == 10
    for record in records:
        assert record.references == chat_data.references[(record.image, record.query)]
        assert (record.model_name, record.error) == (name, None)
        instruction = DEFAULT_PROMPT_TEMPLATE.format(query=record.query)
        assert record.prompt == EXPECTED_PROMPT[name].format(instruction=instruction)

    # Batch size 1, continuation ids only, must give the batch-8 prediction exactly.
    adapter = load_adapter(name, checkpoint)
    limits = ImageLimits(max_side=adapter.max_image_side)
    specials = special_token_texts(adapter)
    for record in records:
        picture = load_image(str(chat_data.folder / record.image), limits)
        inputs = adapter.build_inputs([picture], [record.prompt])
        output = adapter.generate(inputs, MAX_NEW_TOKENS, MIN_NEW_TOKENS)
        prompt_length = inputs["input_ids"].shape[1]
        assert torch.equal(output[0, :prompt_length], inputs["input_ids"][0])  # the prompt is the output's head
        continuation = output[0, prompt_length:]
        assert MIN_NEW_TOKENS <= len(continuation) <= MAX_NEW_TOKENS
        expected = adapter.tokenizer.decode(continuation, skip_special_tokens=True).strip()
        assert record.prediction == expected, f"{name} {record.image} {record.query}: batch 8 != batch 1"
        assert not any(token in record.prediction for token in specials), record.prediction
        assert DEFAULT_PROMPT_TEMPLATE.format(query=record.query) not in record.prediction
    # Random weights still give image- and prompt-dependent output, so the comparisons above can fail.
    assert all(r.prediction for r in records)
    for query in ("location", "people"):
        assert len({r.prediction for r in records if r.query == query}) > 1, f"{name}: the image makes no difference"
    for image in {r.image for r in records}:
        assert len({r.prediction for r in records if r.image == image}) == 2, f"{name}: the query makes no difference"

    # Manifest: what was run, with what.
    manifest = run.manifest
    assert manifest is not None
    spec = get_model(name)
    assert (manifest.model_name, manifest.model_id, manifest.family) == (name, spec.hub_id, spec.family)
    assert manifest.model_path == str(checkpoint.resolve()) and manifest.resolved_revision is None
    assert (manifest.dtype, manifest.device) == ("float32", "cpu")
    assert manifest.prompt_template == DEFAULT_PROMPT_TEMPLATE
    assert manifest.decoding["max_new_tokens"] == MAX_NEW_TOKENS and manifest.decoding["do_sample"] is False
    assert manifest.decoding["max_image_side"] == spec.max_image_side
    assert manifest.batch_size_requested == manifest.batch_size_used == 8
    assert (manifest.num_samples, manifest.num_errors, manifest.oom_retries) == (10, 0, 0)
    assert manifest.data_sha256 == hashlib.sha256(chat_data.data_file.read_bytes()).hexdigest()

    # CSV for people: data-file order, same predictions.
    with open(results_file(out, PREDICTIONS_CSV, name), encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_key = {(r.image, r.query): r for r in records}
    assert [(row["image_path"], row["query"]) for row in rows] == list(chat_data.references)
    assert [row["prediction"] for row in rows] == [by_key[key].prediction for key in chat_data.references]


# --- what the model is given --------------------------------------------------------------------------------


def panoramas(*sizes: tuple[int, int]) -> list[Image.Image]:
    """Distinct 2:1 test images: a horizontal gradient with a per-image colour."""
    images = []
    for index, (width, height) in enumerate(sizes):
        image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
        images.append(
            Image.merge("RGB", (image.getchannel(0), Image.new("L", (width, height), 40 * index), image.getchannel(2)))
        )
    return images


@pytest.mark.parametrize("name", MODELS)
def test_model_sees_the_expanded_chat_prompt_left_padded(name, tiny_checkpoint):
    adapter = load_adapter(name, tiny_checkpoint(name))
    tokenizer = adapter.tokenizer
    queries = ("location", "people in the street near the water", "weather")
    instructions = [DEFAULT_PROMPT_TEMPLATE.format(query=q) for q in queries]
    prompts = [adapter.build_prompt(i) for i in instructions]
    assert prompts == [EXPECTED_PROMPT[name].format(instruction=i) for i in instructions]
    images = panoramas((512, 256), (40, 20), (640, 320))
    inputs = adapter.build_inputs(images, prompts)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert tokenizer.padding_side == "left"
    for row, (instruction, image) in enumerate(zip(instructions, images, strict=True)):
        real = int(mask[row].sum())
        # Left padding: pads (mask 0) only before the prompt, never inside or after it.
        assert mask[row, ids.shape[1] - real :].all() and not mask[row, : ids.shape[1] - real].any()
        assert (ids[row, : ids.shape[1] - real] == tokenizer.pad_token_id).all()
        seen = tokenizer.decode(ids[row, ids.shape[1] - real :], skip_special_tokens=False)
        if name == "qwen2.5-vl-3b":
            tokens = int(inputs["image_grid_thw"][row].prod()) // 4  # 2x2 patches merge into one token
            assert 1 <= tokens <= 16  # the tiny checkpoint's max_pixels budget
            expanded = "<|vision_start|>" + "<|image_pad|>" * tokens + "<|vision_end|>"
            assert seen == EXPECTED_PROMPT[name].format(instruction=instruction).replace(
                "<|vision_start|><|image_pad|><|vision_end|>", expanded
            )
        elif name == "gemma-3-4b":
            expanded = "\n\n<start_of_image>" + "<image_soft_token>" * 4 + "<end_of_image>\n\n"
            assert seen == EXPECTED_PROMPT[name].format(instruction=instruction).replace("<start_of_image>", expanded)
        else:
            columns, rows = tile_grid(image.width, image.height, tile_side=28)
            tiles = columns * rows + (1 if columns * rows > 1 else 0)  # + thumbnail
            expanded = "<img>" + "<IMG_CONTEXT>" * (4 * tiles) + "</img>\n"
            assert seen == EXPECTED_PROMPT[name].format(instruction=instruction).replace("<IMG_CONTEXT>\n", expanded)
        # Exactly one BOS where the family has one: the template wrote it, the tokenizer must not add another.
        if tokenizer.bos_token:
            assert seen.count(tokenizer.bos_token) == 1 and seen.startswith(tokenizer.bos_token)
    if name == "internvl2-2b":
        grids = [tile_grid(im.width, im.height, tile_side=28) for im in images]
        assert grids == [(4, 2), (2, 1), (4, 2)]
        assert inputs["pixel_values"].shape == (9 + 3 + 9, 3, 28, 28)


@pytest.mark.parametrize("name", MODELS)
def test_tiny_checkpoint_is_the_real_family(name, tiny_checkpoint):
    folder = tiny_checkpoint(name)
    config = json.loads((folder / "config.json").read_text())
    model_class, processor_class = EXPECTED_CLASSES[name]
    assert config["architectures"] == [model_class]
    assert (folder / "model.safetensors").stat().st_size < 1_000_000
    adapter = load_adapter(name, folder)
    assert type(adapter.model).__name__ == model_class and type(adapter.processor).__name__ == processor_class
    # The chat template travels with the checkpoint, as on the Hub.
    assert adapter.processor.chat_template and (folder / "chat_template.jinja").is_file()
    if name != "gemma-3-4b":  # Qwen2.5-VL and InternVL processors require a video processor
        assert adapter.processor.video_processor is not None


# --- Qwen2.5-VL: pixel budget ---------------------------------------------------------------------------------


def test_qwen_pixel_budget_is_capped_for_panoramas():
    from transformers import Qwen2VLImageProcessor

    spec = get_model("qwen2.5-vl-3b")
    MAX_PIXELS = spec.max_pixels
    # The real checkpoint's budget (preprocessor_config.json: max_pixels 12845056) is lowered, a small one is kept.
    real = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056)
    assert cap_max_pixels(real, MAX_PIXELS) == MAX_PIXELS == 1280 * 28 * 28
    small = Qwen2VLImageProcessor(min_pixels=784, max_pixels=28 * 28 * 16)
    assert cap_max_pixels(small, MAX_PIXELS) == 28 * 28 * 16
    # A 2:1 panorama downscaled to max_image_side goes through whole: 1400 x 700 = 50 x 25 tokens of 28 px.
    side = spec.max_image_side
    grid = real(images=[Image.new("RGB", (side, side // 2), "gray")], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 50, 100]] and int(grid.prod()) // 4 == 1250
    # Without the cap an 8K panorama would cost far more; with it, no more than 1280 tokens.
    big = real(images=[Image.new("RGB", (4096, 2048), "gray")], return_tensors="pt")["image_grid_thw"]
    assert int(big.prod()) // 4 <= 1280


# --- InternVL2: remote-code route, pure parts ------------------------------------------------------------------


def test_internvl2_remote_prompt_is_internlm2_chat():
    prompt = internvl2_chat_prompt("Describe the sky.")
    assert prompt == (
        "<|im_start|>system\n你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, "
        "是一个有用无害的人工智能助手。<|im_end|><|im_start|>user\n<image>\nDescribe the sky.<|im_end|>"
        "<|im_start|>assistant\n"
    )
    expanded = expand_image_placeholder(prompt, num_tiles=9, tokens_per_tile=256)
    assert expanded.count("<IMG_CONTEXT>") == 9 * 256 and "<image>" not in expanded
    assert "<|im_start|>user\n<img><IMG_CONTEXT>" in expanded and "<IMG_CONTEXT></img>\nDescribe" in expanded
    with pytest.raises(ValueError, match="exactly one <image>"):
        expand_image_placeholder("no placeholder", num_tiles=1, tokens_per_tile=256)


def test_internvl2_tile_grid_matches_the_dynamic_tiling_rule():
    # Hand-checked cases for 448 px tiles, max 12: panoramas are cut 2 x 1 until they are big enough for 4 x 2.
    assert tile_grid(1792, 896, 448) == (4, 2)
    assert tile_grid(8000, 4000, 448) == (4, 2)
    assert tile_grid(1024, 512, 448) == (2, 1)
    assert tile_grid(896, 448, 448) == (2, 1)
    assert tile_grid(448, 448, 448) == (1, 1)
    assert tile_grid(600, 1800, 448) == (1, 3)
    # Same rule as transformers' InternVL image processor (an independent implementation) over many sizes.
    from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

    for width in range(64, 4097, 173):
        for height in range(64, 2049, 151):
            assert tile_grid(width, height, 448) == get_optimal_tiled_canvas((height, width), (448, 448), 1, 12)


def test_internvl2_tiles_and_pixel_values():
    image = Image.new("RGB", (1792, 896), (255, 128, 0))
    tiles = tile_image(image, tile_side=448, max_tiles=12)
    assert len(tiles) == 4 * 2 + 1 and all(t.size == (448, 448) for t in tiles)
    pixels = tiles_to_pixel_values(tiles)
    assert pixels.shape == (9, 3, 448, 448) and pixels.dtype == torch.float32
    # ImageNet normalisation of a flat colour: (value / 255 - mean) / std, channel by channel.
    expected = [(255 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0 / 255 - 0.406) / 0.225]
    for channel, value in enumerate(expected):
        assert torch.allclose(pixels[:, channel], torch.full((9, 448, 448), value), atol=1e-5)
    # One tile only: no thumbnail.
    assert len(tile_image(Image.new("RGB", (448, 448)), tile_side=448)) == 1


def test_internvl2_remote_inputs_equal_the_native_processor_ids(tiny_checkpoint):
    """The hand-built remote-code inputs give the very ids the native processor gives for the same sample."""
    adapter = load_adapter("internvl2-2b", tiny_checkpoint("internvl2-2b"))
    images = panoramas((512, 256), (40, 20), (56, 28))
    instructions = [DEFAULT_PROMPT_TEMPLATE.format(query=q) for q in ("location", "people", "sky")]
    native = adapter.build_inputs(images, [adapter.build_prompt(i) for i in instructions])
    layout = RemoteLayout(tile_side=28, tokens_per_tile=4, max_tiles=12)  # the tiny checkpoint's geometry
    remote = remote_inputs(adapter.tokenizer, layout, images, [internvl2_chat_prompt(i) for i in instructions])
    assert torch.equal(remote["input_ids"], native["input_ids"])
    assert torch.equal(remote["attention_mask"], native["attention_mask"])
    assert remote["pixel_values"].shape == native["pixel_values"].shape == (9 + 3 + 3, 3, 28, 28)
    # Same tiles and normalisation (resized by PIL here, by torchvision there): equal up to float rounding.
    assert torch.allclose(remote["pixel_values"], native["pixel_values"], atol=1e-4)


def test_internvl2_rejects_an_unknown_checkpoint_format(tmp_path, tiny_checkpoint):
    assert checkpoint_model_type(str(tiny_checkpoint("internvl2-2b")), None) == "internvl"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ValueError, match=r"model_type is 'llava'.*'internvl'.*'internvl_chat'"):
        checkpoint_model_type(str(tmp_path), None)


# --- on a connected host only: the REAL processors render the prompts written out above ---------------------

HUB_CHECKS = os.environ.get("VLM_ABLATION_HUB_CHECKS") == "1"
needs_hub = pytest.mark.skipif(
    not HUB_CHECKS, reason="set VLM_ABLATION_HUB_CHECKS=1 on a host with Hub access (gemma needs HF_TOKEN)"
)


@needs_hub
@pytest.mark.parametrize("name", ["qwen2.5-vl-3b", "gemma-3-4b"])
def test_real_processor_renders_the_expected_prompt(name):
    """Downloads only processor/tokenizer files (a few MB), no weights."""
    from transformers import AutoProcessor

    spec = get_model(name)
    processor = AutoProcessor.from_pretrained(spec.hub_id, revision=spec.revision)
    instruction = DEFAULT_PROMPT_TEMPLATE.format(query="people")
    assert chat_template_prompt(processor, instruction) == EXPECTED_PROMPT[name].format(instruction=instruction)


@needs_hub
def test_real_internvl2_conversation_template_matches_the_remote_prompt():
    """Runs only OpenGVLab's conversation.py from the pinned revision (no model code, no weights)."""
    from transformers import PretrainedConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    spec = get_model("internvl2-2b")
    config, _ = PretrainedConfig.get_config_dict(spec.hub_id, revision=spec.revision)
    assert config["model_type"] == "internvl_chat"
    get_conv_template = get_class_from_dynamic_module(
        "conversation.get_conv_template", spec.hub_id, revision=spec.revision
    )
    template = get_conv_template(config["template"])
    instruction = DEFAULT_PROMPT_TEMPLATE.format(query="people")
    template.append_message(template.roles[0], "<image>\n" + instruction)
    template.append_message(template.roles[1], None)
    assert template.get_prompt() == internvl2_chat_prompt(instruction)
