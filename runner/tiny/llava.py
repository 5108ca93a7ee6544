"""Tiny LLaVA-1.5 checkpoint: LlavaForConditionalGeneration (CLIP vision tower + Llama LM).

Its processor carries a chat template that renders the real llava-1.5-hf format, `USER: <image>\\n{prompt}
ASSISTANT:` (written here, not copied), so tests run the same prompt path as the real checkpoint. The vision
tower has two layers because LLaVA reads features from `vision_feature_layer=-2`.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from runner.registry import ModelSpec
from runner.tiny.common import (
    finish_tiny,
    register_tiny,
    tiny_decoder_sizes,
    train_tokenizer,
)

IMAGE_SIZE = 32
PATCH_SIZE = 8
# 16 patches; the "default" strategy drops CLS, so 16 image tokens per image.
IMAGE_SEQ_LENGTH = (IMAGE_SIZE // PATCH_SIZE) ** 2

LLAVA_1_5_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] != 'system' -%}{{ message['role'].upper() + ': ' }}{%- endif -%}"
    "{%- for part in message['content'] if part['type'] == 'image' -%}{{ '<image>\\n' }}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{ part['text'] + ' ' }}{%- endfor -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


def tiny_clip_vision() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=32,
    )


def tiny_llama_tokenizer():  # noqa: ANN201  (a PreTrainedTokenizerFast)
    return train_tokenizer(["<image>"], add_bos=True)


@register_tiny("llava")
def build(spec: ModelSpec, out_dir: Path) -> None:
    tokenizer = tiny_llama_tokenizer()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_1_5_CHAT_TEMPLATE,
    )
    text = LlamaConfig(**tiny_decoder_sizes(tokenizer, max_position_embeddings=512))
    config = LlavaConfig(
        vision_config=tiny_clip_vision().to_dict(),
        text_config=text.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=IMAGE_SEQ_LENGTH,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config)
    finish_tiny(model, tokenizer, processor, out_dir)
