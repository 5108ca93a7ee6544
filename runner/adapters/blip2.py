"""BLIP-2 (Salesforce/blip2-opt-2.7b, Salesforce/blip2-flan-t5-xl): one adapter for both language models.

Whether the LM is decoder-only (OPT: left padding, slice the prompt off) or encoder-decoder (Flan-T5: the output
is the answer alone) is read from the LOADED config, not from the model name. BLIP-2 has no chat template; the
documented prompt is `Question: {prompt} Answer:`. The processor prepends the `<image>` query tokens itself.
"""

from __future__ import annotations

import torch

from runner.adapters.base import Adapter, LoadedModel, register_family
from runner.registry import ModelSpec


@register_family("blip2")
class Blip2Adapter(Adapter):
    # The vision tower sees 224x224; keep some margin for the processor's own resize.
    max_image_side = 448
    model_class_name = "Blip2ForConditionalGeneration"
    fallback_format = "Question: {prompt} Answer:"

    def __init__(self, spec: ModelSpec, loaded: LoadedModel, device: torch.device, dtype: torch.dtype):
        self.decoder_only = not loaded.model.config.text_config.is_encoder_decoder  # type: ignore[misc]
        super().__init__(spec, loaded, device, dtype)
