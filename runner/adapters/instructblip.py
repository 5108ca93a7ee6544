"""InstructBLIP (Salesforce/instructblip-vicuna-7b): Vicuna (decoder-only) LM, bare-instruction prompt.

The processor tokenizes the instruction twice: with the LM tokenizer (after the `<image>` query tokens it adds
itself) and with the Q-Former's own tokenizer (`qformer_input_ids`), so the Q-Former is conditioned on it too.
"""

from __future__ import annotations

from runner.adapters.base import register_family
from runner.adapters.blip2 import Blip2Adapter


@register_family("instructblip")
class InstructBlipAdapter(Blip2Adapter):
    model_class_name = "InstructBlipForConditionalGeneration"
    fallback_format = "{prompt}"
