"""Convert OpenGVLab's remote-code InternVL2 checkpoint into transformers' native InternVL layout.

The published OpenGVLab/InternVL2-2B (config.json model_type "internvl_chat") runs only with its own code on
transformers 4.46.x. Its parts map onto native transformers >= 5 classes: the InternLM2 language model is a Llama
model whose q/k/v projections are fused into one `wqkv` matrix, the InternViT tower is InternVLVisionModel with a
fused `qkv`, and the `mlp1` projector is InternVLMultiModalProjector. `convert(remote_dir, out_dir)` writes a folder
that `InternVLForConditionalGeneration.from_pretrained` and `AutoProcessor.from_pretrained` load:

- weights, renamed, with `wqkv` and `qkv` split (streamed tensor by tensor into shards of at most 1 GiB, so memory
  stays near one shard however big the checkpoint is);
- config.json: a Llama text config, an InternVL vision config, the image token, downsample ratio, feature layer;
- the sentencepiece tokenizer as a fast tokenizer with the same ids, checked against sentencepiece itself on the
  prompts the runner builds (needs the `sentencepiece` and `protobuf` packages);
- an InternVLProcessor with InternVL2's dynamic tiling (tiles of force_image_size px, at most max_dynamic_patch,
  plus a thumbnail, ImageNet mean/std) and a chat template rendering exactly the remote code's `internlm2-chat`
  prompt (checked at conversion time);
- generation_config.json stopping at `<|im_end|>`, as the remote chat() does;
- conversion.json: source id and commit, converter version, sha256 of every source file.

Everything is checked from metadata (config, tokenizer, tensor names and shapes) before any weight is written.
Only the layout InternVL2-2B uses is accepted (InternLM2 + InternViT with LayerNorm, no qk-norm, pixel shuffle
v2, last vision layer, `internlm2-chat` template); anything else is refused with the value that differs.

`convert_into_cache` / `find_converted` keep one converted folder per model id and commit under
$HF_HOME/vlm-ablation-converted/ (what the fetch step writes and the runner reads).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from contract import RANDOM_WEIGHTS_MARKER, file_sha256
from runner.adapters.internvl2 import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    IMG_CONTEXT,
    INTERNVL2_CHAT_TEMPLATE,
    INTERNVL_NAMED_TOKENS,
    NATIVE_MODEL_TYPE,
    REMOTE_MODEL_TYPE,
    TURN_END,
    expand_image_placeholder,
    internvl2_chat_prompt,
    internvl2_native_prompt,
)

# Bump when the output of convert() changes: folders converted by another version are converted again.
CONVERTER_VERSION = 1
CONVERSION_RECORD = "conversion.json"
CONVERTED_CACHE_DIR = "vlm-ablation-converted"
# Peak memory of a conversion is about 0.2 GB plus 1.5 output shards (measured on a 0.5 GB checkpoint).
MAX_SHARD_BYTES = 1024**3
SUPPORTED_TEMPLATE = "internlm2-chat"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


class ConversionError(ValueError):
    """The folder is not a remote-code InternVL2 checkpoint this converter handles; the message says why."""


# --- formats ------------------------------------------------------------------------------------------------


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ConversionError(f"{folder}: no config.json, so this is not a checkpoint folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConversionError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def checkpoint_format(folder: Path) -> str:
    """ "remote" (OpenGVLab remote code, model_type internvl_chat) or "native" (transformers, internvl)."""
    model_type = read_config(folder).get("model_type")
    if model_type == REMOTE_MODEL_TYPE:
        return "remote"
    if model_type == NATIVE_MODEL_TYPE:
        return "native"
    raise ConversionError(
        f"{folder / 'config.json'}: model_type is {model_type!r}; an InternVL2 checkpoint has "
        f"{REMOTE_MODEL_TYPE!r} (OpenGVLab remote code) or {NATIVE_MODEL_TYPE!r} (transformers-native)"
    )


def _require(config: dict[str, Any], key: str, where: str) -> Any:
    if key not in config:
        raise ConversionError(f"{where}: missing {key!r}")
    return config[key]


def _expect(value: Any, expected: Any, what: str) -> None:
    if value != expected:
        raise ConversionError(f"{what} is {value!r}; this converter handles only {expected!r} (InternVL2-2B's layout)")


@dataclass(frozen=True)
class Geometry:
    """The sizes the weight layout depends on, read from the remote config.json."""

    text_hidden: int
    num_heads: int
    num_kv_heads: int
    vision_hidden: int
    vision_heads: int

    @property
    def head_dim(self) -> int:
        return self.text_hidden // self.num_heads

    @property
    def queries_per_kv_head(self) -> int:
        return self.num_heads // self.num_kv_heads


def check_remote_config(config: dict[str, Any], where: str) -> Geometry:
    """Refuse anything but the InternVL2 layout this converter reproduces exactly (before reading any weight)."""
    _expect(config.get("model_type"), REMOTE_MODEL_TYPE, f"{where}: model_type")
    llm = _require(config, "llm_config", where)
    vit = _require(config, "vision_config", where)
    _expect(llm.get("model_type"), "internlm2", f"{where}: llm_config.model_type")
    _expect(vit.get("model_type"), "intern_vit_6b", f"{where}: vision_config.model_type")
    # Read explicitly, not defaulted: the remote config classes' defaults are those of other InternVL models.
    _expect(_require(config, "template", where), SUPPORTED_TEMPLATE, f"{where}: template")
    _expect(_require(config, "ps_version", where), "v2", f"{where}: ps_version (pixel shuffle)")
    _expect(_require(config, "select_layer", where), -1, f"{where}: select_layer")
    vision_where = f"{where}: vision_config"
    _expect(_require(vit, "norm_type", vision_where), "layer_norm", f"{where}: vision_config.norm_type")
    _expect(_require(vit, "qk_normalization", vision_where), False, f"{where}: vision_config.qk_normalization")
    _require(vit, "qkv_bias", vision_where)
    _expect(llm.get("hidden_act", "silu"), "silu", f"{where}: llm_config.hidden_act")
    _expect(vit.get("hidden_act", "gelu"), "gelu", f"{where}: vision_config.hidden_act")
    for key in ("use_backbone_lora", "use_llm_lora"):
        _expect(int(config.get(key, 0) or 0), 0, f"{where}: {key}")
    if config.get("dynamic_image_size", True):
        _expect(bool(config.get("use_thumbnail", False)), True, f"{where}: use_thumbnail (with dynamic tiling)")
    side = int(config.get("force_image_size") or _require(vit, "image_size", f"{where}: vision_config"))
    _expect(side, int(vit.get("image_size", side)), f"{where}: force_image_size vs vision_config.image_size")
    ratio = float(_require(config, "downsample_ratio", where))
    if not (0 < ratio <= 1 and (1 / ratio).is_integer()):
        raise ConversionError(f"{where}: downsample_ratio {ratio} is not 1/n for a whole n")
    scaling = llm.get("rope_scaling")
    if scaling and (scaling.get("type") or scaling.get("rope_type")) not in ("dynamic", "linear"):
        raise ConversionError(f"{where}: llm_config.rope_scaling {scaling!r}: only dynamic or linear are mapped")
    geometry = Geometry(
        text_hidden=int(_require(llm, "hidden_size", f"{where}: llm_config")),
        num_heads=int(_require(llm, "num_attention_heads", f"{where}: llm_config")),
        num_kv_heads=int(llm.get("num_key_value_heads") or llm["num_attention_heads"]),
        vision_hidden=int(_require(vit, "hidden_size", f"{where}: vision_config")),
        vision_heads=int(_require(vit, "num_attention_heads", f"{where}: vision_config")),
    )
    if geometry.text_hidden % geometry.num_heads or geometry.num_heads % geometry.num_kv_heads:
        raise ConversionError(f"{where}: llm_config heads {geometry.num_heads}/{geometry.num_kv_heads} do not divide")
    return geometry


def tokens_per_tile(config: dict[str, Any]) -> int:
    """num_image_token of the remote model: (side / patch)^2 patches, pixel-shuffled by downsample_ratio^2."""
    vit = config["vision_config"]
    side = int(config.get("force_image_size") or vit["image_size"])
    return int((side // int(vit["patch_size"])) ** 2 * float(config["downsample_ratio"]) ** 2)


# --- weights: names and fused projections ---------------------------------------------------------------------

# remote name -> native name as save_pretrained writes it (transformers maps these onto its modules when loading).
_VISION = r"vision_model\.encoder\.layers\.(\d+)\."
_TEXT = r"language_model\.model\.layers\.(\d+)\."
RENAMES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"vision_model\.embeddings\.class_embedding", "vision_tower.embeddings.cls_token"),
        (r"vision_model\.embeddings\.position_embedding", "vision_tower.embeddings.position_embeddings"),
        (
            r"vision_model\.embeddings\.patch_embedding\.(weight|bias)",
            r"vision_tower.embeddings.patch_embeddings.projection.\1",
        ),
        (_VISION + r"attn\.proj\.(weight|bias)", r"vision_tower.encoder.layer.\1.attention.projection_layer.\2"),
        (_VISION + r"mlp\.(fc1|fc2)\.(weight|bias)", r"vision_tower.encoder.layer.\1.mlp.\2.\3"),
        (_VISION + r"norm1\.(weight|bias)", r"vision_tower.encoder.layer.\1.layernorm_before.\2"),
        (_VISION + r"norm2\.(weight|bias)", r"vision_tower.encoder.layer.\1.layernorm_after.\2"),
        (_VISION + r"ls1", r"vision_tower.encoder.layer.\1.lambda_1"),
        (_VISION + r"ls2", r"vision_tower.encoder.layer.\1.lambda_2"),
        (r"mlp1\.0\.(weight|bias)", r"multi_modal_projector.layer_norm.\1"),
        (r"mlp1\.1\.(weight|bias)", r"multi_modal_projector.linear_1.\1"),
        (r"mlp1\.3\.(weight|bias)", r"multi_modal_projector.linear_2.\1"),
        (r"language_model\.model\.tok_embeddings\.weight", "language_model.model.embed_tokens.weight"),
        (r"language_model\.model\.norm\.weight", "language_model.model.norm.weight"),
        (r"language_model\.output\.weight", "language_model.lm_head.weight"),
        (_TEXT + r"attention\.wo\.(weight|bias)", r"language_model.model.layers.\1.self_attn.o_proj.\2"),
        (_TEXT + r"feed_forward\.w1\.weight", r"language_model.model.layers.\1.mlp.gate_proj.weight"),
        (_TEXT + r"feed_forward\.w3\.weight", r"language_model.model.layers.\1.mlp.up_proj.weight"),
        (_TEXT + r"feed_forward\.w2\.weight", r"language_model.model.layers.\1.mlp.down_proj.weight"),
        (_TEXT + r"attention_norm\.weight", r"language_model.model.layers.\1.input_layernorm.weight"),
        (_TEXT + r"ffn_norm\.weight", r"language_model.model.layers.\1.post_attention_layernorm.weight"),
    )
]
VISION_QKV = re.compile(_VISION + r"attn\.qkv\.(weight|bias)")
# Recomputed from the config by both models; older InternLM2 checkpoints may store it.
DERIVED_BUFFER = re.compile(_TEXT + r"attention\.rotary_emb\.inv_freq")
TEXT_WQKV = re.compile(_TEXT + r"attention\.wqkv\.(weight|bias)")


def split_internlm2_wqkv(fused: torch.Tensor, geometry: Geometry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InternLM2's `wqkv` rows are grouped per key-value head: its query heads, then its key, then its value
    (head_dim rows each). Returns Llama's q (heads x head_dim), k and v (kv_heads x head_dim) rows, in head order."""
    groups, head_dim, kv_heads = geometry.queries_per_kv_head, geometry.head_dim, geometry.num_kv_heads
    rows = (groups + 2) * kv_heads * head_dim
    if fused.shape[0] != rows:
        raise ConversionError(f"wqkv has {fused.shape[0]} rows; the config's heads need {rows}")
    blocks = fused.reshape(kv_heads, groups + 2, head_dim, *fused.shape[1:])
    rest = fused.shape[1:]
    query = blocks[:, :groups].reshape(kv_heads * groups * head_dim, *rest)
    key = blocks[:, groups].reshape(kv_heads * head_dim, *rest)
    value = blocks[:, groups + 1].reshape(kv_heads * head_dim, *rest)
    return query, key, value


def split_vit_qkv(fused: torch.Tensor, geometry: Geometry) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InternViT's `qkv` rows are all queries, then all keys, then all values."""
    if fused.shape[0] != 3 * geometry.vision_hidden:
        raise ConversionError(f"vision qkv has {fused.shape[0]} rows, expected 3 x {geometry.vision_hidden}")
    query, key, value = fused.chunk(3, dim=0)
    return query, key, value


@dataclass(frozen=True)
class TargetTensor:
    name: str
    source_file: Path
    source_name: str
    part: int | None  # which of q/k/v (0/1/2) for a fused source tensor; None for a plain rename
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


def native_names(remote_name: str) -> list[str] | None:
    """Native name(s) of a remote tensor: three for a fused qkv (q, k, v), one otherwise, None if unknown."""
    for fused in (VISION_QKV, TEXT_WQKV):
        match = fused.fullmatch(remote_name)
        if match:
            layer, kind = match.groups()
            stem = (
                f"vision_tower.encoder.layer.{layer}.attention"
                if fused is VISION_QKV
                else f"language_model.model.layers.{layer}.self_attn"
            )
            return [f"{stem}.{part}_proj.{kind}" for part in ("q", "k", "v")]
    for pattern, replacement in RENAMES:
        if pattern.fullmatch(remote_name):
            return [pattern.sub(replacement, remote_name)]
    return None


def weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        names = list(dict.fromkeys(weight_map.values()))
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise ConversionError(f"{index}: shards {missing} are not in the folder")
        return [folder / name for name in names]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    present = sorted(p.name for p in folder.iterdir())
    raise ConversionError(
        f"{folder}: no safetensors weights (model.safetensors or model.safetensors.index.json); found {present}"
    )


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


# A header: tensor name -> (shape, safetensors dtype name), per weight file.
Headers = dict[Path, dict[str, tuple[tuple[int, ...], str]]]


def read_headers(folder: Path) -> Headers:
    """Tensor names, shapes and dtypes of every weight file (safetensors headers only; no tensor data is read)."""
    from safetensors import safe_open

    headers: Headers = {}
    for path in weight_files(folder):
        with safe_open(str(path), framework="pt") as handle:
            headers[path] = {
                name: (tuple(handle.get_slice(name).get_shape()), handle.get_slice(name).get_dtype())
                for name in handle.keys()  # noqa: SIM118  (safe_open has keys(), not iteration)
            }
    return headers


def plan_weights(headers: Headers, geometry: Geometry, where: Path | str) -> list[TargetTensor]:
    """Every native tensor to write, with its source tensor and shape."""
    targets: list[TargetTensor] = []
    unknown: list[str] = []
    for path, tensors in headers.items():
        for name, (shape, dtype_name) in tensors.items():
            if DERIVED_BUFFER.fullmatch(name):
                continue
            if dtype_name not in _DTYPES:
                raise ConversionError(f"{path}: tensor {name} has dtype {dtype_name}, expected F32/F16/BF16")
            names = native_names(name)
            if names is None:
                unknown.append(name)
                continue
            if len(names) == 1:
                targets.append(TargetTensor(names[0], path, name, None, shape, _DTYPES[dtype_name]))
                continue
            splitter = split_vit_qkv if name.startswith("vision_model") else split_internlm2_wqkv
            parts = splitter(torch.empty(shape, device="meta"), geometry)
            targets += [
                TargetTensor(target, path, name, index, tuple(part.shape), _DTYPES[dtype_name])
                for index, (target, part) in enumerate(zip(names, parts, strict=True))
            ]
    if unknown:
        raise ConversionError(f"{where}: tensors this converter does not know: {unknown[:10]} ({len(unknown)} in all)")
    return targets


def saved_name(module_name: str) -> str:
    """In-memory parameter name of InternVLForConditionalGeneration -> the name its save_pretrained writes."""
    for prefix, replacement in (
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.vision_tower.", "vision_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
    ):
        if module_name.startswith(prefix):
            return replacement + module_name[len(prefix) :]
    return module_name


def check_against_native_model(targets: list[TargetTensor], config: Any, where: Path) -> None:
    """The planned tensors must be exactly the native model's parameters, with the same shapes."""
    from transformers import InternVLForConditionalGeneration

    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    expected = {saved_name(name): tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    planned = {target.name: target.shape for target in targets}
    missing = sorted(set(expected) - set(planned))
    extra = sorted(set(planned) - set(expected))
    wrong = sorted(name for name in set(expected) & set(planned) if expected[name] != planned[name])
    if missing or extra or wrong:
        details = {
            "missing": missing[:8],
            "unexpected": extra[:8],
            "shape": [(name, planned[name], expected[name]) for name in wrong[:8]],
        }
        raise ConversionError(f"{where}: weights do not match the native InternVL model of its config: {details}")


def _shards(targets: list[TargetTensor], max_bytes: int) -> list[list[TargetTensor]]:
    shards: list[list[TargetTensor]] = [[]]
    size = 0
    for target in targets:
        if shards[-1] and size + target.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(target)
        size += target.nbytes
    return shards


def write_weights(targets: list[TargetTensor], geometry: Geometry, out_dir: Path, max_shard_bytes: int) -> None:
    """Shard by shard: only one output shard's tensors are in memory at a time, and the source files are opened
    (memory-mapped) for that shard only, so their pages leave the process with it."""
    from contextlib import ExitStack

    from safetensors import safe_open
    from safetensors.torch import save_file

    shards = _shards(targets, max_shard_bytes)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    )
    weight_map: dict[str, str] = {}
    for shard, file_name in zip(shards, names, strict=True):
        tensors: dict[str, torch.Tensor] = {}
        with ExitStack() as stack:
            handles = {
                path: stack.enter_context(safe_open(str(path), framework="pt"))
                for path in dict.fromkeys(target.source_file for target in shard)
            }
            fused_parts: dict[tuple[Path, str], tuple[torch.Tensor, ...]] = {}
            for target in shard:
                handle = handles[target.source_file]
                if target.part is None:
                    tensors[target.name] = handle.get_tensor(target.source_name)
                    continue
                key = (target.source_file, target.source_name)
                if key not in fused_parts:
                    fused = handle.get_tensor(target.source_name)
                    vision = target.source_name.startswith("vision_model")
                    fused_parts[key] = (split_vit_qkv if vision else split_internlm2_wqkv)(fused, geometry)
                # Own storage: safetensors refuses tensors sharing memory (the three parts of one fused tensor).
                tensors[target.name] = fused_parts[key][target.part].contiguous().clone()
            del fused_parts
        weight_map |= dict.fromkeys(tensors, file_name)
        save_file(tensors, str(out_dir / file_name), metadata={"format": "pt"})
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in targets)}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


# --- config, tokenizer, processor --------------------------------------------------------------------------


def native_config(remote: dict[str, Any], *, image_token_id: int) -> Any:
    """InternVLConfig with a Llama text config equal to the InternLM2 one (InternLM2 = Llama with fused qkv)."""
    from transformers import InternVLConfig, InternVLVisionConfig, LlamaConfig

    llm, vit = remote["llm_config"], remote["vision_config"]
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(llm.get("rope_theta", 10000.0))}
    scaling = llm.get("rope_scaling")
    if scaling:
        rope.update(rope_type=scaling.get("type") or scaling.get("rope_type"), factor=float(scaling["factor"]))
    dtype = remote.get("torch_dtype") or llm.get("torch_dtype") or "float32"
    text = LlamaConfig(
        vocab_size=int(llm["vocab_size"]),
        hidden_size=int(llm["hidden_size"]),
        intermediate_size=int(llm["intermediate_size"]),
        num_hidden_layers=int(llm["num_hidden_layers"]),
        num_attention_heads=int(llm["num_attention_heads"]),
        num_key_value_heads=int(llm.get("num_key_value_heads") or llm["num_attention_heads"]),
        head_dim=int(llm["hidden_size"]) // int(llm["num_attention_heads"]),
        hidden_act="silu",
        max_position_embeddings=int(llm["max_position_embeddings"]),
        rms_norm_eps=float(llm.get("rms_norm_eps", 1e-6)),
        rope_parameters=rope,
        attention_bias=bool(llm.get("bias", False)),  # InternLM2's `bias` covers wqkv and wo, as Llama's does q/k/v/o
        mlp_bias=False,
        bos_token_id=llm.get("bos_token_id"),
        eos_token_id=llm.get("eos_token_id"),
        pad_token_id=llm.get("pad_token_id"),
        tie_word_embeddings=bool(llm.get("tie_word_embeddings", False)),
        initializer_range=float(llm.get("initializer_range", 0.02)),
    )
    vision = InternVLVisionConfig(
        hidden_size=int(vit["hidden_size"]),
        intermediate_size=int(vit["intermediate_size"]),
        num_hidden_layers=int(vit["num_hidden_layers"]),
        num_attention_heads=int(vit["num_attention_heads"]),
        num_channels=int(vit.get("num_channels", 3)),
        image_size=int(vit["image_size"]),
        patch_size=int(vit["patch_size"]),
        hidden_act="gelu",
        layer_norm_eps=float(vit.get("layer_norm_eps", 1e-6)),
        norm_type="layer_norm",
        attention_bias=bool(vit["qkv_bias"]),
        use_qk_norm=False,
        use_absolute_position_embeddings=True,
        use_mean_pooling=True,  # InternViT has no final LayerNorm: the last layer's output goes to the projector
        use_mask_token=False,
        attention_dropout=0.0,
        projection_dropout=0.0,
        hidden_dropout_prob=0.0,
        initializer_range=float(vit.get("initializer_range", 0.02)),
    )
    config = InternVLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=image_token_id,
        image_seq_length=tokens_per_tile(remote),
        downsample_ratio=float(remote["downsample_ratio"]),
        projector_hidden_act="gelu",  # mlp1's nn.GELU() (exact)
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",  # drop the CLS token, as extract_feature does
        tie_word_embeddings=text.tie_word_embeddings,
        dtype=dtype,
    )
    config.architectures = ["InternVLForConditionalGeneration"]
    return config


@dataclass(frozen=True)
class RemoteTokenizer:
    """What InternLM2Tokenizer is made of: a sentencepiece model plus the added tokens of tokenizer_config.json."""

    model_path: Path
    added: dict[int, dict[str, Any]]  # id -> AddedToken fields (content, lstrip, rstrip, normalized, special)
    bos_token: str
    eos_token: str
    unk_token: str
    pad_token: str
    add_bos: bool

    def token_id(self, content: str) -> int:
        for token_id, token in self.added.items():
            if token["content"] == content:
                return token_id
        raise ConversionError(f"{self.model_path.parent / 'tokenizer_config.json'}: no added token {content!r}")


def read_remote_tokenizer(folder: Path) -> RemoteTokenizer:
    model_path, config_path = folder / "tokenizer.model", folder / "tokenizer_config.json"
    for path in (model_path, config_path):
        if not path.is_file():
            raise ConversionError(f"{folder}: no {path.name} (InternLM2's sentencepiece tokenizer)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    decoder = config.get("added_tokens_decoder") or {}
    added = {int(token_id): dict(token) for token_id, token in decoder.items()}

    def text(value: Any, default: str) -> str:
        return str(value.get("content") if isinstance(value, dict) else value or default)

    tokenizer = RemoteTokenizer(
        model_path=model_path,
        added=added,
        bos_token=text(config.get("bos_token"), "<s>"),
        eos_token=text(config.get("eos_token"), "</s>"),
        unk_token=text(config.get("unk_token"), "<unk>"),
        pad_token=text(config.get("pad_token"), "</s>"),
        add_bos=bool(config.get("add_bos_token", True)),  # InternLM2Tokenizer's default
    )
    for content in (TURN_END, IMG_CONTEXT, *INTERNVL_NAMED_TOKENS.values()):
        if content != INTERNVL_NAMED_TOKENS["video_token"]:
            tokenizer.token_id(content)
    return tokenizer


def fast_tokenizer(remote: RemoteTokenizer) -> Any:
    """The sentencepiece model as a `tokenizers` tokenizer with the same ids.

    InternLM2Tokenizer splits text at its added tokens and sentencepiece-encodes each piece in between on its own;
    transformers' SpmConverter reproduces sentencepiece's normalizer, dummy prefix (per piece, `legacy`) and BPE.
    Added tokens keep their ids: those inside the sentencepiece vocabulary rename their piece (`[UNUSED_TOKEN_145]`
    is `<|im_end|>`), the others follow it in id order. `<video>` is appended (InternVLProcessor needs the attribute;
    InternVL2 has no video token and no prompt here contains it).
    """
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor, SpmConverter

    proto = SentencePieceExtractor(str(remote.model_path)).proto
    piece_count = len(proto.pieces)
    vocab = {
        (remote.added[index]["content"] if index in remote.added else piece.piece): index
        for index, piece in enumerate(proto.pieces)
    }
    if len(vocab) != piece_count:
        raise ConversionError(f"{remote.model_path}: added token names collide with sentencepiece pieces")
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    if backend is None:
        raise ConversionError(
            f"{remote.model_path}: sentencepiece model type {proto.trainer_spec.model_type} unsupported"
        )
    for token_id in sorted(remote.added):
        token = remote.added[token_id]
        backend.add_special_tokens(
            [
                AddedToken(
                    token["content"],
                    lstrip=bool(token.get("lstrip", False)),
                    rstrip=bool(token.get("rstrip", False)),
                    single_word=bool(token.get("single_word", False)),
                    normalized=False,
                    special=True,
                )
            ]
        )
        if backend.token_to_id(token["content"]) != token_id:
            raise ConversionError(
                f"added token {token['content']!r} got id {backend.token_to_id(token['content'])}, not {token_id} "
                "(tokenizer_config.json ids must follow the sentencepiece vocabulary without gaps)"
            )
    bos_id = backend.token_to_id(remote.bos_token)
    if remote.add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{remote.bos_token} $A",
            pair=f"{remote.bos_token} $A $B",
            special_tokens=[(remote.bos_token, bos_id)],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=remote.bos_token,
        eos_token=remote.eos_token,
        unk_token=remote.unk_token,
        pad_token=remote.pad_token,
        extra_special_tokens=dict(INTERNVL_NAMED_TOKENS),
        clean_up_tokenization_spaces=False,
    )


def sentencepiece_ids(remote: RemoteTokenizer, processor: Any, text: str) -> list[int]:
    """The ids InternLM2Tokenizer gives: BOS, then added tokens as themselves and the text between them
    sentencepiece-encoded piece by piece (what its `_tokenize` does for each piece the added-token split leaves)."""
    by_content = {token["content"]: token_id for token_id, token in remote.added.items()}
    pattern = re.compile("|".join(re.escape(content) for content in sorted(by_content, key=len, reverse=True)))
    ids = [by_content[remote.bos_token]] if remote.add_bos else []
    position = 0
    for match in pattern.finditer(text):
        if match.start() > position:
            ids += processor.encode(text[position : match.start()])
        ids.append(by_content[match.group()])
        position = match.end()
    if position < len(text):
        ids += processor.encode(text[position:])
    return ids


def check_tokenizer(remote: RemoteTokenizer, tokenizer: Any, texts: list[str]) -> None:
    """The fast tokenizer must give sentencepiece's ids for each text (the runner's prompts among them)."""
    try:
        import sentencepiece
    except ImportError:
        raise ConversionError(
            "converting InternVL2's tokenizer is checked against sentencepiece: pip install sentencepiece protobuf"
        ) from None
    processor = sentencepiece.SentencePieceProcessor(model_file=str(remote.model_path))
    for text in texts:
        expected = sentencepiece_ids(remote, processor, text)
        got = tokenizer(text)["input_ids"]
        if got != expected:
            raise ConversionError(
                f"{remote.model_path}: the converted tokenizer differs from sentencepiece for {text[:80]!r}: "
                f"{got[:24]} vs {expected[:24]}"
            )


def internvl2_processor(
    tokenizer: Any,
    *,
    tile_side: int,
    image_tokens_per_tile: int,
    max_tiles: int = 12,
    min_tiles: int = 1,
    dynamic: bool = True,
) -> Any:
    """InternVLProcessor doing InternVL2's dynamic preprocessing: the aspect-ratio tile grid (min..max tiles of
    tile_side px), a thumbnail when there is more than one tile, ImageNet mean/std; INTERNVL2_CHAT_TEMPLATE."""
    from transformers import GotOcr2ImageProcessor, InternVLProcessor, InternVLVideoProcessor

    tile = {"height": tile_side, "width": tile_side}
    return InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(
            size=tile,
            crop_to_patches=dynamic,
            min_patches=min_tiles,
            max_patches=max_tiles,
            image_mean=list(IMAGENET_MEAN),
            image_std=list(IMAGENET_STD),
        ),
        video_processor=InternVLVideoProcessor(size=tile, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)),
        tokenizer=tokenizer,
        image_seq_length=image_tokens_per_tile,
        chat_template=INTERNVL2_CHAT_TEMPLATE,
    )


def probe_texts(tokens_per_tile_: int) -> list[str]:
    """Prompts as the remote code builds them (image expanded, 1 and 9 tiles) plus text around added tokens."""
    prompts = [
        expand_image_placeholder(
            internvl2_chat_prompt(f"In this 360-degree panoramic image, describe the {query} in one or two sentences."),
            tiles,
            tokens_per_tile_,
        )
        for query, tiles in (("location", 1), ("people", 9), ("weather", 3))
    ]
    return prompts + ["system", " leading space", "two  spaces\nnew line", "<|im_start|> user\n x <|im_end|>"]


def check_chat_template(processor: Any) -> None:
    from runner.adapters.base import chat_template_prompt

    instruction = "PROBE"
    rendered = chat_template_prompt(processor, instruction)
    expected = internvl2_native_prompt(instruction, processor.tokenizer.bos_token)
    if rendered != expected:
        raise ConversionError(f"chat template renders {rendered!r}, expected {expected!r}")


# --- the conversion ------------------------------------------------------------------------------------------


@dataclass
class ConversionPlan:
    """Everything convert() writes except the weights' data, made and checked from metadata only."""

    geometry: Geometry
    remote_tokenizer: RemoteTokenizer
    processor: Any  # InternVLProcessor (with the converted tokenizer)
    config: Any  # InternVLConfig
    targets: list[TargetTensor]

    def generation_config(self) -> Any:
        from transformers import GenerationConfig

        tokenizer = self.remote_tokenizer
        return GenerationConfig(
            bos_token_id=tokenizer.token_id(tokenizer.bos_token),
            eos_token_id=tokenizer.token_id(TURN_END),  # the remote chat() stops at the template separator
            pad_token_id=tokenizer.token_id(tokenizer.pad_token),
            do_sample=False,
        )


def plan_conversion(config: dict[str, Any], tokenizer_dir: Path, headers: Headers, where: str) -> ConversionPlan:
    """Check a remote checkpoint from its config.json, tokenizer files and safetensors headers; no weight is read.

    Also what a connected host runs against the real checkpoint without downloading its weights (docs/RUNNER.md).
    """
    geometry = check_remote_config(config, where)
    remote_tokenizer = read_remote_tokenizer(tokenizer_dir)
    tokenizer = fast_tokenizer(remote_tokenizer)
    per_tile = tokens_per_tile(config)
    check_tokenizer(remote_tokenizer, tokenizer, probe_texts(per_tile))
    processor = internvl2_processor(
        tokenizer,
        tile_side=int(config.get("force_image_size") or config["vision_config"]["image_size"]),
        image_tokens_per_tile=per_tile,
        max_tiles=int(config.get("max_dynamic_patch", 12)),
        min_tiles=int(config.get("min_dynamic_patch", 1)),
        dynamic=bool(config.get("dynamic_image_size", True)),
    )
    check_chat_template(processor)
    target_config = native_config(config, image_token_id=remote_tokenizer.token_id(IMG_CONTEXT))
    if target_config.text_config.vocab_size < len(tokenizer) - 1:  # -1: the appended <video>
        raise ConversionError(f"{where}: llm_config.vocab_size is smaller than the tokenizer's {len(tokenizer) - 1}")
    targets = plan_weights(headers, geometry, where)
    check_against_native_model(targets, target_config, where)
    return ConversionPlan(geometry, remote_tokenizer, processor, target_config, targets)


def convert(
    remote_dir: Path | str,
    out_dir: Path | str,
    *,
    source: str | None = None,
    commit: str | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write the native InternVL checkpoint of a remote-code InternVL2 folder into out_dir (new or empty).

    source/commit: the Hub id and commit the folder is a snapshot of (recorded in conversion.json).
    """
    remote_dir, out_dir = Path(remote_dir), Path(out_dir)
    if not remote_dir.is_dir():
        raise ConversionError(f"{remote_dir}: not a folder")
    config = read_config(remote_dir)
    if config.get("model_type") == NATIVE_MODEL_TYPE:
        raise ConversionError(f"{remote_dir}: already a native InternVL checkpoint (model_type {NATIVE_MODEL_TYPE!r})")
    checkpoint_format(remote_dir)  # neither format: says so
    check_remote_config(config, str(remote_dir / "config.json"))
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConversionError(f"{out_dir}: exists and is not empty; convert into a new folder")
    plan = plan_conversion(config, remote_dir, read_headers(remote_dir), str(remote_dir))

    out_dir.mkdir(parents=True, exist_ok=True)
    write_weights(plan.targets, plan.geometry, out_dir, max_shard_bytes)
    plan.config.save_pretrained(out_dir)
    plan.processor.save_pretrained(out_dir)
    plan.generation_config().save_pretrained(out_dir)
    if (remote_dir / RANDOM_WEIGHTS_MARKER).is_file():
        shutil.copyfile(remote_dir / RANDOM_WEIGHTS_MARKER, out_dir / RANDOM_WEIGHTS_MARKER)
    record = conversion_record(remote_dir, source=source, commit=commit)
    # Written last: its presence means the folder is complete.
    (out_dir / CONVERSION_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return out_dir


def source_files(folder: Path) -> Iterator[Path]:
    yield folder / "config.json"
    yield from weight_files(folder)
    for name in ("model.safetensors.index.json", *TOKENIZER_FILES):
        if (folder / name).is_file():
            yield folder / name


def conversion_record(remote_dir: Path, *, source: str | None, commit: str | None) -> dict[str, Any]:
    import transformers

    return {
        "converter": "runner.convert_internvl2",
        "converter_version": CONVERTER_VERSION,
        "source": source or str(remote_dir.resolve()),
        "source_commit": commit,
        "source_files": {path.name: file_sha256(path) for path in source_files(remote_dir)},
        "transformers": transformers.__version__,
        "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def read_record(folder: Path) -> dict[str, Any] | None:
    """conversion.json of a converted folder made by this converter version; None if absent, partial or older."""
    try:
        record = json.loads((folder / CONVERSION_RECORD).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("converter_version") == CONVERTER_VERSION else None


# --- the converted-checkpoint cache ------------------------------------------------------------------------------


def default_hf_home() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HOME)


def converted_dir(model_id: str, commit: str, hf_home: Path | None = None) -> Path:
    """$HF_HOME/vlm-ablation-converted/<org>--<name>/<commit>/ (the fetch step writes it, the runner reads it)."""
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise ConversionError(f"converted checkpoints are keyed by a full commit hash, got {commit!r}")
    return (hf_home or default_hf_home()) / CONVERTED_CACHE_DIR / model_id.replace("/", "--") / commit


def find_converted(model_id: str, commit: str | None, hf_home: Path | None = None) -> Path | None:
    if not commit or not re.fullmatch(r"[0-9a-f]{40}", commit):
        return None
    folder = converted_dir(model_id, commit, hf_home)
    return folder if read_record(folder) is not None else None


def convert_into_cache(snapshot: Path, *, model_id: str, commit: str, hf_home: Path | None = None) -> Path:
    """Convert a downloaded snapshot once into its cache folder; a complete one of this version is reused.

    Converted beside the target and renamed into place, so a killed conversion never leaves a folder that looks
    complete."""
    target = converted_dir(model_id, commit, hf_home)
    if read_record(target) is not None:
        return target
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        convert(snapshot, staging, source=model_id, commit=commit)
        shutil.rmtree(target, ignore_errors=True)  # an older converter version's output
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m runner.convert_internvl2", description="Convert a remote-code InternVL2 folder to native."
    )
    parser.add_argument("remote_dir", type=Path, help="folder with config.json (internvl_chat), safetensors, tokenizer")
    parser.add_argument("out_dir", type=Path, help="new folder for the native checkpoint")
    parser.add_argument("--source", help="Hub id the folder is a snapshot of (recorded in conversion.json)")
    parser.add_argument("--commit", help="its commit hash (recorded in conversion.json)")
    args = parser.parse_args(argv)
    try:
        convert(args.remote_dir, args.out_dir, source=args.source, commit=args.commit)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"converted {args.remote_dir} -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
