"""One builder for any AutoModelForImageTextToText architecture: a declarative entry per architecture, the rest here.

An entry (`TinyArchitecture`) says only what differs: the model_type, the config overrides that make the model tiny
and consistent, the image-processor and processor settings, the special tokens its processor looks up by name, and
a chat template rendering the published model's prompt format. The mechanism trains the tokenizer, builds the
config with the real config class (`AutoConfig.for_model`), the model with `AutoModelForImageTextToText.from_config`,
the processor with its real class and sub-processors (the classes transformers maps the model_type to), then seeds
and widens the weights, prefers word tokens and saves the checkpoint with the random-weights marker.

Config values that are token ids are written `Token("<image>")`: they resolve to the trained tokenizer's ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.registry import ModelSpec
from runner.tiny.common import (
    prefer_word_tokens,
    register_tiny,
    save_tiny,
    train_tokenizer,
    widen_init,
    with_named_tokens,
)


class Token(str):
    """A config value that is the id of this special token in the tiny tokenizer."""


@dataclass(frozen=True)
class TinyArchitecture:
    model_type: str  # a key of transformers' MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    # Keywords of the real config class (text_config / vision_config as dicts); the text config also gets the
    # tokenizer's vocabulary size and pad/bos/eos ids.
    config: Mapping[str, Any]
    chat_template: str | None  # renders the published checkpoint's prompt; None where it has no chat template
    special_tokens: tuple[str, ...] = ()  # added to the tokenizer as special tokens
    named_tokens: Mapping[str, str] = field(default_factory=dict)  # tokenizer attributes processors read by name
    bos_token: str | None = "<s>"
    eos_token: str = "</s>"
    pad_token: str = "<pad>"
    add_bos: bool = False  # the tokenizer prepends bos_token itself (Llama, Gemma)
    stop_tokens: tuple[str, ...] = ()  # generation_config eos ids besides eos_token (an end-of-turn token)
    # Special tokens added after the trained vocabulary, in this order: for models that give the ids past the text
    # vocabulary a meaning of their own (Gemma 3n embeds its vision and audio token ranges separately).
    appended_tokens: tuple[str, ...] = ()
    image_processor: Mapping[str, Any] = field(default_factory=dict)  # keywords of the image processor class
    video_processor: Mapping[str, Any] = field(default_factory=dict)
    feature_extractor: Mapping[str, Any] = field(default_factory=dict)  # an audio feature extractor's keywords
    processor: Mapping[str, Any] = field(default_factory=dict)  # keywords of the processor class
    # After the seeded wide init: parameters whose name contains the key are multiplied by the factor, where a model
    # scales one input down so far that random weights would ignore it (PaliGemma divides image features by
    # sqrt(hidden_size) while Gemma multiplies text embeddings by it).
    weight_scales: Mapping[str, float] = field(default_factory=dict)
    # Likewise set to a constant: gates that start at zero (Mllama's tanh gates on cross-attention) shut the image
    # out entirely, and widen_init leaves 1-D parameters alone.
    weight_fills: Mapping[str, float] = field(default_factory=dict)


def resolve_tokens(value: Any, tokenizer: Any) -> Any:
    """`Token(...)` values anywhere in nested dicts and lists replaced by their ids."""
    if isinstance(value, Token):
        token_id = tokenizer.convert_tokens_to_ids(str(value))
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"{value!r} is not a token of the tiny tokenizer")
        return token_id
    if isinstance(value, Mapping):
        return {key: resolve_tokens(item, tokenizer) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(resolve_tokens(item, tokenizer) for item in value)
    return value


def tiny_tokenizer(arch: TinyArchitecture) -> Any:
    from tokenizers import AddedToken

    appended = set(arch.appended_tokens)
    wanted = [*arch.special_tokens, *arch.named_tokens.values(), *arch.stop_tokens]
    specials = [token for token in dict.fromkeys(wanted) if token not in appended]
    tokenizer = train_tokenizer(
        specials,
        bos_token=arch.bos_token,
        eos_token=arch.eos_token,
        pad_token=arch.pad_token,
        add_bos=arch.add_bos,
    )
    if arch.appended_tokens:
        tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in arch.appended_tokens])
    return with_named_tokens(tokenizer, dict(arch.named_tokens)) if arch.named_tokens else tokenizer


def tiny_config(arch: TinyArchitecture, tokenizer: Any) -> Any:
    from transformers import AutoConfig

    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    # Untied output rows: prefer_word_tokens zeroes the head rows of non-word tokens, which for tied weights would
    # also zero those tokens' input embeddings (most of the prompt's bytes).
    untied = {"tie_word_embeddings": False}
    keywords = {**untied, **resolve_tokens(dict(arch.config), tokenizer)}
    keywords["text_config"] = {**ids, **untied, **keywords.get("text_config", {})}
    return AutoConfig.for_model(arch.model_type, **keywords)


def tiny_processor(arch: TinyArchitecture, tokenizer: Any) -> Any:
    """The model_type's real processor class with its real sub-processors, at the entry's settings."""
    import transformers
    from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING_NAMES
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
    from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING_NAMES

    processor_class = getattr(transformers, PROCESSOR_MAPPING_NAMES[arch.model_type])
    parts: dict[str, Any] = {}
    for attribute in processor_class.get_attributes():
        if attribute == "tokenizer":
            parts[attribute] = tokenizer
        elif attribute == "image_processor":
            name = IMAGE_PROCESSOR_MAPPING_NAMES[arch.model_type]["torchvision"]
            parts[attribute] = getattr(transformers, name)(**arch.image_processor)
        elif attribute == "video_processor":
            name = VIDEO_PROCESSOR_MAPPING_NAMES[arch.model_type]["torchvision"]
            parts[attribute] = getattr(transformers, name)(**arch.video_processor)
        elif attribute == "feature_extractor":
            name = FEATURE_EXTRACTOR_MAPPING_NAMES[arch.model_type]
            parts[attribute] = getattr(transformers, name)(**arch.feature_extractor)
        else:
            raise ValueError(f"{arch.model_type}: {processor_class.__name__} needs a {attribute}, not built here")
    return processor_class(**parts, chat_template=arch.chat_template, **resolve_tokens(dict(arch.processor), tokenizer))


def build_architecture(arch: TinyArchitecture, out_dir: Path) -> None:
    """The tiny checkpoint of `arch` in out_dir; the same files, byte for byte, on every build."""
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    tokenizer = tiny_tokenizer(arch)
    processor = tiny_processor(arch, tokenizer)  # first: some processors add tokens (PaliGemma's <locNNNN>)
    config = tiny_config(arch, tokenizer)
    # Seeded construction: widen_init redraws only the matrices, and the rest (biases, 1-D embeddings such as
    # LLaVA-OneVision's image_newline) would otherwise come from the unseeded global generator; forked, so the
    # caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(config)
    stop_ids = [resolve_tokens(Token(token), tokenizer) for token in (arch.eos_token, *arch.stop_tokens)]
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stop_ids if len(stop_ids) > 1 else stop_ids[0],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    widen_init(model)
    adjust_weights(model, arch.weight_scales, lambda parameter, factor: parameter.mul_(factor))
    adjust_weights(model, arch.weight_fills, lambda parameter, value: parameter.fill_(value))
    prefer_word_tokens(model, tokenizer)
    model.eval()
    save_tiny(model, processor, out_dir)


def adjust_weights(model: Any, values: Mapping[str, float], adjust: Callable[[Any, float], Any]) -> None:
    """adjust(parameter, value) for every parameter whose name contains a key of values; a key matching none is an
    error (a renamed module would otherwise silently undo the adjustment)."""
    import torch

    with torch.no_grad():
        for key, value in values.items():
            matched = [parameter for name, parameter in model.named_parameters() if key in name]
            if not matched:
                raise ValueError(f"no parameter name contains {key!r}")
            for parameter in matched:
                adjust(parameter, value)


ARCHITECTURES: dict[str, TinyArchitecture] = {}


def register_architecture(name: str, arch: TinyArchitecture) -> TinyArchitecture:
    """One declarative entry, buildable as catalogue `tiny = "<name>"` (and by the tests)."""

    def build(spec: ModelSpec, out_dir: Path) -> None:
        build_architecture(arch, out_dir)

    ARCHITECTURES[name] = arch
    register_tiny(name)(build)
    return arch
