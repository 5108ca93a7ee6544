"""Gemma 3 (google/gemma-3-4b-it): Gemma3ForConditionalGeneration, decoder-only, left padding.

The prompt is the processor's chat template (`<bos><start_of_turn>user\\n<start_of_image>{instruction}<end_of_turn>\\n
<start_of_turn>model\\n`); the processor expands `<start_of_image>` to the image's soft tokens. The template
already starts with `<bos>`, so the text is tokenized without adding special tokens (a second `<bos>` would
change the model's input). The processor wants one list of images per prompt: `[[image], [image], ...]`.
"""

from __future__ import annotations

from runner.adapters.base import Adapter, register_family


@register_family("gemma3")
class Gemma3Adapter(Adapter):
    # SigLIP sees 896 x 896 (the image is squashed, not cropped; pan-and-scan stays off as in the checkpoint's
    # processor config): a 2:1 panorama keeps all the rows the model sees at 1792 x 896.
    max_image_side = 1792
    model_class_name = "Gemma3ForConditionalGeneration"
    nested_images = True
