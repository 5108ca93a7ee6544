"""Tiny checkpoints of architectures that need nothing but the generic adapter: one declarative entry each.

Each entry gives the real transformers classes tiny sizes that fit together (vision output = text hidden size, rope
sections = head_dim / 2, ...), the special tokens its processor looks up, and a chat template written here that
renders the published checkpoint's prompt format (named in each comment). runner/tiny/generic.py builds them.
"""

from __future__ import annotations

from dataclasses import replace

from runner.tiny.gemma3 import GEMMA3_CHAT_TEMPLATE
from runner.tiny.generic import TinyArchitecture, Token, register_architecture
from runner.tiny.qwen2_5_vl import QWEN2_5_VL_CHAT_TEMPLATE

# A Llama-style decoder small enough for CPU tests; entries add what their text model needs.
TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "max_position_embeddings": 4096,
}

# A one-layer vision tower; entries add its image geometry (tiny images of 28-32 px, 7-8 px patches: a few tokens each).
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
# SigLIP seeing 32 px images as 4 x 4 patches of 8 px (the real ones: 224-896 px, 14-16 px patches).
SIGLIP = {"model_type": "siglip_vision_model", **VISION, "image_size": 32, "patch_size": 8}


def content(image: str) -> str:
    """Jinja for one message's content: a string as it is; in a list, image items as `image`, text items as text."""
    return (
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}{%- for item in message['content'] -%}"
        "{%- if item['type'] == 'image' -%}{{ '" + image + "' }}"
        "{%- elif item['type'] == 'text' -%}{{ item['text'] }}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
    )


def chatml(image: str, prefix: str = "") -> str:
    """ChatML turns (`<|im_start|>{role}\\n` ... `<|im_end|>\\n`), no default system turn, after `prefix` (Jinja)."""
    return (
        prefix + "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}" + content(image) + "{{ '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


QWEN_VL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
QWEN_VL_IDS = {
    "image_token_id": Token("<|image_pad|>"),
    "video_token_id": Token("<|video_pad|>"),
    "vision_start_token_id": Token("<|vision_start|>"),
    "vision_end_token_id": Token("<|vision_end|>"),
}
QWEN_TOKENIZER = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
# At most 16 merged vision tokens per image whatever the panorama size (min/max_pixels of the real processor).
QWEN2_PIXELS = {"min_pixels": 28 * 28, "max_pixels": 28 * 28 * 16}
QWEN3_PIXELS = {"size": {"shortest_edge": 32 * 32, "longest_edge": 32 * 32 * 16}}

# Qwen2-VL-Instruct: the same ChatML layout as Qwen2.5-VL (default system turn, vision_start/image_pad/vision_end).
register_architecture(
    "qwen2-vl",
    TinyArchitecture(
        model_type="qwen2_vl",
        config={
            "text_config": {**TEXT, "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]}},
            "vision_config": {"depth": 1, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2},
            **QWEN_VL_IDS,
        },
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
        special_tokens=QWEN_VL_TOKENS,
        **QWEN_TOKENIZER,
        image_processor=QWEN2_PIXELS,
        video_processor=QWEN2_PIXELS,
    ),
)

# Qwen3-VL-Instruct: ChatML without a default system turn; 16 px patches merged 2x2 (32 px per token).
QWEN3_VL_CHAT_TEMPLATE = chatml("<|vision_start|><|image_pad|><|vision_end|>")
register_architecture(
    "qwen3-vl",
    TinyArchitecture(
        model_type="qwen3_vl",
        config={
            "text_config": {
                **TEXT,
                "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True},
            },
            "vision_config": {
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "out_hidden_size": 32,
                "num_position_embeddings": 64,
                "deepstack_visual_indexes": [0],
            },
            **QWEN_VL_IDS,
        },
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
        special_tokens=QWEN_VL_TOKENS,
        **QWEN_TOKENIZER,
        image_processor={**QWEN3_PIXELS, "patch_size": 16},
        video_processor={**QWEN3_PIXELS, "patch_size": 16},
    ),
)

# SmolVLM-Instruct (Idefics3 classes): `<|im_start|>User:<image>{text}<end_of_utterance>\nAssistant:`; the processor
# expands <image> into a grid of tiles (<row_i_col_j> + image tokens) and a global view (<global-img>).
SMOLVLM_CHAT_TEMPLATE = (
    "{{ '<|im_start|>' }}"
    "{%- for message in messages -%}"
    "{{ message['role'] | capitalize }}{{ ':' if message['content'][0]['type'] == 'image' else ': ' }}"
    + content("<image>")
    + "{{ '<end_of_utterance>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
)
IDEFICS3_GRID_TOKENS = tuple(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7))
SMOLVLM = register_architecture(
    "smolvlm",
    TinyArchitecture(
        model_type="idefics3",
        config={
            "text_config": {"model_type": "llama", **TEXT},
            # 32 px tiles of 8 px patches: 16 patches, pixel-shuffled 2x2 -> 4 image tokens per tile.
            "vision_config": {**VISION, "image_size": 32, "patch_size": 8},
            "scale_factor": 2,
            "image_token_id": Token("<image>"),
        },
        chat_template=SMOLVLM_CHAT_TEMPLATE,
        special_tokens=("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>")
        + IDEFICS3_GRID_TOKENS,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        image_processor={"size": {"longest_edge": 64}, "max_image_size": {"longest_edge": 32}},
        processor={"image_seq_len": 4},
    ),
)

# LLaVA-OneVision (SigLIP + Qwen2): `<|im_start|>user\n<image>\n{text}<|im_end|>\n<|im_start|>assistant\n`; anyres
# grid tiles (the real 384 px pinpoints scaled to 32 px tiles).
LLAVA_ONEVISION_CHAT_TEMPLATE = chatml("<image>\\n")
ONEVISION_PINPOINTS = [[32 * h, 32 * w] for h in range(1, 4) for w in range(1, 4)]
register_architecture(
    "llava-onevision",
    TinyArchitecture(
        model_type="llava_onevision",
        config={
            "text_config": {"model_type": "qwen2", **TEXT},
            "vision_config": {**SIGLIP, "vision_use_head": False},
            "image_token_index": Token("<image>"),
            "video_token_index": Token("<video>"),
            "image_grid_pinpoints": ONEVISION_PINPOINTS,
        },
        chat_template=LLAVA_ONEVISION_CHAT_TEMPLATE,
        special_tokens=("<|im_start|>", "<|im_end|>", "<image>", "<video>"),
        **QWEN_TOKENIZER,
        image_processor={"size": {"height": 32, "width": 32}, "image_grid_pinpoints": ONEVISION_PINPOINTS},
        video_processor={"size": {"height": 32, "width": 32}},
        processor={"num_image_tokens": 16, "vision_feature_select_strategy": "full"},
    ),
)

# PaliGemma 2 (pt/mix): no chat template. The processor writes the prompt itself: the image tokens, <bos>, the text,
# "\n" (prefix-LM attention); the catalogue entry's prompt_format is `<image>{prompt}`.
register_architecture(
    "paligemma2",
    TinyArchitecture(
        model_type="paligemma",
        config={
            "text_config": {
                "model_type": "gemma2",
                **TEXT,
                "query_pre_attn_scalar": 16,
                "sliding_window": 512,
                "layer_types": ["sliding_attention", "full_attention"],
                # Soft-capping squashes the wide random logits until every image gives the same answer.
                "final_logit_softcapping": None,
                "attn_logit_softcapping": None,
            },
            "vision_config": {**SIGLIP, "projection_dim": 32, "vision_use_head": False},
            "projection_dim": 32,
            "hidden_size": 32,
            "image_token_index": Token("<image>"),
        },
        chat_template=None,
        special_tokens=("<image>",),
        named_tokens={"image_token": "<image>"},
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        image_processor={"size": {"height": 32, "width": 32}, "image_seq_length": 16},
        weight_scales={"multi_modal_projector": 32.0},
    ),
)

# InternVL3 in transformers' format (-hf checkpoints, Qwen2.5 LM): `<|im_start|>user\n<IMG_CONTEXT>\n{text}<|im_end|>\n
# <|im_start|>assistant\n`, no default system turn; the processor expands <IMG_CONTEXT> per 28 px tile (448 real).
INTERNVL3_CHAT_TEMPLATE = chatml("<IMG_CONTEXT>\\n")
INTERNVL_TILE = {"height": 28, "width": 28}
register_architecture(
    "internvl3",
    TinyArchitecture(
        model_type="internvl",
        config={
            "text_config": {"model_type": "qwen2", **TEXT},
            "vision_config": {**VISION, "image_size": [28, 28], "patch_size": [7, 7]},
            "image_token_id": Token("<IMG_CONTEXT>"),
            "image_seq_length": 4,  # (28 / 7) ** 2 patches, pixel-shuffled by downsample_ratio 0.5
        },
        chat_template=INTERNVL3_CHAT_TEMPLATE,
        special_tokens=("<|im_start|>", "<|im_end|>"),
        named_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        **QWEN_TOKENIZER,
        image_processor={
            "size": INTERNVL_TILE,
            "crop_to_patches": True,
            "max_patches": 12,
            "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225],
        },
        video_processor={"size": INTERNVL_TILE},
        processor={"image_seq_length": 4},
    ),
)

# Aya Vision (SigLIP2 + Cohere2): Cohere's turn tokens; the processor expands <image> into tiles of
# <|IMG_PATCH|> tokens between <|START_OF_IMG|> and <|END_OF_IMG|>.
AYA_VISION_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- set role = {'user': '<|USER_TOKEN|>', 'assistant': '<|CHATBOT_TOKEN|>', 'system': '<|SYSTEM_TOKEN|>'}"
    "[message['role']] -%}"
    "{{ '<|START_OF_TURN_TOKEN|>' + role }}" + content("<image>") + "{{ '<|END_OF_TURN_TOKEN|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{%- endif -%}"
)
register_architecture(
    "aya-vision",
    TinyArchitecture(
        model_type="aya_vision",
        config={
            "text_config": {
                "model_type": "cohere2",
                **TEXT,
                "sliding_window": 512,
                "layer_types": ["sliding_attention", "full_attention"],
            },
            "vision_config": {**SIGLIP, "vision_use_head": False},
            "downsample_factor": 2,  # 4 x 4 patches -> 2 x 2 tokens per tile
            "image_token_index": Token("<|IMG_PATCH|>"),
        },
        chat_template=AYA_VISION_CHAT_TEMPLATE,
        special_tokens=(
            "<|START_OF_TURN_TOKEN|>",
            "<|END_OF_TURN_TOKEN|>",
            "<|USER_TOKEN|>",
            "<|CHATBOT_TOKEN|>",
            "<|SYSTEM_TOKEN|>",
            "<image>",
            "<|START_OF_IMG|>",
            "<|END_OF_IMG|>",
            "<|IMG_PATCH|>",
            "<|IMG_LINE_BREAK|>",
        ),
        bos_token="<BOS_TOKEN>",
        eos_token="<|END_OF_TURN_TOKEN|>",
        pad_token="<PAD>",
        add_bos=True,
        image_processor={"size": {"height": 32, "width": 32}, "crop_to_patches": True, "max_patches": 12},
        processor={"patch_size": 16, "img_size": 32, "downsample_factor": 1},
    ),
)

# LFM2-VL (SigLIP2 NaFlex + LFM2 hybrid conv/attention LM): ChatML after <|startoftext|>; the processor resizes to a
# token budget (large images: 32 px tiles + a thumbnail; 512 px real) and expands <image> between image start/end.
LFM2_VL_CHAT_TEMPLATE = chatml("<image>", prefix="{{ bos_token }}")
LFM2_VL_GRID_TOKENS = tuple(f"<|img_row_{row}_col_{col}|>" for row in range(1, 11) for col in range(1, 11))
register_architecture(
    "lfm2-vl",
    TinyArchitecture(
        model_type="lfm2_vl",
        config={
            "text_config": {
                "model_type": "lfm2",
                **{key: TEXT[key] for key in ("hidden_size", "intermediate_size", "num_hidden_layers")},
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                # Both layer kinds; attention first, or the short-range conv layer passes too little of the image on.
                "layer_types": ["full_attention", "conv"],
                "block_auto_adjust_ff_dim": False,
            },
            "vision_config": {
                "model_type": "siglip2_vision_model",
                **VISION,
                "patch_size": 8,
                "num_patches": 64,  # the most patches per tile: max_image_tokens x downsample_factor ** 2
            },
            "projector_hidden_size": 32,
            "downsample_factor": 2,
            "image_token_id": Token("<image>"),
        },
        chat_template=LFM2_VL_CHAT_TEMPLATE,
        special_tokens=("<|im_start|>", "<image>", "<|image_start|>", "<|image_end|>", "<|img_thumbnail|>")
        + LFM2_VL_GRID_TOKENS,
        bos_token="<|startoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        image_processor={
            "tile_size": 32,
            "size": {"height": 32, "width": 32},
            "encoder_patch_size": 8,
            "downsample_factor": 2,
            "min_image_tokens": 4,
            "max_image_tokens": 16,
            "min_tiles": 2,
            "max_tiles": 4,
        },
    ),
)

# Florence-2 (DaViT + BART encoder-decoder): no chat template; the processor writes the encoder input itself (image
# tokens, <s>, the text, </s>), and the answer comes back alone. 32 px images: strides 4 and 2 give 4 x 4 features,
# plus one pooled token = 17 image tokens (768 px and 577 real).
register_architecture(
    "florence2",
    TinyArchitecture(
        model_type="florence2",
        config={
            "text_config": {
                "model_type": "bart",
                "d_model": 32,
                "encoder_layers": 1,
                "decoder_layers": 1,
                "encoder_attention_heads": 2,
                "decoder_attention_heads": 2,
                "encoder_ffn_dim": 64,
                "decoder_ffn_dim": 64,
                "max_position_embeddings": 512,
                "decoder_start_token_id": Token("</s>"),
                "forced_bos_token_id": None,
            },
            "vision_config": {
                "depths": [1, 1],
                "patch_size": [7, 3],
                "patch_stride": [4, 2],
                "patch_padding": [3, 1],
                "patch_prenorm": [False, True],
                "embed_dim": [16, 32],
                "num_heads": [1, 2],
                "num_groups": [1, 2],
                "window_size": 2,
                "projection_dim": 32,
                "drop_path_rate": 0.0,
            },
            "image_token_id": Token("<image>"),
        },
        chat_template=None,
        named_tokens={"image_token": "<image>"},
        image_processor={
            "size": {"height": 32, "width": 32},
            "do_center_crop": False,
            "image_seq_length": 17,
        },
    ),
)

# Llama 3.2 Vision (Mllama: tiled ViT + cross-attention layers): the Llama 3 header layout; with an image in the
# conversation the published template writes no system turn (and refuses one).
MLLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    + content("<|image|>")
    + "{{ '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)
register_architecture(
    "mllama",
    TinyArchitecture(
        model_type="mllama",
        config={
            "text_config": {
                **TEXT,
                "num_hidden_layers": 2,
                "cross_attention_layers": [1],
                "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
            },
            # 32 px tiles of 8 px patches, up to 4 tiles; features of layer 0 are concatenated to the last: 2 x 32.
            "vision_config": {
                **VISION,
                "num_global_layers": 1,
                "image_size": 32,
                "patch_size": 8,
                "intermediate_layers_indices": [0],
                "vision_output_dim": 64,
            },
            "image_token_index": Token("<|image|>"),
        },
        chat_template=MLLAMA_CHAT_TEMPLATE,
        special_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|image|>", "<|python_tag|>"),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        add_bos=True,
        stop_tokens=("<|end_of_text|>", "<|eom_id|>"),
        image_processor={"size": {"height": 32, "width": 32}, "max_image_tiles": 4},
        weight_fills={"cross_attn_attn_gate": 1.0, "cross_attn_mlp_gate": 1.0},
    ),
)

# --- Architectures whose processor or vision tower needs one more package (the runner extra and the generic image
# carry them): num2words for SmolVLM2's processor, timm for Gemma 3n's and Perception LM's vision towers.

# SmolVLM2 (SmolVLM classes, the SmolVLM-Instruct layout): `<|im_start|>User:<image>{text}<end_of_utterance>\n
# Assistant:`; its processor refuses to start without num2words (it spells out video frame counts). SmolVLM's entry
# with the smolvlm classes and a video processor.
register_architecture(
    "smolvlm2",
    replace(
        SMOLVLM,
        model_type="smolvlm",
        video_processor={"size": {"longest_edge": 32}, "max_image_size": {"longest_edge": 32}},
    ),
)

# Gemma 3n (MobileNetV5 vision tower from timm + the Gemma 3n LM with AltUp, LAuReL and per-layer embeddings, plus a
# conformer audio tower): the Gemma 3 turn layout, an image written as <image_soft_token> (the processor expands it to
# `\n\n<start_of_image>` + soft tokens + `<end_of_image>\n\n`). Ids past the text vocabulary are embedded by the
# vision embedder (<end_of_image>, <image_soft_token>) and the audio embedder (<end_of_audio>, <audio_soft_token>),
# so those four tokens come last, in that order; vocab_size_per_layer_input is the text vocabulary, i.e. the id of
# <end_of_image>. The vision tower is the published `mobilenetv5_300m_enc`, all 84 blocks, at 1/100 of its channel
# width (timm rounds up to 8-16 channels); its attention head sizes and its 2048-wide output are fixed by the
# architecture, so this checkpoint is about 6 MB. 64 px images, 32x downsampled to 2 x 2: 4 soft tokens (256 real).
GEMMA3N_CHAT_TEMPLATE = GEMMA3_CHAT_TEMPLATE.replace("'<start_of_image>'", "'<image_soft_token>'")
GEMMA3N_NAMED_TOKENS = {
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "image_token": "<image_soft_token>",
    "boa_token": "<start_of_audio>",
    "eoa_token": "<end_of_audio>",
    "audio_token": "<audio_soft_token>",
}
register_architecture(
    "gemma3n",
    TinyArchitecture(
        model_type="gemma3n",
        config={
            "text_config": {
                **TEXT,
                "vocab_size_per_layer_input": Token("<end_of_image>"),
                "hidden_size_per_layer_input": 8,
                "altup_num_inputs": 2,
                "laurel_rank": 4,
                "num_kv_shared_layers": 0,
                "sliding_window": 512,
                "layer_types": ["sliding_attention", "full_attention"],
            },
            "vision_config": {
                "architecture": "mobilenetv5_300m_enc",
                "model_args": {"channel_multiplier": 0.01, "stem_size": 8, "msfa_output_resolution": 2},
                "hidden_size": 2048,
                "vocab_offset": Token("<end_of_image>"),
                "vocab_size": 2,
            },
            "audio_config": {
                "hidden_size": 32,
                "conf_num_attention_heads": 2,
                "conf_num_hidden_layers": 1,
                "sscp_conv_channel_size": [8, 8],
                "vocab_offset": Token("<end_of_audio>"),
                "vocab_size": 2,
            },
            "vision_soft_tokens_per_image": 4,
            "boi_token_id": Token("<start_of_image>"),
            "eoi_token_id": Token("<end_of_image>"),
            "image_token_id": Token("<image_soft_token>"),
            "boa_token_id": Token("<start_of_audio>"),
            "eoa_token_id": Token("<end_of_audio>"),
            "audio_token_id": Token("<audio_soft_token>"),
        },
        chat_template=GEMMA3N_CHAT_TEMPLATE,
        special_tokens=("<start_of_turn>", "<end_of_turn>"),
        appended_tokens=("<end_of_image>", "<image_soft_token>", "<end_of_audio>", "<audio_soft_token>"),
        named_tokens=GEMMA3N_NAMED_TOKENS,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        add_bos=True,
        stop_tokens=("<end_of_turn>",),
        image_processor={"size": {"height": 64, "width": 64}},
        processor={"image_seq_length": 4},
    ),
)

# Perception LM (a Perception Encoder ViT from timm + Llama 3): the Llama 3 header layout with a default system turn;
# the processor cuts the image into tiles (+ a thumbnail) and writes (tile / patch / pooling)^2 <|image|> tokens per
# tile. A PE-core ViT of one block on 28 px tiles of 7 px patches, pooled 2x2: 4 tokens per tile (448 px tiles real).
PERCEPTION_LM_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
PERCEPTION_LM_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set system_message = messages[0]['content'] | trim -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = '" + PERCEPTION_LM_SYSTEM + "' -%}{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{ '<|start_header_id|>system<|end_header_id|>\\n\\n' + system_message + '<|eot_id|>' }}"
    "{%- for message in loop_messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    + content("<|image|>")
    + "{{ '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)
PERCEPTION_LM_TILE = 28
register_architecture(
    "perception-lm",
    TinyArchitecture(
        model_type="perception_lm",
        config={
            "text_config": {"model_type": "llama", **TEXT},
            "vision_config": {
                "model_type": "timm_wrapper",
                "architecture": "vit_pe_core_large_patch14_336",
                "do_pooling": False,
                "model_args": {
                    "embed_dim": 32,
                    "depth": 1,
                    "num_heads": 2,
                    "patch_size": 7,
                    "img_size": [PERCEPTION_LM_TILE, PERCEPTION_LM_TILE],
                    "ref_feat_shape": [4, 4],
                    "global_pool": "",
                    "use_post_transformer_norm": False,
                },
            },
            "projector_pooling_ratio": 2,
            "image_token_id": Token("<|image|>"),
            "video_token_id": Token("<|video|>"),
        },
        chat_template=PERCEPTION_LM_CHAT_TEMPLATE,
        special_tokens=("<|start_header_id|>", "<|end_header_id|>"),
        named_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        add_bos=True,
        stop_tokens=("<|end_of_text|>",),
        image_processor={"tile_size": PERCEPTION_LM_TILE, "max_num_tiles": 4},
        video_processor={"size": {"height": PERCEPTION_LM_TILE, "width": PERCEPTION_LM_TILE}},
        processor={"patch_size": 7, "pooling_ratio": 2},
    ),
)
