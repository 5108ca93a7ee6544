"""Tiny BLIP-2 checkpoints: Blip2ForConditionalGeneration with an OPT (decoder-only) or a T5 (encoder-decoder) LM.

Which LM is built follows the registry entry's Hub id ("flan-t5" -> T5), as the real checkpoints differ.
Like the real ones, the processor has no chat template (BLIP-2 prompts are `Question: ... Answer:`), adds the
`<image>` query tokens itself, and its num_query_tokens equals the model config's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    BlipImageProcessor,
    OPTConfig,
    T5Config,
)

from runner.registry import ModelSpec
from runner.tiny.common import (
    finish_tiny,
    register_tiny,
    train_tokenizer,
)

IMAGE_SIZE = 32
PATCH_SIZE = 8
NUM_QUERY_TOKENS = 4
VISION_HIDDEN = 32


def tiny_vision_and_qformer(
    vision_class: type = Blip2VisionConfig, qformer_class: type = Blip2QFormerConfig, **qformer_overrides: object
) -> tuple[Any, Any]:
    """The tiny vision tower and Q-Former shared by BLIP-2 and InstructBLIP (each passes its own config classes)."""
    vision = vision_class(
        hidden_size=VISION_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    qformer_sizes: dict[str, object] = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "encoder_hidden_size": VISION_HIDDEN,
        "cross_attention_frequency": 1,
        "vocab_size": 64,
        "max_position_embeddings": 64,
    }
    return vision, qformer_class(**{**qformer_sizes, **qformer_overrides})


def tiny_image_processor() -> BlipImageProcessor:
    return BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


@register_tiny("blip2")
def build(spec: ModelSpec, out_dir: Path) -> None:
    is_t5 = "t5" in spec.hub_id.lower()
    if is_t5:
        # T5 tokenizers have no BOS; pad is the decoder start token, as in the real Flan-T5.
        tokenizer = train_tokenizer([], bos_token=None)
    else:
        # OPT's tokenizer prepends BOS to every text.
        tokenizer = train_tokenizer([], add_bos=True)
    processor = Blip2Processor(
        image_processor=tiny_image_processor(), tokenizer=tokenizer, num_query_tokens=NUM_QUERY_TOKENS
    )
    tokenizer = processor.tokenizer  # now holds the `<image>` token the processor added
    vocab_size = len(tokenizer)
    if is_t5:
        text_config = T5Config(
            vocab_size=vocab_size,
            d_model=32,
            d_kv=16,
            d_ff=64,
            num_layers=1,
            num_decoder_layers=1,
            num_heads=2,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,  # as in Flan-T5 (T5 v1.1); tied, the tiny decoder repeats one token
        )
    else:
        text_config = OPTConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=256,
            word_embed_proj_dim=32,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    vision, qformer = tiny_vision_and_qformer()
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text_config.to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = Blip2ForConditionalGeneration(config)
    finish_tiny(model, tokenizer, processor, out_dir)
