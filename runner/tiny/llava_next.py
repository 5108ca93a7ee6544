"""Tiny LLaVA-1.6-Mistral checkpoint: LlavaNextForConditionalGeneration (CLIP tower, anyres grid, Mistral LM).

The chat template renders the real llava-v1.6-mistral-hf format, `[INST] <image>\\n{prompt} [/INST]` (written
here, not copied). The grid pinpoints are the real ones scaled from 336 to the tiny 32-pixel tile, so a 2:1
panorama gets a multi-tile grid and images of different sizes get different numbers of image tokens, as on
the real model.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    MistralConfig,
)

from runner.registry import ModelSpec
from runner.tiny.common import finish_tiny, register_tiny, tiny_decoder_sizes
from runner.tiny.llava import IMAGE_SEQ_LENGTH, IMAGE_SIZE, PATCH_SIZE, tiny_clip_vision, tiny_llama_tokenizer

# Real: [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]] for 336-pixel tiles.
GRID_PINPOINTS = [[IMAGE_SIZE * h, IMAGE_SIZE * w] for h, w in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))]

LLAVA_1_6_MISTRAL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '[INST] ' }}"
    "{%- for part in message['content'] if part['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{{ ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ ' ' + message['content'][0]['text'] + '</s> ' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


@register_tiny("llava-next")
def build(spec: ModelSpec, out_dir: Path) -> None:
    tokenizer = tiny_llama_tokenizer()
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=GRID_PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_1_6_MISTRAL_CHAT_TEMPLATE,
    )
    text = MistralConfig(
        **tiny_decoder_sizes(tokenizer, head_dim=16, max_position_embeddings=1024, sliding_window=None)
    )
    config = LlavaNextConfig(
        vision_config=tiny_clip_vision().to_dict(),
        text_config=text.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=GRID_PINPOINTS,
        image_seq_length=IMAGE_SEQ_LENGTH,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = LlavaNextForConditionalGeneration(config)
    finish_tiny(model, tokenizer, processor, out_dir)
