"""Tiny random-weight Gemma 3 checkpoint (Gemma3ForConditionalGeneration + Gemma3Processor).

Same classes, special tokens and chat template as google/gemma-3-4b-it; only the sizes are tiny.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    GenerationConfig,
)

from runner.registry import ModelSpec
from runner.tiny.common import register_tiny, save_tiny, train_tokenizer, widen_init, with_named_tokens

# The turn layout the real gemma-3-it chat template produces (written here, not copied): `<bos>`, then per turn
# `<start_of_turn>{user|model}\n` + content + `<end_of_turn>\n`, a system turn folded into the first user turn,
# `<start_of_image>` where an image goes (the processor expands it to `\n\n<start_of_image>` + image soft tokens +
# `<end_of_image>\n\n`), text items trimmed.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

# Named multimodal tokens the Gemma3 processor reads from its tokenizer (tokenizer.boi_token etc.).
GEMMA3_NAMED_TOKENS = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
}

TINY_IMAGE_SIDE = 32
TINY_PATCH_SIZE = 8
# Pooled to a square grid of tokens per image: (32 / 8) ** 2 = 16 patches, average-pooled 2x2 -> 4 tokens.
TINY_MM_TOKENS_PER_IMAGE = 4


@register_tiny("gemma3")
def build_tiny_gemma3(spec: ModelSpec, out_dir: Path) -> None:
    special_tokens = ["<start_of_turn>", "<end_of_turn>", *GEMMA3_NAMED_TOKENS.values()]
    # Gemma's tokenizer prepends <bos> (and the chat template writes one too: the adapter must not double it).
    tokenizer = train_tokenizer(special_tokens, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", add_bos=True)
    tokenizer = with_named_tokens(tokenizer, GEMMA3_NAMED_TOKENS)
    token_id = tokenizer.convert_tokens_to_ids
    config = Gemma3Config(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "query_pre_attn_scalar": 16,
            "max_position_embeddings": 4096,
            "sliding_window": 512,
            "layer_types": ["sliding_attention", "full_attention"],
            "pad_token_id": token_id("<pad>"),
            "bos_token_id": token_id("<bos>"),
            "eos_token_id": token_id("<eos>"),
        },
        vision_config={
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": TINY_IMAGE_SIDE,
            "patch_size": TINY_PATCH_SIZE,
            "vision_use_head": False,
        },
        mm_tokens_per_image=TINY_MM_TOKENS_PER_IMAGE,  # must be a perfect square (pooled to a square grid)
        boi_token_index=token_id("<start_of_image>"),
        eoi_token_index=token_id("<end_of_image>"),
        image_token_index=token_id("<image_soft_token>"),
        tie_word_embeddings=False,
    )
    model = Gemma3ForConditionalGeneration(config).eval()
    widen_init(model)  # greedy output must depend on image and prompt, or the tests could not fail
    # gemma-3-it stops on <eos> or <end_of_turn>.
    model.generation_config = GenerationConfig(
        bos_token_id=token_id("<bos>"),
        eos_token_id=[token_id("<eos>"), token_id("<end_of_turn>")],
        pad_token_id=token_id("<pad>"),
        do_sample=False,
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": TINY_IMAGE_SIDE, "width": TINY_IMAGE_SIDE}),
        tokenizer=tokenizer,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=TINY_MM_TOKENS_PER_IMAGE,
    )
    save_tiny(model, processor, out_dir)
