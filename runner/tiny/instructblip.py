"""Tiny InstructBLIP checkpoint: InstructBlipForConditionalGeneration with a Llama (Vicuna-like) LM.

Like the real one: no chat template (the prompt is the bare instruction), the processor adds the `<image>` query
tokens itself, num_query_tokens equals the config's, and the Q-Former reads the instruction through its OWN
tokenizer (saved in `qformer_tokenizer/`).
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    InstructBlipQFormerConfig,
    InstructBlipVisionConfig,
    LlamaConfig,
)

from runner.registry import ModelSpec
from runner.tiny.blip2 import NUM_QUERY_TOKENS, tiny_image_processor, tiny_vision_and_qformer
from runner.tiny.common import (
    finish_tiny,
    register_tiny,
    tiny_decoder_sizes,
    train_tokenizer,
)


@register_tiny("instructblip")
def build(spec: ModelSpec, out_dir: Path) -> None:
    tokenizer = train_tokenizer([], add_bos=True)
    # The real Q-Former tokenizer is BERT's; here a second, smaller tokenizer with its own vocabulary.
    qformer_tokenizer = train_tokenizer([], vocab_size=300, bos_token=None)
    processor = InstructBlipProcessor(
        image_processor=tiny_image_processor(),
        tokenizer=tokenizer,
        qformer_tokenizer=qformer_tokenizer,
        num_query_tokens=NUM_QUERY_TOKENS,
    )
    tokenizer = processor.tokenizer
    vision, qformer = tiny_vision_and_qformer(
        InstructBlipVisionConfig,
        InstructBlipQFormerConfig,
        vocab_size=len(qformer_tokenizer),
        max_position_embeddings=128,
        pad_token_id=qformer_tokenizer.pad_token_id,
    )
    text = LlamaConfig(**tiny_decoder_sizes(tokenizer, max_position_embeddings=256))
    config = InstructBlipConfig(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = InstructBlipForConditionalGeneration(config)
    finish_tiny(model, tokenizer, processor, out_dir)
