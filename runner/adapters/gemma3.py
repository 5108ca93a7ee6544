"""Gemma 3 (google/gemma-3-4b-it): Gemma3ForConditionalGeneration, decoder-only, left padding.

The prompt is the processor's chat template (`<bos><start_of_turn>user\\n<start_of_image>{instruction}<end_of_turn>\\n
<start_of_turn>model\\n`); the processor expands `<start_of_image>` to the image's soft tokens. The template
already starts with `<bos>`, so the text is tokenized without adding special tokens (a second `<bos>` would
change the model's input). The processor wants one list of images per prompt: `[[image], [image], ...]`.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from transformers import AutoProcessor

from runner.adapters.base import (
    Adapter,
    LoadedModel,
    chat_template_prompt,
    commit_hash,
    move_inputs,
    register_family,
)


def template_wrote_bos(tokenizer: Any, prompts: list[str]) -> bool:
    """True when every prompt already starts with the BOS token (the tokenizer must not add another one)."""
    bos = tokenizer.bos_token
    return bool(bos) and all(prompt.startswith(bos) for prompt in prompts)


@register_family("gemma3")
class Gemma3Adapter(Adapter):
    # SigLIP sees 896 x 896 (the image is squashed, not cropped; pan-and-scan stays off as in the checkpoint's
    # processor config): a 2:1 panorama keeps all the rows the model sees at 1792 x 896.
    max_image_side = 1792

    @classmethod
    def load(cls, source: str, *, revision: str | None, dtype: torch.dtype, device: torch.device) -> LoadedModel:
        processor = AutoProcessor.from_pretrained(source, revision=revision)
        # Imported here so that importing runner.adapters works on every family's transformers version.
        from transformers import Gemma3ForConditionalGeneration

        model = Gemma3ForConditionalGeneration.from_pretrained(source, revision=revision, dtype=dtype)
        return LoadedModel(model=model.to(device).eval(), processor=processor, resolved_revision=commit_hash(model))

    def build_prompt(self, instruction: str) -> str:
        prompt = chat_template_prompt(self.processor, instruction)
        if prompt is None:
            raise ValueError(f"{self.spec.name}: the processor has no chat template (gemma-3-it ships one)")
        return prompt

    def build_inputs(self, images: list[Image.Image], prompts: list[str]) -> dict[str, Any]:
        inputs = self.processor(
            text=prompts,
            images=[[image] for image in images],
            padding=True,
            padding_side="left",
            return_tensors="pt",
            add_special_tokens=not template_wrote_bos(self.tokenizer, prompts),
        )
        return move_inputs(inputs, self.device, self.dtype)
