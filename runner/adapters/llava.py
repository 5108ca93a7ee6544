"""LLaVA-1.5 (llava-hf/llava-1.5-7b-hf): LlavaForConditionalGeneration, decoder-only, left padding.

The prompt comes from the processor's chat template; a checkpoint without one gets the documented format
`USER: <image>\\n{prompt} ASSISTANT:`. The processor expands `<image>` to the image's feature tokens.
"""

from __future__ import annotations

from runner.adapters.base import Adapter, register_family


@register_family("llava")
class LlavaAdapter(Adapter):
    # The CLIP tower sees 336x336 after resizing the SHORT side to 336: a 2:1 panorama needs 672 on its long side.
    max_image_side = 672
    model_class_name = "LlavaForConditionalGeneration"
    fallback_format = "USER: <image>\n{prompt} ASSISTANT:"
