"""Tiny random-weight Qwen2.5-VL checkpoint (Qwen2_5_VLForConditionalGeneration + Qwen2_5_VLProcessor).

Same classes, special tokens and chat template as Qwen/Qwen2.5-VL-3B-Instruct; only the sizes are tiny.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from runner.registry import ModelSpec
from runner.tiny.common import register_tiny, save_tiny, train_tokenizer, widen_init

# The ChatML layout the real Qwen2.5-VL-Instruct chat template produces (written here, not copied): a default
# system turn when the conversation has none, `<|vision_start|><|image_pad|><|vision_end|>` where an image goes
# (the processor expands `<|image_pad|>` to one token per merged vision patch), `<|im_end|>\n` after each turn.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item or 'image_url' in item -%}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'video' or 'video' in item -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in item -%}{{ item['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

_SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# Tiny vision budget: at most 16 merged tokens per image, so tests on CPU stay fast whatever the panorama size.
TINY_MIN_PIXELS = 28 * 28
TINY_MAX_PIXELS = 28 * 28 * 16


@register_tiny("qwen2.5-vl")
def build_tiny_qwen2_5_vl(spec: ModelSpec, out_dir: Path) -> None:
    # Qwen2 has no BOS token; the instruct checkpoints end a turn with <|im_end|> and pad with <|endoftext|>.
    tokenizer = train_tokenizer(
        _SPECIAL_TOKENS, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<unk>"
    )
    token_id = tokenizer.convert_tokens_to_ids
    head_dim = 16
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            # M-RoPE splits each head's rotary half (head_dim / 2) into temporal, height and width sections.
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": None,
            "eos_token_id": token_id("<|im_end|>"),
            "pad_token_id": token_id("<|endoftext|>"),
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 32,  # must equal the text hidden size: vision tokens are spliced into the text
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        },
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    assert sum(config.text_config.rope_parameters["mrope_section"]) == head_dim // 2
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    widen_init(model)  # greedy output must depend on image and prompt, or the tests could not fail
    model.generation_config = GenerationConfig(
        eos_token_id=[token_id("<|im_end|>"), token_id("<|endoftext|>")],
        pad_token_id=token_id("<|endoftext|>"),
        do_sample=False,
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS),
        video_processor=Qwen2VLVideoProcessor(min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS),
        tokenizer=tokenizer,
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )
    save_tiny(model, processor, out_dir)
