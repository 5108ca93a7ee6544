"""BLIP-2 (Salesforce/blip2-opt-2.7b, Salesforce/blip2-flan-t5-xl): one adapter for both language models.

Whether the LM is decoder-only (OPT: left padding, slice the prompt off) or encoder-decoder (Flan-T5: the output
is the answer alone) is read from the LOADED config, not from the model name. BLIP-2 has no chat template; the
documented prompt is `Question: {prompt} Answer:`. The processor prepends the `<image>` query tokens itself.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from transformers import AutoProcessor, Blip2ForConditionalGeneration

from runner.adapters.base import Adapter, LoadedModel, commit_hash, move_inputs, register_family
from runner.registry import ModelSpec


@register_family("blip2")
class Blip2Adapter(Adapter):
    # The vision tower sees 224x224; keep some margin for the processor's own resize.
    max_image_side = 448
    model_class: Any = Blip2ForConditionalGeneration

    def __init__(self, spec: ModelSpec, loaded: LoadedModel, device: torch.device, dtype: torch.dtype):
        self.decoder_only = not loaded.model.config.text_config.is_encoder_decoder  # type: ignore[misc]
        super().__init__(spec, loaded, device, dtype)

    @classmethod
    def load(cls, source: str, *, revision: str | None, dtype: torch.dtype, device: torch.device) -> LoadedModel:
        processor = AutoProcessor.from_pretrained(source, revision=revision)
        model = cls.model_class.from_pretrained(source, revision=revision, dtype=dtype).to(device).eval()
        return LoadedModel(model=model, processor=processor, resolved_revision=commit_hash(model))

    def build_prompt(self, instruction: str) -> str:
        return f"Question: {instruction} Answer:"

    def build_inputs(self, images: list[Image.Image], prompts: list[str]) -> dict[str, Any]:
        inputs = self.processor(images=images, text=prompts, return_tensors="pt", padding=True)
        return move_inputs(inputs, self.device, self.dtype)
