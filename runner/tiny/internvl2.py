"""Tiny random-weight InternVL2 checkpoint in transformers' NATIVE format (InternVLForConditionalGeneration).

The published OpenGVLab/InternVL2-2B ships remote code (model_type "internvl_chat"); the runner converts it to
this native format (runner/convert_internvl2.py). The tiny checkpoint uses the native classes (model_type
"internvl", the Llama language model a converted InternLM2 is) with InternVL2-2B's special tokens, its geometry
scaled down (2 query heads per key-value head, biased vision q/k/v, dynamic RoPE), 448-style dynamic tiling
scaled down, and the chat template that renders exactly the prompt InternVL2-2B's own `internlm2-chat`
conversation template builds. runner/tiny/internvl2_remote.py saves the same model in the published remote layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, InternVLConfig, InternVLForConditionalGeneration

from runner.adapters.internvl2 import INTERNVL2_SYSTEM_MESSAGE, INTERNVL_NAMED_TOKENS, TURN_END
from runner.convert_internvl2 import internvl2_processor
from runner.registry import ModelSpec
from runner.tiny.common import register_tiny, save_tiny, train_tokenizer, widen_init, with_named_tokens

# Tiles of 28 px (448 in the real model) cut into 7 px patches (14 real): 4 x 4 patches, pixel-shuffled by
# downsample_ratio 0.5 -> 2 x 2 = 4 tokens per tile (256 real).
TINY_TILE_SIDE = 28
TINY_PATCH_SIZE = 7
TINY_TOKENS_PER_TILE = (TINY_TILE_SIDE // TINY_PATCH_SIZE) ** 2 // 4
# InternVL2-2B: hidden 2048, 16 query heads over 8 key-value heads (2 per group), rope_theta 1e6 with dynamic
# scaling x2 past 32768 positions; vision 1024 wide with q/k/v biases. The same shapes, scaled down.
TINY_TEXT_SIZES: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1000000.0},
}
TINY_VISION_SIZES: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "image_size": [TINY_TILE_SIDE, TINY_TILE_SIDE],
    "patch_size": [TINY_PATCH_SIZE, TINY_PATCH_SIZE],
    "attention_bias": True,
}
TINY_SPECIAL_TOKENS = ["<|im_start|>", TURN_END, *INTERNVL_NAMED_TOKENS.values()]


def tiny_internvl2_model(tokenizer: Any, *, pad_token: str, vocab_size: int | None = None) -> Any:
    """The tiny native model for a tokenizer with InternVL2's special tokens: seeded wide random weights, every
    bias, norm and layer scale spread too (a converter that mixed any of them up changes the output)."""
    token_id = tokenizer.convert_tokens_to_ids
    config = InternVLConfig(
        vision_config=dict(TINY_VISION_SIZES),
        text_config={
            "model_type": "llama",
            "vocab_size": vocab_size or len(tokenizer),
            **TINY_TEXT_SIZES,
            "bos_token_id": token_id("<s>"),
            "eos_token_id": token_id("</s>"),
            "pad_token_id": token_id(pad_token),
            "tie_word_embeddings": False,
        },
        image_token_id=token_id("<IMG_CONTEXT>"),
        image_seq_length=TINY_TOKENS_PER_TILE,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    model = InternVLForConditionalGeneration(config).eval()
    widen_init(model)  # greedy output must depend on image and prompt, or the tests could not fail
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 1:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    # InternVL2's chat() stops on the template separator <|im_end|> only.
    model.generation_config = GenerationConfig(
        bos_token_id=token_id("<s>"), eos_token_id=token_id(TURN_END), pad_token_id=token_id(pad_token), do_sample=False
    )
    return model


def tiny_internvl2_processor(tokenizer: Any) -> Any:
    return internvl2_processor(tokenizer, tile_side=TINY_TILE_SIDE, image_tokens_per_tile=TINY_TOKENS_PER_TILE)


@register_tiny("internvl2")
def build_tiny_internvl2(spec: ModelSpec, out_dir: Path) -> None:
    tokenizer = train_tokenizer(
        TINY_SPECIAL_TOKENS,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_corpus=[INTERNVL2_SYSTEM_MESSAGE],
        add_bos=True,  # InternLM2's tokenizer prepends <s>
    )
    tokenizer = with_named_tokens(tokenizer, INTERNVL_NAMED_TOKENS)
    save_tiny(tiny_internvl2_model(tokenizer, pad_token="<pad>"), tiny_internvl2_processor(tokenizer), out_dir)
