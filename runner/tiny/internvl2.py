"""Tiny random-weight InternVL2 checkpoint in transformers' NATIVE format (InternVLForConditionalGeneration).

The published OpenGVLab/InternVL2-2B ships remote code (model_type "internvl_chat") that cannot run here; the
tiny checkpoint uses the native classes (model_type "internvl", a Llama-architecture language model as in
converted InternLM2 checkpoints) with InternVL2-2B's special tokens, 448-style dynamic tiling (scaled down), and
a chat template that renders exactly the prompt InternVL2-2B's own `internlm2-chat` conversation template builds.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    GenerationConfig,
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
)

from runner.adapters.internvl2 import IMAGENET_MEAN, IMAGENET_STD, INTERNVL2_SYSTEM_MESSAGE
from runner.registry import ModelSpec
from runner.tiny.common import register_tiny, save_tiny, train_tokenizer, widen_init, with_named_tokens

# InternVL2-2B's `internlm2-chat` conversation (MPT separator style, sep `<|im_end|>` with NO newline after it):
#   <|im_start|>system\n{system}<|im_end|><|im_start|>user\n<image>\n{question}<|im_end|><|im_start|>assistant\n
# and its tokenizer prepends <s>. Native InternVL processors expand `<IMG_CONTEXT>` to
# `<img>` + `<IMG_CONTEXT>` x (tokens per tile x tiles) + `</img>`, which is what the remote code puts in place of
# `<image>`; so this template writes `<IMG_CONTEXT>` where the remote prompt has `<image>`.
INTERNVL2_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text'] -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set system_message = '" + INTERNVL2_SYSTEM_MESSAGE + "' -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}"
    "{{ '<|im_start|>system\\n' + system_message + '<|im_end|>' }}"
    "{%- for message in loop_messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<IMG_CONTEXT>\\n' }}"
    "{%- elif item['type'] == 'video' -%}{{ '<video>\\n' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

INTERNVL_NAMED_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}

# Tiles of 28 px (448 in the real model) cut into 7 px patches (14 real): 4 x 4 patches, pixel-shuffled by
# downsample_ratio 0.5 -> 2 x 2 = 4 tokens per tile (256 real).
TINY_TILE_SIDE = 28
TINY_PATCH_SIZE = 7
TINY_TOKENS_PER_TILE = (TINY_TILE_SIDE // TINY_PATCH_SIZE) ** 2 // 4


@register_tiny("internvl2")
def build_tiny_internvl2(spec: ModelSpec, out_dir: Path) -> None:
    special_tokens = ["<|im_start|>", "<|im_end|>", *INTERNVL_NAMED_TOKENS.values()]
    tokenizer = train_tokenizer(
        special_tokens,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_corpus=[INTERNVL2_SYSTEM_MESSAGE],
        add_bos=True,  # InternLM2's tokenizer prepends <s>
    )
    tokenizer = with_named_tokens(tokenizer, INTERNVL_NAMED_TOKENS)
    token_id = tokenizer.convert_tokens_to_ids
    config = InternVLConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": [TINY_TILE_SIDE, TINY_TILE_SIDE],
            "patch_size": [TINY_PATCH_SIZE, TINY_PATCH_SIZE],
        },
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "bos_token_id": token_id("<s>"),
            "eos_token_id": token_id("<|im_end|>"),
            "pad_token_id": token_id("<pad>"),
            "tie_word_embeddings": False,
        },
        image_token_id=token_id("<IMG_CONTEXT>"),
        image_seq_length=TINY_TOKENS_PER_TILE,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    model = InternVLForConditionalGeneration(config).eval()
    widen_init(model)  # greedy output must depend on image and prompt, or the tests could not fail
    # InternVL2 chat() stops on the template separator <|im_end|>.
    model.generation_config = GenerationConfig(
        bos_token_id=token_id("<s>"),
        eos_token_id=[token_id("<|im_end|>"), token_id("</s>")],
        pad_token_id=token_id("<pad>"),
        do_sample=False,
    )
    tile = {"height": TINY_TILE_SIDE, "width": TINY_TILE_SIDE}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(
            size=tile,
            crop_to_patches=True,
            min_patches=1,
            max_patches=12,  # InternVL2-2B's max_num
            image_mean=list(IMAGENET_MEAN),
            image_std=list(IMAGENET_STD),
        ),
        video_processor=InternVLVideoProcessor(size=tile, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)),
        tokenizer=tokenizer,
        image_seq_length=TINY_TOKENS_PER_TILE,
        chat_template=INTERNVL2_CHAT_TEMPLATE,
    )
    save_tiny(model, processor, out_dir)
