"""LLaVA-1.5 (llava-hf/llava-1.5-7b-hf): LlavaForConditionalGeneration, decoder-only, left padding.

The prompt comes from the processor's chat template; a checkpoint without one gets the documented format
`USER: <image>\\n{prompt} ASSISTANT:`. The processor expands `<image>` to the image's feature tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from runner.adapters.base import (
    Adapter,
    LoadedModel,
    chat_template_prompt,
    commit_hash,
    move_inputs,
    register_family,
)


@register_family("llava")
class LlavaAdapter(Adapter):
    # The CLIP tower sees 336x336 after resizing the SHORT side to 336: a 2:1 panorama needs 672 on its long side.
    max_image_side = 672
    model_class: Any = LlavaForConditionalGeneration
    fallback_format = "USER: <image>\n{prompt} ASSISTANT:"

    @classmethod
    def load(cls, source: str, *, revision: str | None, dtype: torch.dtype, device: torch.device) -> LoadedModel:
        processor = AutoProcessor.from_pretrained(source, revision=revision)
        model = cls.model_class.from_pretrained(source, revision=revision, dtype=dtype).to(device).eval()
        return LoadedModel(model=model, processor=processor, resolved_revision=commit_hash(model))

    def build_prompt(self, instruction: str) -> str:
        templated = chat_template_prompt(self.processor, instruction)
        return templated if templated is not None else self.fallback_format.format(prompt=instruction)

    def build_inputs(self, images: list[Image.Image], prompts: list[str]) -> dict[str, Any]:
        inputs = self.processor(images=images, text=prompts, return_tensors="pt", padding=True)
        return move_inputs(inputs, self.device, self.dtype)
