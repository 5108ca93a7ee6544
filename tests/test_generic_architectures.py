"""Architectures that need nothing but the generic adapter, each on a tiny checkpoint of its REAL transformers classes.

Every checkpoint is built by the one declarative mechanism (runner/tiny/generic.py) and run end to end by
`python -m runner --model hf:<Org>/<Name> --model-path DIR` (the catalogue name where the entry carries data the
`hf:` defaults lack, such as a prompt_format) on generated panoramas at batch size 4. Then, in this process, every
sample is captioned again alone: batch size 1 must give exactly the batch-4 prediction (fp32, CPU). Prompts are
checked against strings written out by hand from each model card's format; predictions must hold no special token
and must differ between images. The last test captions data/sample/sample.csv with an architecture that no code in
runner/ names (no catalogue entry, no adapter, no builder): `hf:` and the generic adapter are enough.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, build_panorama_data

from contract import PREDICTIONS_JSONL, RUN_MANIFEST, PredictionRecord, RunManifest, read_json, read_jsonl, results_file
from runner.adapters import open_adapter
from runner.images import ImageLimits, load_image
from runner.loop import DEFAULT_PROMPT_TEMPLATE
from runner.registry import BUILTIN, ModelSpec, get_model, parse_hub_name
from runner.tiny.architectures import TEXT, VISION, content
from runner.tiny.generic import TinyArchitecture, Token, build_architecture

# catalogue name -> (the exact prompt for an instruction, written from the model card; model class; processor class)
ARCHITECTURES: dict[str, tuple[str, str, str]] = {
    "qwen2-vl-2b": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{instruction}<|im_end|>\n"
        "<|im_start|>assistant\n",
        "Qwen2VLForConditionalGeneration",
        "Qwen2VLProcessor",
    ),
    "qwen3-vl-2b": (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{instruction}<|im_end|>\n<|im_start|>assistant\n",
        "Qwen3VLForConditionalGeneration",
        "Qwen3VLProcessor",
    ),
    "smolvlm-instruct": (
        "<|im_start|>User:<image>{instruction}<end_of_utterance>\nAssistant:",
        "Idefics3ForConditionalGeneration",
        "Idefics3Processor",
    ),
    "llava-onevision-qwen2-7b": (
        "<|im_start|>user\n<image>\n{instruction}<|im_end|>\n<|im_start|>assistant\n",
        "LlavaOnevisionForConditionalGeneration",
        "LlavaOnevisionProcessor",
    ),
    "paligemma2-3b-mix-448": ("<image>{instruction}", "PaliGemmaForConditionalGeneration", "PaliGemmaProcessor"),
    "internvl3-2b": (
        "<|im_start|>user\n<IMG_CONTEXT>\n{instruction}<|im_end|>\n<|im_start|>assistant\n",
        "InternVLForConditionalGeneration",
        "InternVLProcessor",
    ),
    "aya-vision-8b": (
        "<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|><image>{instruction}<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
        "AyaVisionForConditionalGeneration",
        "AyaVisionProcessor",
    ),
    "lfm2-vl-1.6b": (
        "<|startoftext|><|im_start|>user\n<image>{instruction}<|im_end|>\n<|im_start|>assistant\n",
        "Lfm2VlForConditionalGeneration",
        "Lfm2VlProcessor",
    ),
    "florence-2-large": ("{instruction}", "Florence2ForConditionalGeneration", "Florence2Processor"),
    "llama-3.2-11b-vision": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>{instruction}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "MllamaForConditionalGeneration",
        "MllamaProcessor",
    ),
    # These three need a package besides transformers: num2words (SmolVLM2's processor), timm (the vision towers).
    "smolvlm2-2.2b": (
        "<|im_start|>User:<image>{instruction}<end_of_utterance>\nAssistant:",
        "SmolVLMForConditionalGeneration",
        "SmolVLMProcessor",
    ),
    "gemma-3n-e2b": (
        "<bos><start_of_turn>user\n<image_soft_token>{instruction}<end_of_turn>\n<start_of_turn>model\n",
        "Gemma3nForConditionalGeneration",
        "Gemma3nProcessor",
    ),
    "perception-lm-1b": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
        "provides, and assist the user with a variety of tasks using natural language."
        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<|image|>{instruction}"
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "PerceptionLMForConditionalGeneration",
        "PerceptionLMProcessor",
    ),
}
NAMES = sorted(ARCHITECTURES)
BATCH_SIZE = 4
MAX_NEW_TOKENS = 8
MIN_NEW_TOKENS = 3  # random weights may emit EOS at once; a few forced tokens make every prediction non-empty


@pytest.fixture(scope="module")
def panoramas(tmp_path_factory: pytest.TempPathFactory):
    # 4 panoramas (256x128 .. 640x320, JPEG and PNG) x 2 queries = 8 samples: two batches of 4.
    return build_panorama_data(tmp_path_factory.mktemp("generic_data"), num_images=4, queries=("location", "people"))


def runner_model_argument(spec: ModelSpec) -> str:
    """`hf:<hub_id>` (the generic adapter with defaults) unless the entry carries data the defaults lack."""
    defaults = parse_hub_name(f"hf:{spec.hub_id}")
    needs_entry = (spec.prompt_format, spec.nested_images, spec.generate_kwargs) != (
        defaults.prompt_format,
        defaults.nested_images,
        defaults.generate_kwargs,
    )
    return spec.name if needs_entry else f"hf:{spec.hub_id}"


def run_outputs(out_dir: Path, model_argument: str) -> tuple[list[PredictionRecord], RunManifest]:
    """Predictions and manifest of a run, under the file names the runner uses (`hf:Org/Name` -> `Org--Name`)."""
    name = get_model(model_argument).name
    records = list(read_jsonl(results_file(out_dir, PREDICTIONS_JSONL, name), PredictionRecord))
    return records, read_json(results_file(out_dir, RUN_MANIFEST, name), RunManifest)


def special_tokens(tokenizer) -> set[str]:
    """Every special token of the tokenizer, multimodal ones included (added tokens marked special)."""
    added = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    return (set(tokenizer.all_special_tokens) | added) - {""}


def test_every_new_catalogue_entry_is_tested_here():
    generic_with_tiny = {name for name, spec in BUILTIN.models.items() if spec.family == "generic" and spec.tiny}
    assert generic_with_tiny == set(ARCHITECTURES)
    for name in NAMES:
        spec = get_model(name)
        assert spec.adapter == "auto" and spec.gpu_gb_per_sample is None


@pytest.mark.parametrize("name", NAMES)
def test_architecture_end_to_end_through_the_generic_adapter(name, panoramas, tiny_checkpoint, run_runner, tmp_path):
    expected_prompt, model_class, processor_class = ARCHITECTURES[name]
    spec = get_model(name)
    checkpoint = tiny_checkpoint(name)
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["architectures"] == [model_class]

    model_argument = runner_model_argument(spec)
    out = tmp_path / "out"
    run = run_runner(
        "--model", model_argument, "--model-path", checkpoint, "--data", panoramas.data_file, "--output-dir", out,
        "--batch-size", str(BATCH_SIZE), "--max-new-tokens", str(MAX_NEW_TOKENS),
        "--min-new-tokens", str(MIN_NEW_TOKENS), "--device", "cpu", "--dtype", "float32", "--no-progress",
    )  # fmt: skip
    assert run.result is not None and run.result.status == "completed"
    assert run.result.num_samples == run.result.num_written == panoramas.num_samples == 8
    assert run.result.num_errors == 0
    records, manifest = run_outputs(out, model_argument)
    assert manifest.model_id == spec.hub_id and manifest.random_weights
    assert manifest.batch_size_used == BATCH_SIZE
    assert sorted((r.image, r.query) for r in records) == sorted(panoramas.references)
    for record in records:
        assert record.error is None
        assert record.prompt == expected_prompt.format(instruction=DEFAULT_PROMPT_TEMPLATE.format(query=record.query))

    # Batch size 1 in this process, same adapter code: exactly the batch-4 predictions.
    adapter = open_adapter(get_model(model_argument), str(checkpoint), device=torch.device("cpu"), dtype=torch.float32)
    assert type(adapter.model).__name__ == model_class and type(adapter.processor).__name__ == processor_class
    tokenizer = adapter.tokenizer
    specials = special_tokens(tokenizer)
    limits = ImageLimits(max_side=adapter.max_image_side)
    for record in records:
        picture = load_image(str(panoramas.folder / record.image), limits)
        inputs = adapter.build_inputs([picture], [record.prompt])
        if tokenizer.bos_token_id is not None:  # never a second BOS (the template's and the tokenizer's)
            assert int((inputs["input_ids"][0] == tokenizer.bos_token_id).sum()) <= 1
        alone = adapter.decode(adapter.generate(inputs, MAX_NEW_TOKENS, MIN_NEW_TOKENS), inputs)
        assert alone == [record.prediction], f"{name} {record.image} {record.query}: batch {BATCH_SIZE} != batch 1"
        assert record.prediction, f"{name}: empty prediction"
        leaked = [token for token in specials if token in record.prediction]
        assert not leaked, f"{name}: special tokens {leaked} in {record.prediction!r}"

    # Random weights, yet image-dependent output: the comparisons above could fail.
    for query in ("location", "people"):
        assert len({r.prediction for r in records if r.query == query}) > 1, f"{name}: every image gives the same"


@pytest.mark.parametrize("name", NAMES)
def test_generation_stops_on_the_entry_s_own_stop_tokens(name, tiny_checkpoint):
    """generation_config's eos ids are the tokens the entry names (eos, then stop_tokens), never <unk>: a stop token
    the tokenizer lacks would otherwise resolve to the unknown token's id and never stop anything."""
    from transformers import AutoTokenizer

    from runner.tiny.generic import ARCHITECTURES as BUILDERS

    arch = BUILDERS[get_model(name).tiny]
    checkpoint = tiny_checkpoint(name)
    eos = json.loads((checkpoint / "generation_config.json").read_text(encoding="utf-8"))["eos_token_id"]
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert tokenizer.convert_ids_to_tokens(eos if isinstance(eos, list) else [eos]) == [
        arch.eos_token,
        *arch.stop_tokens,
    ]


def test_the_packages_some_architectures_need_are_pinned_alike_in_the_image_the_extra_and_here():
    """num2words (SmolVLM2's processor) and timm (Gemma 3n's and Perception LM's vision towers): the generic image
    installs the versions the runner extra names, and those are the versions these tests ran with."""
    import tomllib
    from importlib.metadata import version

    requirements = (REPO_ROOT / "images" / "generic" / "requirements.txt").read_text(encoding="utf-8")
    image_pins = dict(line.split("==") for line in requirements.splitlines() if "==" in line and line[0] != "#")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extra_pins = dict(item.split("==") for item in project["optional-dependencies"]["runner"] if "==" in item)
    for package in ("num2words", "timm"):
        assert image_pins[package] == extra_pins[package] == version(package), package
    assert image_pins["docopt"] == version("docopt")  # num2words' one dependency, pinned in the image too


def test_the_mechanism_builds_the_same_bytes_every_time(tiny_checkpoint, tmp_path):
    """Seeded from start to end: rebuilt from another global random state, a checkpoint equals the session's."""
    from runner.tiny.generic import ARCHITECTURES

    for name in NAMES:
        first, again = tiny_checkpoint(name), tmp_path / name
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(len(name))  # not the state the session's build started from
            build_architecture(ARCHITECTURES[get_model(name).tiny], again)
        assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in first.iterdir())
        changed = [p.name for p in first.iterdir() if p.read_bytes() != (again / p.name).read_bytes()]
        assert not changed, f"{name}: {changed} differ between two builds"


def test_an_entry_naming_a_token_or_weight_that_does_not_exist_is_refused(tmp_path):
    base = TinyArchitecture(
        model_type="llava",
        config={
            "text_config": {"model_type": "llama", **TEXT},
            "vision_config": {"model_type": "clip_vision_model", **VISION, "image_size": 32, "patch_size": 8},
            "image_token_index": Token("<no_such_token>"),
        },
        chat_template=None,
        special_tokens=("<image>",),
    )
    with pytest.raises(ValueError, match="'<no_such_token>' is not a token of the tiny tokenizer"):
        build_architecture(base, tmp_path / "a")
    misspelt = replace(
        base, config={**base.config, "image_token_index": Token("<image>")}, weight_fills={"no_such_module": 1.0}
    )
    with pytest.raises(ValueError, match="no parameter name contains 'no_such_module'"):
        build_architecture(misspelt, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --- The catalogue's image limits, on the real image processors at the published settings ---------------------------

PINPOINTS_384 = [[384 * h, 384 * w] for h in range(1, 7) for w in range(1, 7)]  # llava-onevision-*-ov-hf


def vision_units(name: str, side: int) -> int:
    """What the published image processor makes of a 2:1 panorama `side` px wide: merged tokens (Qwen) or tiles."""
    import transformers
    from PIL import Image

    from runner.adapters.base import cap_max_pixels

    image = Image.new("RGB", (side, side // 2), "gray")
    spec = get_model(name)
    if name in ("qwen2-vl-2b", "qwen3-vl-2b"):
        patch = {"qwen2-vl-2b": 14, "qwen3-vl-2b": 16}[name]
        budget = {"qwen2-vl-2b": (3136, 12845056), "qwen3-vl-2b": (65536, 16777216)}[name]
        processor = transformers.Qwen2VLImageProcessor(
            patch_size=patch, merge_size=2, size={"shortest_edge": budget[0], "longest_edge": budget[1]}
        )
        cap_max_pixels(processor, spec.max_pixels)
        return int(processor([image], return_tensors="pt")["image_grid_thw"].prod()) // 4
    if name in ("smolvlm-instruct", "smolvlm2-2.2b"):
        processor_class = {"smolvlm-instruct": "Idefics3ImageProcessor", "smolvlm2-2.2b": "SmolVLMImageProcessor"}[name]
        processor = getattr(transformers, processor_class)(
            size={"longest_edge": 1536}, max_image_size={"longest_edge": 384}
        )
        return int(processor([[image]], return_tensors="pt")["pixel_values"].shape[1])
    if name == "llava-onevision-qwen2-7b":
        processor = transformers.LlavaOnevisionImageProcessor(
            size={"height": 384, "width": 384}, image_grid_pinpoints=PINPOINTS_384
        )
        return int(processor([image], return_tensors="pt")["pixel_values"].shape[1])
    if name in ("internvl3-2b", "aya-vision-8b"):
        tile = {"internvl3-2b": 448, "aya-vision-8b": 364}[name]
        processor = transformers.GotOcr2ImageProcessor(
            size={"height": tile, "width": tile}, crop_to_patches=True, min_patches=1, max_patches=12
        )
        return int(processor([image], return_tensors="pt")["num_patches"][0])
    if name == "lfm2-vl-1.6b":
        processor = transformers.Lfm2VlImageProcessor()  # the class defaults are LFM2-VL's: 512 px tiles, up to 10
        return int(processor([[image]], return_tensors="pt")["pixel_values"].shape[0])
    if name == "llama-3.2-11b-vision":
        processor = transformers.MllamaImageProcessor(size={"height": 560, "width": 560}, max_image_tiles=4)
        return int(processor([[image]], return_tensors="pt")["num_tiles"][0][0])
    raise AssertionError(name)


@pytest.mark.parametrize(
    ("name", "units_at_the_limit"),
    [
        ("qwen2-vl-2b", 1250),  # 50 x 25 tokens of 28 px
        ("qwen3-vl-2b", 1250),  # 50 x 25 tokens of 32 px
        ("smolvlm-instruct", 9),  # 4 x 2 tiles + global view
        ("smolvlm2-2.2b", 9),
        ("llava-onevision-qwen2-7b", 9),  # 4 x 2 anyres tiles + base image
        ("internvl3-2b", 9),  # 4 x 2 tiles + thumbnail
        ("aya-vision-8b", 9),
        ("lfm2-vl-1.6b", 9),
        ("llama-3.2-11b-vision", 2),
    ],
)
def test_max_image_side_is_where_the_published_processor_stops_adding_detail(name, units_at_the_limit):
    side = get_model(name).max_image_side
    assert vision_units(name, side) == units_at_the_limit
    if name == "llava-onevision-qwen2-7b":
        # One step larger is a 5 x 3 grid: more than anyres_max_9 allows, so the model pools the features down again.
        assert vision_units(name, side + 64) > 9
    else:
        assert vision_units(name, 2 * side) <= units_at_the_limit  # a larger panorama gives no more


def test_gemma_3n_max_image_side_keeps_every_row_its_image_processor_sees():
    """A fixed 768 x 768 input (SigLIP's processor class at Gemma 3n's size): at max_image_side a 2:1 panorama is
    exactly 768 rows high, so it is only squashed horizontally; a larger one gives no more pixels."""
    import transformers
    from PIL import Image

    side = get_model("gemma-3n-e2b").max_image_side
    processor = transformers.SiglipImageProcessor(size={"height": 768, "width": 768})
    for width in (side, 2 * side):
        pixels = processor([Image.new("RGB", (width, width // 2), "gray")], return_tensors="pt")["pixel_values"]
        assert tuple(pixels.shape[-2:]) == (768, 768)
    assert side // 2 == 768


def test_perception_lm_max_image_side_is_its_tile_canvas():
    """The image processor class at its defaults (448 px tiles, at most 36) puts ANY 2:1 panorama on an 8 x 4 canvas
    (+ thumbnail): at max_image_side it is resized by nothing, larger ones are shrunk onto the same canvas."""
    import transformers
    from PIL import Image

    side = get_model("perception-lm-1b").max_image_side
    processor = transformers.PerceptionLMImageProcessor()
    assert (processor.tile_size, processor.max_num_tiles) == (448, 36)
    for width in (side // 4, side, 2 * side):
        image = torch.zeros(3, width // 2, width)
        canvas, grid = processor.resize(image, tile_size=448, max_num_tiles=36)
        assert grid == (8, 4) and tuple(canvas.shape[-2:]) == (side // 2, side)
        tiles = processor([Image.new("RGB", (width, width // 2), "gray")], return_tensors="pt")["pixel_values"]
        assert tiles.shape[1] == 33  # 32 tiles + the thumbnail, whatever the panorama's size


# --- Done when: an architecture no code names captions the sample data through hf: ---------------------------------

IDEFICS2_HUB_ID = "HuggingFaceM4/idefics2-8b"
# Idefics2 (SigLIP + perceiver resampler + Mistral): `User:<image>{text}<end_of_utterance>\nAssistant:`; its tokenizer
# prepends <s>. Written here, in the test, so that nothing in runner/ knows the architecture.
IDEFICS2_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ message['role'] | capitalize }}{{ ':' if message['content'][0]['type'] == 'image' else ': ' }}"
    + content("<image>")
    + "{{ '<end_of_utterance>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)


def test_an_architecture_no_code_names_captions_the_sample_data_through_hf(run_runner, tmp_path):
    runner_sources = [*(REPO_ROOT / "runner").rglob("*.py"), REPO_ROOT / "runner" / "catalogue.toml"]
    assert not [p for p in runner_sources if "idefics2" in p.read_text(encoding="utf-8").lower()]
    assert all(spec.hub_id != IDEFICS2_HUB_ID for spec in BUILTIN.models.values())

    checkpoint = tmp_path / "idefics2"
    build_architecture(
        TinyArchitecture(
            model_type="idefics2",
            config={
                "text_config": {"model_type": "mistral", **TEXT, "sliding_window": None},
                "vision_config": {**VISION, "image_size": 32, "patch_size": 8},
                "perceiver_config": {
                    "hidden_size": 32,
                    "resampler_n_latents": 4,
                    "resampler_depth": 1,
                    "resampler_n_heads": 2,
                    "resampler_head_dim": 16,
                    "num_key_value_heads": 1,
                },
                "image_token_id": Token("<image>"),
            },
            chat_template=IDEFICS2_CHAT_TEMPLATE,
            special_tokens=("<fake_token_around_image>", "<image>", "<end_of_utterance>"),
            add_bos=True,
            stop_tokens=("<end_of_utterance>",),
            image_processor={"size": {"shortest_edge": 32, "longest_edge": 64}, "do_image_splitting": False},
            processor={"image_seq_len": 4},  # the perceiver's latents per image
        ),
        checkpoint,
    )
    data_file = REPO_ROOT / "data" / "sample" / "sample.csv"
    out = tmp_path / "out"
    run = run_runner(
        "--model", f"hf:{IDEFICS2_HUB_ID}", "--model-path", checkpoint, "--data", data_file, "--output-dir", out,
        "--device", "cpu", "--batch-size", "4", "--max-new-tokens", "8", "--min-new-tokens", "2", "--no-progress",
    )  # fmt: skip
    assert run.result is not None and run.result.status == "completed"
    assert run.result.num_samples == run.result.num_written == 24 and run.result.num_errors == 0
    records, manifest = run_outputs(out, f"hf:{IDEFICS2_HUB_ID}")
    assert manifest.model_name == "HuggingFaceM4--idefics2-8b"
    assert (manifest.model_id, manifest.family, manifest.random_weights) == (IDEFICS2_HUB_ID, "generic", True)
    assert len({(r.image, r.query) for r in records}) == 24
    for record in records:
        instruction = DEFAULT_PROMPT_TEMPLATE.format(query=record.query)
        assert record.prompt == f"User:<image>{instruction}<end_of_utterance>\nAssistant:"
        assert record.prediction and record.error is None
        assert not any(token in record.prediction for token in ("<image>", "<end_of_utterance>", "<s>", "</s>"))
    assert len({r.prediction for r in records}) > 1
    assert Path(out, "HuggingFaceM4--idefics2-8b_predictions.csv").is_file()


# --- On a host with Hub access: the published processors render the prompts above ------------------------------------

needs_hub = pytest.mark.skipif(
    __import__("os").environ.get("VLM_ABLATION_HUB_CHECKS") != "1",
    reason="set VLM_ABLATION_HUB_CHECKS=1 on a host with Hub access (gated models need HF_TOKEN)",
)


@needs_hub
@pytest.mark.parametrize("name", NAMES)
def test_published_processor_renders_the_expected_prompt(name):
    """Downloads only processor/tokenizer files, no weights; checks the prompt and the processor class."""
    from transformers import AutoProcessor

    from runner.adapters.base import chat_template_prompt

    spec = get_model(name)
    processor = AutoProcessor.from_pretrained(spec.hub_id, revision=spec.revision)
    expected_prompt, _, processor_class = ARCHITECTURES[name]
    assert type(processor).__name__ == processor_class
    instruction = DEFAULT_PROMPT_TEMPLATE.format(query="people")
    rendered = chat_template_prompt(processor, instruction)
    if spec.prompt_format is None:
        assert rendered == expected_prompt.format(instruction=instruction)
    else:
        assert rendered is None  # no chat template: the entry's prompt_format is what runs
        assert spec.prompt_format.format(prompt=instruction) == expected_prompt.format(instruction=instruction)
