"""InternVL2 (OpenGVLab/InternVL2-2B): two checkpoint formats, one prompt, decoder-only, left padding.

Route (see docs/RUNNER.md): the published OpenGVLab/InternVL2-2B is a remote-code checkpoint (config
model_type "internvl_chat", InternLM2 language model) whose code runs on transformers 4.46.x only; transformers
>= 4.52 has native InternVL classes, which load only converted checkpoints (model_type "internvl"). This adapter
takes either, chosen from the checkpoint's config.json:

- native ("internvl"): InternVLForConditionalGeneration + InternVLProcessor with its chat template; the processor
  tiles the image and expands `<IMG_CONTEXT>`; generate returns prompt + answer, sliced at the padded length.
  The tiny checkpoint uses this format, so this path is what runs offline in tests.
- remote code ("internvl_chat", trust_remote_code=True, at the registry's revision, in an image pinned to
  transformers 4.46.3): no processor exists, so this module builds the inputs itself: the `internlm2-chat`
  prompt, dynamic 448 px tiling with a thumbnail, ImageNet normalisation, and `<img>` + `<IMG_CONTEXT>` x
  (tokens per tile x tiles) + `</img>` in place of `<image>`. The remote generate() feeds the language model
  embeddings only, so it returns ONLY the new tokens: nothing is sliced off.
No InternVL code is copied here; the remote code is downloaded from the Hub at the pinned revision and run as is.
"""

from __future__ import annotations

import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
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


def internvl2_chat_prompt(instruction: str, system_message: str = INTERNVL2_SYSTEM_MESSAGE) -> str:
    """The text InternVL2's chat()/batch_chat() build for one image and one question, before image expansion."""
    return (
        f"<|im_start|>system\n{system_message}{TURN_END}"
        f"<|im_start|>user\n{IMAGE_PLACEHOLDER}\n{instruction}{TURN_END}"
        "<|im_start|>assistant\n"
    )


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


@register_adapter("internvl2")
class InternVL2Adapter(Adapter):
    model_class_name = "InternVLForConditionalGeneration"  # the native format; remote code loads via AutoModel

    @classmethod
    def load(
        cls, source: str, *, revision: str | None, dtype: torch.dtype, device: torch.device, spec: ModelSpec
    ) -> LoadedModel:
        if checkpoint_model_type(source, revision) == REMOTE_MODEL_TYPE:
            return cls._load_remote(source, revision=revision, dtype=dtype, device=device)
        return super().load(source, revision=revision, dtype=dtype, device=device, spec=spec)

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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

    def build_prompt(self, instruction: str) -> str:
        if self.remote:
            return internvl2_chat_prompt(instruction, self.system_message)
        return super().build_prompt(instruction)

    def preprocess(self, images: list[Image.Image], prompts: list[str]) -> dict[str, Any]:
        if self.remote:
            return pin_memory(remote_inputs(self.tokenizer, self.layout, images, prompts), self.device)
        return super().preprocess(images, prompts)

    def generation_kwargs(self) -> dict[str, Any]:
        # As the remote chat(): stop at the template's turn separator.
        return {"eos_token_id": self.turn_end_id} if self.remote else {}

    def generated_ids(self, output_ids: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        # The remote generate() runs the language model on embeddings only, so its output holds no prompt ids.
        return output_ids if self.remote else super().generated_ids(output_ids, inputs)
