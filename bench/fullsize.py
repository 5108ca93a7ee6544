"""Full-size random-weight models built from the published configs in bench/configs/, with no download.

Each bench/configs/<model>.json holds the architecture values of the model's published config.json (source URL
in the file). The model is instantiated from that config with random weights, directly on the target device in
the target dtype (no CPU copy, no checkpoint on disk). The processor is the family's tiny-checkpoint processor
(runner/tiny builders: a small tokenizer trained on the spot, the real processor classes) scaled to the published
image sizes and image-token counts; the model config takes that tokenizer's special-token ids, which all fit the
full vocabulary, so the model sees exactly the prompt layout and number of image tokens of the real checkpoint.
"""

from __future__ import annotations

import inspect
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoProcessor, PretrainedConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# Name fragments of parameters that run once per image (prefill), not once per generated token.
_VISION_SIDE = ("vision", "visual", "qformer", "query_tokens", "projector", "language_projection", "merger")


class BenchConfigError(ValueError):
    """A bench config file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class BenchModelConfig:
    name: str
    hub_id: str
    source: str
    model_class: str
    old_way_batch_size: int
    config: dict[str, Any]
    processor_attrs: dict[str, Any]
    image_processor_attrs: dict[str, Any]
    path: Path

    def build_config(self) -> PretrainedConfig:
        config = dict(self.config)
        model_type = config.pop("model_type")
        return AutoConfig.for_model(model_type, **config)


def config_path(name: str) -> Path:
    return CONFIG_DIR / f"{name}.json"


def load_bench_config(name: str) -> BenchModelConfig:
    path = config_path(name)
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise BenchConfigError(f"{path}: no bench config for model {name!r}; known: {known}")
    raw = json.loads(path.read_text(encoding="utf-8"))
    for key in ("name", "hub_id", "source", "model_class", "old_way_batch_size", "config", "processor"):
        if key not in raw:
            raise BenchConfigError(f"{path}: missing key {key!r}")
    if raw["name"] != name:
        raise BenchConfigError(f"{path}: 'name' is {raw['name']!r}, expected {name!r} (the file name)")
    if not hasattr(transformers, raw["model_class"]):
        raise BenchConfigError(f"{path}: model_class {raw['model_class']!r} is not a transformers class")
    return BenchModelConfig(
        name=raw["name"],
        hub_id=raw["hub_id"],
        source=raw["source"],
        model_class=raw["model_class"],
        old_way_batch_size=int(raw["old_way_batch_size"]),
        config=raw["config"],
        processor_attrs=raw["processor"].get("processor_attrs", {}),
        image_processor_attrs=raw["processor"].get("image_processor_attrs", {}),
        path=path,
    )


def model_class(bench: BenchModelConfig) -> type[Any]:
    return getattr(transformers, bench.model_class)


@dataclass(frozen=True)
class ParameterCounts:
    total: int
    vision_side: int  # runs once per image
    per_token: int  # read on every decode step (language model incl. embeddings/head; T5: decoder only)
    encoder_only: int  # T5 encoder: runs once per prompt
    kv_bytes_per_token_bf16: int  # KV-cache bytes one token adds across all decoder layers


def count_parameters(bench: BenchModelConfig) -> ParameterCounts:
    """Exact parameter counts from the config, built on the meta device (no memory, a few seconds)."""
    config = bench.build_config()
    with torch.device("meta"):
        model = model_class(bench)._from_config(config)
    total = vision = encoder = 0
    seen: set[int] = set()
    for name, parameter in model.named_parameters(remove_duplicate=True):
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
        lowered = name.lower()
        if any(fragment in lowered for fragment in _VISION_SIDE):
            vision += parameter.numel()
        elif ".encoder." in lowered and "language_model" in lowered:
            encoder += parameter.numel()
    text = config.get_text_config(decoder=True)
    layers = getattr(text, "num_decoder_layers", None) or text.num_hidden_layers
    heads = getattr(text, "num_attention_heads", None) or text.num_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or getattr(text, "d_kv", None) or text.hidden_size // heads
    kv_bytes = 2 * layers * kv_heads * head_dim * 2  # K and V, bf16
    return ParameterCounts(total, vision, total - vision - encoder, encoder, kv_bytes)


# ---------------------------------------------------------------------------------------------------------
# Processor: the tiny builder's processor, scaled to the published sizes.

_TOKEN_ID_SUFFIXES = ("token_id", "token_index")


def _special_token_ids(config: PretrainedConfig) -> dict[str, int]:
    """Top-level image/vision special-token ids of a (tiny) config: what the processor writes into prompts."""
    found: dict[str, int] = {}
    for key, value in config.to_dict().items():
        if isinstance(value, int) and key.endswith(_TOKEN_ID_SUFFIXES) and key not in ("pad_token_id",):
            found[key] = value
    return found


def build_tiny_reference(name: str, out_dir: Path) -> Path:
    """The family's tiny checkpoint (runner/tiny), whose processor and special-token ids the full model reuses."""
    from runner.tiny import build_tiny

    build_tiny(name, str(out_dir))
    return out_dir


def full_size_config(bench: BenchModelConfig, tiny_dir: Path) -> PretrainedConfig:
    """The published config with the tiny tokenizer's special-token ids (so prompts and model agree)."""
    config = bench.build_config()
    tiny = AutoConfig.from_pretrained(tiny_dir)
    for key, value in _special_token_ids(tiny).items():
        setattr(config, key, value)
    text_tiny = tiny.get_text_config(decoder=True)
    text_full = config.get_text_config(decoder=True)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
        if hasattr(text_tiny, key):
            setattr(text_full, key, getattr(text_tiny, key))
    return config


def full_size_processor(bench: BenchModelConfig, tiny_dir: Path) -> Any:
    """The tiny processor with the published image sizes; re-constructed, because processors derive state (e.g.
    Gemma 3's expanded image-token string) from their arguments at construction time."""
    processor = AutoProcessor.from_pretrained(tiny_dir)
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None:
        for key, value in bench.image_processor_attrs.items():
            setattr(image_processor, key, value)
    processor_class = type(processor)
    arguments = {}
    for name, parameter in inspect.signature(processor_class.__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        if name in bench.processor_attrs:
            arguments[name] = bench.processor_attrs[name]
        elif hasattr(processor, name):
            arguments[name] = getattr(processor, name)
    unknown = set(bench.processor_attrs) - set(arguments)
    if unknown:
        raise BenchConfigError(f"{bench.path}: processor_attrs {sorted(unknown)} are not {processor_class.__name__} "
                               "arguments")  # fmt: skip
    return processor_class(**arguments)


def build_full_model(
    config: PretrainedConfig, bench: BenchModelConfig, device: torch.device, dtype: torch.dtype
) -> Any:
    """Random weights, allocated straight on `device` in `dtype` (init runs there too: seconds on a GPU)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = model_class(bench)._from_config(config, dtype=dtype, attn_implementation="sdpa")
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def tiny_reference_dir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="bench_tiny_")
