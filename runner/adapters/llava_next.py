"""LLaVA-1.6-Mistral (llava-hf/llava-v1.6-mistral-7b-hf): LlavaNextForConditionalGeneration with anyres tiling.

Images of different sizes get different numbers of image tokens (grid of 336-pixel tiles plus a base view);
with left padding the batch stays aligned. Prompt: the processor's chat template, else the documented
`[INST] <image>\\n{prompt} [/INST]`.
"""

from __future__ import annotations

from runner.adapters.base import Adapter, register_family


@register_family("llava-next")
class LlavaNextAdapter(Adapter):
    # The largest anyres grid is 1008 pixels on its long side (3 x 336 tiles).
    max_image_side = 1008
    model_class_name = "LlavaNextForConditionalGeneration"
    fallback_format = "[INST] <image>\n{prompt} [/INST]"
