"""Qwen2.5-VL (Qwen/Qwen2.5-VL-3B-Instruct): Qwen2_5_VLForConditionalGeneration, decoder-only, left padding.

The prompt is the processor's chat template (ChatML: a default system turn, then
`<|vision_start|><|image_pad|><|vision_end|>{instruction}`); the processor expands `<|image_pad|>` to one token
per 28x28 pixel block of the resized image. Qwen2.5-VL keeps the image's aspect ratio and resolution up to
`max_pixels`, so a panorama at full size would cost thousands of vision tokens: the pixel budget is capped here.
"""

from __future__ import annotations

from typing import Any, ClassVar

from runner.adapters.base import Adapter, register_family

# One vision token per 28x28 block after the 2x2 patch merge (14 px patches).
PIXELS_PER_VISION_TOKEN = 28 * 28
# At most 1280 vision tokens per image (the upper setting Qwen's model card suggests), instead of the checkpoint's
# 12.8 MP default (16384 tokens): a 2:1 panorama becomes 1400 x 700 = 50 x 25 = 1250 tokens.
MAX_PIXELS = 1280 * PIXELS_PER_VISION_TOKEN


def cap_max_pixels(image_processor: Any, max_pixels: int) -> int:
    """Lower the image processor's pixel budget to max_pixels (never raise it); returns the budget in effect."""
    size = image_processor.size
    current = size["longest_edge"] if isinstance(size, dict) else size.longest_edge
    effective = min(int(current), max_pixels)
    if isinstance(size, dict):
        size["longest_edge"] = effective
    else:
        size.longest_edge = effective
    return effective


@register_family("qwen2.5-vl")
class Qwen2_5_VLAdapter(Adapter):
    # 1400 x 700 is the largest 2:1 size inside MAX_PIXELS on the 28 px grid: no second resize in the processor.
    max_image_side = 1400
    max_pixels: ClassVar[int] = MAX_PIXELS
    model_class_name = "Qwen2_5_VLForConditionalGeneration"

    @classmethod
    def load_processor(cls, source: str, revision: str | None) -> Any:
        processor = super().load_processor(source, revision)
        cap_max_pixels(processor.image_processor, cls.max_pixels)
        return processor
