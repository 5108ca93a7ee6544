"""Tiny InternVL2 checkpoint in OpenGVLab's published REMOTE-CODE layout, built from a tiny native model.

`build_tiny_internvl2_pair(root)` writes two folders holding the same random weights:

- `root/native`: the tiny native model of runner/tiny/internvl2.py (same sizes and seeds) saved by transformers;
- `root/remote`: that model as OpenGVLab/InternVL2-2B publishes it: config.json with model_type "internvl_chat",
  `llm_config` (InternLM2) and `vision_config` (InternViT) as the published config has them, `auto_map`, weights
  under the remote names with InternLM2's fused `wqkv` and InternViT's fused `qkv` in two safetensors shards, a
  sentencepiece tokenizer.model trained here with InternLM2's special tokens (the six chat tokens are renamed
  placeholder pieces at the end of the sentencepiece vocabulary, the image tokens follow it), and
  tokenizer_config.json as published. No remote Python file is written: that code is not run here.

The remote weights come from the native ones through the inverse of the conversion, written here separately
(`remote_state_dict`), so converting `remote` must give `native`'s weights back exactly. The native folder's
tokenizer is the converted one (its ids are checked against sentencepiece itself, not against this module).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from contract import RANDOM_WEIGHTS_MARKER
from runner.adapters.internvl2 import IMG_CONTEXT, INTERNVL2_SYSTEM_MESSAGE, TURN_END
from runner.convert_internvl2 import fast_tokenizer, read_remote_tokenizer
from runner.tiny.common import _CORPUS, save_tiny
from runner.tiny.internvl2 import (
    TINY_PATCH_SIZE,
    TINY_TILE_SIDE,
    tiny_internvl2_model,
    tiny_internvl2_processor,
)

# InternLM2's chat tokens: sentencepiece placeholder pieces [UNUSED_TOKEN_141..146] renamed in tokenizer_config.json.
INTERNLM2_CHAT_TOKENS = [
    "<|plugin|>",
    "<|interpreter|>",
    "<|action_end|>",
    "<|action_start|>",
    TURN_END,
    "<|im_start|>",
]
# Added after the sentencepiece vocabulary by InternVL2.
INTERNVL2_IMAGE_TOKENS = ["<img>", "</img>", IMG_CONTEXT, "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
INTERNLM2_SPECIAL_ORDER = [
    "<|im_start|>",
    TURN_END,
    "<|action_start|>",
    "<|action_end|>",
    "<|interpreter|>",
    "<|plugin|>",
]


@dataclass(frozen=True)
class SentencePieceSettings:
    """Normalizer settings of the trained model (the converter must follow whatever the real one uses)."""

    add_dummy_prefix: bool = False
    remove_extra_whitespaces: bool = False
    normalization_rule_name: str = "identity"


def train_sentencepiece(settings: SentencePieceSettings = SentencePieceSettings()) -> bytes:
    """A small BPE sentencepiece model with byte fallback, ids 0/1/2 = <unk>/<s>/</s>, and InternLM2's six
    placeholder pieces appended as user-defined pieces (as [UNUSED_TOKEN_141..146] end InternLM2's vocabulary)."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    corpus = [*_CORPUS, INTERNVL2_SYSTEM_MESSAGE, "system\nuser\nassistant\n<image>\n", "  two  spaces  and\ttabs"]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 4),
        model_writer=model,
        model_type="bpe",
        vocab_size=520,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        add_dummy_prefix=settings.add_dummy_prefix,
        remove_extra_whitespaces=settings.remove_extra_whitespaces,
        normalization_rule_name=settings.normalization_rule_name,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    for number in range(141, 147):
        piece = proto.pieces.add()
        piece.piece, piece.score = f"[UNUSED_TOKEN_{number}]", 0.0
        piece.type = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    return proto.SerializeToString()


def remote_tokenizer_config(piece_count: int) -> dict[str, Any]:
    """tokenizer_config.json as InternVL2-2B publishes it (InternLM2Tokenizer, remote code)."""

    def added(content: str) -> dict[str, Any]:
        return {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }

    decoder = {str(index): added(content) for index, content in enumerate(["<unk>", "<s>", "</s>"])}
    first_chat = piece_count - len(INTERNLM2_CHAT_TOKENS)
    decoder |= {str(first_chat + i): added(content) for i, content in enumerate(INTERNLM2_CHAT_TOKENS)}
    decoder |= {str(piece_count + i): added(content) for i, content in enumerate(INTERNVL2_IMAGE_TOKENS)}
    return {
        "added_tokens_decoder": decoder,
        "additional_special_tokens": INTERNLM2_SPECIAL_ORDER + INTERNVL2_IMAGE_TOKENS,
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>",
        "chat_template": (
            "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
            "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
            "{{ '<|im_start|>assistant\\n' }}{% endif %}"
        ),
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "</s>",
        "tokenizer_class": "InternLM2Tokenizer",
        "unk_token": "<unk>",
    }


def remote_config(native: Any) -> dict[str, Any]:
    """config.json in the published layout, with the tiny native model's sizes and ids."""
    text, vision = native.text_config, native.vision_config
    rope = text.rope_parameters
    dtype = "float32"
    return {
        "_commit_hash": None,
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
        },
        "downsample_ratio": native.downsample_ratio,
        "dynamic_image_size": True,
        "force_image_size": TINY_TILE_SIDE,
        "llm_config": {
            "_name_or_path": "internlm/internlm2-chat-1_8b",
            "architectures": ["InternLM2ForCausalLM"],
            "attn_implementation": "eager",
            "auto_map": {
                "AutoConfig": "configuration_internlm2.InternLM2Config",
                "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
            },
            "bias": False,
            "bos_token_id": text.bos_token_id,
            "eos_token_id": text.eos_token_id,
            "hidden_act": "silu",
            "hidden_size": text.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": text.intermediate_size,
            "max_position_embeddings": text.max_position_embeddings,
            "model_type": "internlm2",
            "num_attention_heads": text.num_attention_heads,
            "num_hidden_layers": text.num_hidden_layers,
            "num_key_value_heads": text.num_key_value_heads,
            "pad_token_id": text.pad_token_id,
            "pretraining_tp": 1,
            "rms_norm_eps": text.rms_norm_eps,
            "rope_scaling": {"factor": rope["factor"], "type": rope["rope_type"]},
            "rope_theta": rope["rope_theta"],
            "tie_word_embeddings": False,
            "torch_dtype": dtype,
            "transformers_version": "4.37.2",
            "use_bfloat16": False,
            "use_cache": True,
            "vocab_size": text.vocab_size,
        },
        "max_dynamic_patch": 12,
        "min_dynamic_patch": 1,
        "model_type": "internvl_chat",
        "ps_version": "v2",
        "select_layer": -1,
        "template": "internlm2-chat",
        "torch_dtype": dtype,
        "transformers_version": None,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_thumbnail": True,
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "attention_dropout": 0.0,
            "drop_path_rate": 0.0,
            "dropout": 0.0,
            "hidden_act": "gelu",
            "hidden_size": vision.hidden_size,
            "image_size": TINY_TILE_SIDE,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": vision.intermediate_size,
            "layer_norm_eps": vision.layer_norm_eps,
            "model_type": "intern_vit_6b",
            "norm_type": "layer_norm",
            "num_attention_heads": vision.num_attention_heads,
            "num_channels": 3,
            "num_hidden_layers": vision.num_hidden_layers,
            "patch_size": TINY_PATCH_SIZE,
            "qk_normalization": False,
            "qkv_bias": True,
            "torch_dtype": dtype,
            "transformers_version": "4.37.2",
            "use_bfloat16": False,
            "use_flash_attn": False,
        },
    }


def fuse_internlm2_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """InternLM2's fused rows: for each key-value head h, the query heads h*g .. h*g+g-1, then k_h, then v_h."""
    head_dim = k.shape[0] // kv_heads
    groups = q.shape[0] // (kv_heads * head_dim)
    rows = []
    for head in range(kv_heads):
        for query in range(groups):
            start = (head * groups + query) * head_dim
            rows.append(q[start : start + head_dim])
        rows.append(k[head * head_dim : (head + 1) * head_dim])
        rows.append(v[head * head_dim : (head + 1) * head_dim])
    return torch.cat(rows)


# native name (as saved) -> remote name, for the tensors that are only renamed.
_INVERSE_RENAMES = {
    "vision_tower.embeddings.cls_token": "vision_model.embeddings.class_embedding",
    "vision_tower.embeddings.position_embeddings": "vision_model.embeddings.position_embedding",
    "vision_tower.embeddings.patch_embeddings.projection.weight": "vision_model.embeddings.patch_embedding.weight",
    "vision_tower.embeddings.patch_embeddings.projection.bias": "vision_model.embeddings.patch_embedding.bias",
    "multi_modal_projector.layer_norm.weight": "mlp1.0.weight",
    "multi_modal_projector.layer_norm.bias": "mlp1.0.bias",
    "multi_modal_projector.linear_1.weight": "mlp1.1.weight",
    "multi_modal_projector.linear_1.bias": "mlp1.1.bias",
    "multi_modal_projector.linear_2.weight": "mlp1.3.weight",
    "multi_modal_projector.linear_2.bias": "mlp1.3.bias",
    "language_model.model.embed_tokens.weight": "language_model.model.tok_embeddings.weight",
    "language_model.model.norm.weight": "language_model.model.norm.weight",
    "language_model.lm_head.weight": "language_model.output.weight",
}
_INVERSE_VISION_LAYER = {
    "attention.projection_layer.weight": "attn.proj.weight",
    "attention.projection_layer.bias": "attn.proj.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "layernorm_before.weight": "norm1.weight",
    "layernorm_before.bias": "norm1.bias",
    "layernorm_after.weight": "norm2.weight",
    "layernorm_after.bias": "norm2.bias",
    "lambda_1": "ls1",
    "lambda_2": "ls2",
}
_INVERSE_TEXT_LAYER = {
    "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def remote_state_dict(native: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """The native tensors under InternVLChatModel's names, q/k/v fused the way InternLM2 and InternViT store them."""
    remote: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        used.add(name)
        return native[name]

    for name, remote_name in _INVERSE_RENAMES.items():
        remote[remote_name] = take(name)
    for layer in range(config.vision_config.num_hidden_layers):
        ours, theirs = f"vision_tower.encoder.layer.{layer}.", f"vision_model.encoder.layers.{layer}."
        for suffix, remote_suffix in _INVERSE_VISION_LAYER.items():
            remote[theirs + remote_suffix] = take(ours + suffix)
        for kind in ("weight", "bias"):
            remote[f"{theirs}attn.qkv.{kind}"] = torch.cat([take(f"{ours}attention.{p}_proj.{kind}") for p in "qkv"])
    kv_heads = config.text_config.num_key_value_heads
    for layer in range(config.text_config.num_hidden_layers):
        ours = theirs = f"language_model.model.layers.{layer}."
        for suffix, remote_suffix in _INVERSE_TEXT_LAYER.items():
            remote[theirs + remote_suffix] = take(ours + suffix)
        q, k, v = (take(f"{ours}self_attn.{p}_proj.weight") for p in "qkv")
        remote[f"{theirs}attention.wqkv.weight"] = fuse_internlm2_wqkv(q, k, v, kv_heads)
    if set(native) != used:
        raise ValueError(f"native tensors with no remote name: {sorted(set(native) - used)}")
    return {name: tensor.contiguous().clone() for name, tensor in remote.items()}


def save_remote_weights(remote: dict[str, torch.Tensor], folder: Path) -> None:
    """Two shards and an index, as multi-file Hub checkpoints are laid out (vision + projector, language model)."""
    from safetensors.torch import save_file

    shards = {
        "model-00001-of-00002.safetensors": {k: v for k, v in remote.items() if not k.startswith("language_model.")},
        "model-00002-of-00002.safetensors": {k: v for k, v in remote.items() if k.startswith("language_model.")},
    }
    weight_map = {}
    for file_name, tensors in shards.items():
        save_file(tensors, str(folder / file_name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(tensors, file_name)
    total = sum(tensor.numel() * tensor.element_size() for tensor in remote.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class TinyPair:
    remote: Path
    native: Path


def build_tiny_internvl2_pair(root: Path, settings: SentencePieceSettings = SentencePieceSettings()) -> TinyPair:
    """Write root/remote (published layout) and root/native (the same model, transformers-native)."""
    from safetensors.torch import load_file

    remote_dir, native_dir = root / "remote", root / "native"
    remote_dir.mkdir(parents=True, exist_ok=True)
    model_proto = train_sentencepiece(settings)
    (remote_dir / "tokenizer.model").write_bytes(model_proto)
    piece_count = _piece_count(model_proto)
    tokenizer_config = remote_tokenizer_config(piece_count)
    (remote_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}
    special["additional_special_tokens"] = tokenizer_config["additional_special_tokens"]
    (remote_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")

    tokenizer = fast_tokenizer(read_remote_tokenizer(remote_dir))
    # The published vocab_size counts the sentencepiece pieces and InternVL2's added tokens, not the appended <video>.
    model = tiny_internvl2_model(tokenizer, pad_token="</s>", vocab_size=piece_count + len(INTERNVL2_IMAGE_TOKENS))
    save_tiny(model, tiny_internvl2_processor(tokenizer), native_dir)

    native = load_file(str(native_dir / "model.safetensors"))
    save_remote_weights(remote_state_dict(native, model.config), remote_dir)
    (remote_dir / "config.json").write_text(json.dumps(remote_config(model.config), indent=2) + "\n")
    marker = {"random_weights": True, "built_by": "runner.tiny.internvl2_remote", "class": "InternVLChatModel"}
    (remote_dir / RANDOM_WEIGHTS_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return TinyPair(remote=remote_dir, native=native_dir)


def _piece_count(model_proto: bytes) -> int:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    return len(proto.pieces)
