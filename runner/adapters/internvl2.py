"""InternVL2 (OpenGVLab/InternVL2-2B): two checkpoint formats, one prompt, decoder-only, left padding.

Route (see docs/RUNNER.md): the published OpenGVLab/InternVL2-2B is a remote-code checkpoint (config
model_type "internvl_chat", InternLM2 language model) whose code runs on transformers 4.46.x only; transformers
>= 4.52 has native InternVL classes, which load only converted checkpoints (model_type "internvl"). This adapter
takes either, chosen from the checkpoint's config.json:

- native ("internvl"): InternVLForConditionalGeneration + InternVLProcessor with its chat template; the processor
  tiles the image and expands `<IMG_CONTEXT>`; generate returns prompt + answer, sliced at the padded length.
- remote code ("internvl_chat") on transformers >= 5: converted to the native format (runner/convert_internvl2.py)
  and loaded as above. For a Hub id the fetch step converted it once into
  $HF_HOME/vlm-ablation-converted/<org>--<name>/<commit>/, which is used as is; a local --model-path in the remote
  format, or a snapshot nobody converted, is converted into a temporary folder first (said on stderr). The run
  manifest records the conversion (`manifest_extras`).
- remote code on transformers 4.46.x (trust_remote_code=True, at the registry's revision; the reference path a
  connected host compares against): no processor exists, so this module builds the inputs itself: the
  `internlm2-chat` prompt, dynamic 448 px tiling with a thumbnail, ImageNet normalisation, and `<img>` +
  `<IMG_CONTEXT>` x (tokens per tile x tiles) + `</img>` in place of `<image>`. The remote generate() feeds the
  language model embeddings only, so it returns ONLY the new tokens: nothing is sliced off.
No InternVL code is copied here; the remote code is downloaded from the Hub at the pinned revision and run as is.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import PretrainedConfig

from runner.adapters.base import (
    Adapter,
    LoadedModel,
    commit_hash,
    pin_memory,
    register_adapter,
    resolve_hub_revision,
)
from runner.registry import ModelSpec

NATIVE_MODEL_TYPE = "internvl"
REMOTE_MODEL_TYPE = "internvl_chat"

# InternVL2-2B's conversation template `internlm2-chat` (MPT separator style: `<|im_end|>` with no newline).
INTERNVL2_SYSTEM_MESSAGE = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
)
IMAGE_PLACEHOLDER = "<image>"
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
TURN_END = "<|im_end|>"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# InternVL2-2B's `internlm2-chat` conversation (MPT separator style, sep `<|im_end|>` with NO newline after it):
#   <|im_start|>system\n{system}<|im_end|><|im_start|>user\n<image>\n{question}<|im_end|><|im_start|>assistant\n
# and its tokenizer prepends <s>. Native InternVL processors expand `<IMG_CONTEXT>` to
# `<img>` + `<IMG_CONTEXT>` x (tokens per tile x tiles) + `</img>`, which is what the remote code puts in place of
# `<image>`; so this template writes `<IMG_CONTEXT>` where the remote prompt has `<image>`.
INTERNVL2_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text'] -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set system_message = '" + INTERNVL2_SYSTEM_MESSAGE + "' -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}"
    "{{ '<|im_start|>system\\n' + system_message + '<|im_end|>' }}"
    "{%- for message in loop_messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<IMG_CONTEXT>\\n' }}"
    "{%- elif item['type'] == 'video' -%}{{ '<video>\\n' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

RESERVED_IN_INSTRUCTIONS = (IMAGE_PLACEHOLDER, IMG_CONTEXT, "<video>")

# The tokenizer attributes transformers' InternVLProcessor reads (saved in tokenizer_config.json).
INTERNVL_NAMED_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


def internvl2_chat_prompt(instruction: str, system_message: str = INTERNVL2_SYSTEM_MESSAGE) -> str:
    """The text InternVL2's chat()/batch_chat() build for one image and one question, before image expansion."""
    return (
        f"<|im_start|>system\n{system_message}{TURN_END}"
        f"<|im_start|>user\n{IMAGE_PLACEHOLDER}\n{instruction}{TURN_END}"
        "<|im_start|>assistant\n"
    )


def internvl2_native_prompt(instruction: str, bos_token: str, system_message: str = INTERNVL2_SYSTEM_MESSAGE) -> str:
    """What INTERNVL2_CHAT_TEMPLATE renders: the remote prompt with its BOS written out and `<IMG_CONTEXT>` in
    place of `<image>` (the same ids: the remote tokenizer adds BOS itself, the processor expands the image)."""
    return bos_token + internvl2_chat_prompt(instruction, system_message).replace(IMAGE_PLACEHOLDER, IMG_CONTEXT, 1)


def expand_image_placeholder(prompt: str, num_tiles: int, tokens_per_tile: int) -> str:
    """Replace the one `<image>` with the image's token span (what the model's embedding splice expects)."""
    if prompt.count(IMAGE_PLACEHOLDER) != 1:
        raise ValueError(f"expected exactly one {IMAGE_PLACEHOLDER} in the prompt, got {prompt!r}")
    return prompt.replace(IMAGE_PLACEHOLDER, IMG_START + IMG_CONTEXT * (tokens_per_tile * num_tiles) + IMG_END, 1)


def tile_grid(width: int, height: int, tile_side: int, min_tiles: int = 1, max_tiles: int = 12) -> tuple[int, int]:
    """(columns, rows) of the tile grid whose aspect ratio is closest to the image's.

    Candidates are every grid with min_tiles <= columns x rows <= max_tiles, visited in order of tile count; on a
    tie in aspect-ratio distance the larger grid wins only while the image has more than half the pixels of the
    grid (so a small image is not blown up into many tiles).
    """
    candidates = sorted(
        {
            (columns, rows)
            for count in range(min_tiles, max_tiles + 1)
            for columns in range(1, count + 1)
            for rows in range(1, count + 1)
            if min_tiles <= columns * rows <= max_tiles
        },
        key=lambda grid: grid[0] * grid[1],
    )
    aspect, area = width / height, width * height
    best, best_distance = (1, 1), float("inf")
    for columns, rows in candidates:
        distance = abs(aspect - columns / rows)
        if distance < best_distance:
            best, best_distance = (columns, rows), distance
        elif distance == best_distance and area > 0.5 * tile_side * tile_side * columns * rows:
            best = (columns, rows)
    return best


def tile_image(image: Image.Image, tile_side: int = 448, max_tiles: int = 12) -> list[Image.Image]:
    """Resize to the chosen grid, cut row by row into tile_side squares, then add a whole-image thumbnail."""
    columns, rows = tile_grid(image.width, image.height, tile_side, max_tiles=max_tiles)
    resized = image.convert("RGB").resize((tile_side * columns, tile_side * rows), Image.Resampling.BICUBIC)
    tiles = [
        resized.crop((c * tile_side, r * tile_side, (c + 1) * tile_side, (r + 1) * tile_side))
        for r in range(rows)
        for c in range(columns)
    ]
    if len(tiles) > 1:
        tiles.append(image.convert("RGB").resize((tile_side, tile_side), Image.Resampling.BICUBIC))
    return tiles


def tiles_to_pixel_values(tiles: list[Image.Image]) -> torch.Tensor:
    """(tiles, 3, side, side) float32, scaled to [0, 1] then normalised with the ImageNet mean and std."""
    pixels = torch.from_numpy(np.stack([np.asarray(tile, dtype=np.uint8) for tile in tiles]))
    pixels = pixels.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


@dataclass(frozen=True)
class RemoteLayout:
    """What the remote-code model expects: tile side (448), tokens per tile (256), most tiles (12)."""

    tile_side: int = 448
    tokens_per_tile: int = 256
    max_tiles: int = 12


def remote_inputs(
    tokenizer: Any, layout: RemoteLayout, images: list[Image.Image], prompts: list[str]
) -> dict[str, torch.Tensor]:
    """Tokenized, left-padded prompts with each `<image>` expanded, and every image's tiles stacked in order."""
    per_image = [tile_image(image, layout.tile_side, layout.max_tiles) for image in images]
    texts = [
        expand_image_placeholder(prompt, len(tiles), layout.tokens_per_tile)
        for prompt, tiles in zip(prompts, per_image, strict=True)
    ]
    # Left padding comes from tokenizer.padding_side (set by Adapter.__init__); 4.46's tokenizers take no kwarg.
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    pixel_values = torch.cat([tiles_to_pixel_values(tiles) for tiles in per_image])
    return {
        "pixel_values": pixel_values,
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
    }


def checkpoint_model_type(source: str, revision: str | None) -> str:
    """model_type from the checkpoint's config.json, read without importing (or trusting) any remote code."""
    config, _ = PretrainedConfig.get_config_dict(source, revision=revision)
    model_type = config.get("model_type")
    if model_type not in (NATIVE_MODEL_TYPE, REMOTE_MODEL_TYPE):
        raise ValueError(
            f"{source}: config.json model_type is {model_type!r}; the internvl2 adapter loads "
            f"{NATIVE_MODEL_TYPE!r} (transformers-native) or {REMOTE_MODEL_TYPE!r} (OpenGVLab remote code)"
        )
    return model_type


def native_classes_available() -> bool:
    """transformers >= 5: remote-code checkpoints are converted and run natively (4.46.x runs the remote code)."""
    return int(transformers.__version__.split(".")[0]) >= 5


def log(message: str) -> None:
    print(f"internvl2: {message}", file=sys.stderr, flush=True)


@dataclass
class ConvertedModel(LoadedModel):
    """A remote-code checkpoint loaded through its native conversion; `conversion` goes into the run manifest."""

    conversion: dict[str, Any] | None = None


@register_adapter("internvl2")
class InternVL2Adapter(Adapter):
    model_class_name = "InternVLForConditionalGeneration"  # the native format; remote code loads via AutoModel

    @classmethod
    def load(
        cls, source: str, *, revision: str | None, dtype: torch.dtype, device: torch.device, spec: ModelSpec
    ) -> LoadedModel:
        if checkpoint_model_type(source, revision) == REMOTE_MODEL_TYPE:
            if native_classes_available():
                return cls._load_converted(source, revision=revision, dtype=dtype, device=device, spec=spec)
            return cls._load_remote(source, revision=revision, dtype=dtype, device=device)
        return super().load(source, revision=revision, dtype=dtype, device=device, spec=spec)

    @classmethod
    def _load_converted(
        cls, source: str, *, revision: str | None, dtype: torch.dtype, device: torch.device, spec: ModelSpec
    ) -> ConvertedModel:
        """The native conversion of a remote-code checkpoint: the fetch step's cache folder, else a fresh one."""
        from runner.convert_internvl2 import convert, find_converted, read_record

        local = Path(source).is_dir()
        commit = None if local else resolve_hub_revision(source, revision)
        folder = None if local else find_converted(source, commit)
        scratch: Path | None = None
        if folder is not None:
            log(f"using the converted checkpoint {folder} (made by the fetch step)")
        else:
            snapshot = Path(source) if local else cls._snapshot(source, commit or revision)
            scratch = Path(tempfile.mkdtemp(prefix="vlm-ablation-internvl2-"))
            folder = scratch / "native"
            why = "a local folder in the remote-code format" if local else f"no converted folder for commit {commit}"
            log(f"{source}: {why}; converting it to the native format into {folder} (removed after loading)")
            convert(snapshot, folder, source=None if local else source, commit=commit)
        record = read_record(folder) or {}
        try:
            loaded = super().load(str(folder), revision=None, dtype=dtype, device=device, spec=spec)
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)  # loaded tensors no longer need the files
        conversion = {
            "source": record.get("source"),
            "source_commit": record.get("source_commit"),
            "converter_version": record.get("converter_version"),
            "converted_at_load": scratch is not None,  # True: into a temporary folder, removed after loading
            "converted_folder": None if scratch is not None else str(folder),
        }
        return ConvertedModel(
            model=loaded.model, processor=loaded.processor, resolved_revision=commit, conversion=conversion
        )

    @staticmethod
    def _snapshot(source: str, revision: str | None) -> Path:
        """The downloaded snapshot of a Hub id (from the cache when offline)."""
        from huggingface_hub import constants, snapshot_download

        try:
            return Path(snapshot_download(source, revision=revision, local_files_only=bool(constants.HF_HUB_OFFLINE)))
        except Exception as error:  # noqa: BLE001  (any hub/cache failure becomes one clear message)
            raise RuntimeError(
                f"{source}@{revision}: neither a converted folder nor a downloaded snapshot is in the cache "
                f"({type(error).__name__}: {error}); run the fetch step first (python -m orchestrator fetch)"
            ) from None

    @classmethod
    def _load_remote(
        cls, source: str, *, revision: str | None, dtype: torch.dtype, device: torch.device
    ) -> LoadedModel:
        # Only reachable with the Hub (or a downloaded snapshot) and transformers 4.46.x: runs OpenGVLab's code
        # from the pinned revision. The "processor" is the tokenizer: the remote checkpoint has no processor.
        from transformers import AutoModel, AutoTokenizer

        commit = resolve_hub_revision(source, revision)
        revision = commit or revision  # tokenizer, code and weights from the same commit
        if not (revision and re.fullmatch(r"[0-9a-f]{40}", revision)) and not Path(source).is_dir():
            warnings.warn(
                f"{source}: running remote code from revision {revision!r}, not a pinned commit hash", stacklevel=2
            )
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=True, use_fast=False)
        model = AutoModel.from_pretrained(
            source, revision=revision, torch_dtype=dtype, trust_remote_code=True, low_cpu_mem_usage=True
        )
        return LoadedModel(
            model=model.to(device).eval(), processor=tokenizer, resolved_revision=commit or commit_hash(model)
        )

    def __init__(self, spec: Any, loaded: LoadedModel, *args: Any, **kwargs: Any) -> None:
        super().__init__(spec, loaded, *args, **kwargs)
        self.conversion = getattr(loaded, "conversion", None)
        self.remote = getattr(self.model.config, "model_type", None) == REMOTE_MODEL_TYPE
        if self.remote:
            config = self.model.config
            self.layout = RemoteLayout(
                tile_side=int(config.force_image_size or config.vision_config.image_size),
                tokens_per_tile=int(self.model.num_image_token),
                max_tiles=int(getattr(config, "max_dynamic_patch", 12)),
            )
            self.system_message = str(getattr(self.model, "system_message", INTERNVL2_SYSTEM_MESSAGE))
            # The remote model finds the image span by this id; its chat() sets it the same way before generating.
            self.model.img_context_token_id = self.tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
            self.turn_end_id = self.tokenizer.convert_tokens_to_ids(TURN_END)
            self._check_prompt_against_remote_template()

    def _check_prompt_against_remote_template(self) -> None:
        """Fail before any generation if our prompt differs from the one the checkpoint's own template builds."""
        module = sys.modules.get(type(self.model).__module__)
        get_conv_template = getattr(module, "get_conv_template", None)
        if get_conv_template is None:
            return
        template = get_conv_template(self.model.template)
        template.system_message = self.system_message
        template.append_message(template.roles[0], f"{IMAGE_PLACEHOLDER}\nPROBE")
        template.append_message(template.roles[1], None)
        expected, ours = template.get_prompt(), self.build_prompt("PROBE")
        if expected != ours:
            raise RuntimeError(f"InternVL2 prompt mismatch: checkpoint template gives {expected!r}, adapter {ours!r}")

    def manifest_extras(self) -> dict[str, Any]:
        """Extra keys for the run manifest: how a remote-code checkpoint was converted, when it was."""
        return {"conversion": self.conversion} if self.conversion else {}

    def build_prompt(self, instruction: str) -> str:
        reserved = [token for token in RESERVED_IN_INSTRUCTIONS if token in instruction]
        if reserved:
            # The model would look for an image or video there (and the converted tokenizer reads `<video>` as one
            # token where the remote one spells it out): refuse rather than caption something else.
            raise ValueError(
                f"{self.spec.name}: the instruction {instruction!r} contains {reserved}, which InternVL2 reserves "
                "for images and video; change the prompt template or the query"
            )
        if self.remote:
            return internvl2_chat_prompt(instruction, self.system_message)
        return super().build_prompt(instruction)

    def preprocess(self, images: list[Image.Image], prompts: list[str], processor: Any = None) -> dict[str, Any]:
        if self.remote:  # the "processor" of the remote checkpoint is its tokenizer
            tokenizer = processor or self.tokenizer
            return pin_memory(remote_inputs(tokenizer, self.layout, images, prompts), self.device)
        return super().preprocess(images, prompts, processor)

    def generation_kwargs(self) -> dict[str, Any]:
        # As the remote chat(): stop at the template's turn separator.
        return {"eos_token_id": self.turn_end_id} if self.remote else {}

    def generated_ids(self, output_ids: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        # The remote generate() runs the language model on embeddings only, so its output holds no prompt ids.
        return output_ids if self.remote else super().generated_ids(output_ids, inputs)
