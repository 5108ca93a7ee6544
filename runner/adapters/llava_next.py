"""LLaVA-1.6-Mistral (llava-hf/llava-v1.6-mistral-7b-hf): LlavaNextForConditionalGeneration with anyres tiling.

Images of different sizes get different numbers of image tokens (grid of 336-pixel tiles plus a base view);
with left padding the batch stays aligned. Prompt: the processor's chat template, else the documented
`[INST] <image>\\n{prompt} [/INST]`.
"""

from __future__ import annotations

from typing import Any

from transformers import LlavaNextForConditionalGeneration

from runner.adapters.base import register_family
from runner.adapters.llava import LlavaAdapter


@register_family("llava-next")
class LlavaNextAdapter(LlavaAdapter):
    # The largest anyres grid is 1008 pixels on its long side (3 x 336 tiles).
    max_image_side = 1008
    model_class: Any = LlavaNextForConditionalGeneration
    fallback_format = "[INST] <image>\n{prompt} [/INST]"
