"""Shared pieces of the tiny random-weight checkpoints: a tokenizer trained on the spot, a registry of builders.

Tiny checkpoints use the REAL transformers classes of each family with minimal sizes, so the runner's code
path (from_pretrained on a folder, processor, batched generate) is exercised offline with no download.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from contract import RANDOM_WEIGHTS_MARKER
from runner.registry import ModelSpec

# Words the tiny tokenizer learns: prompt wording, QuIC-360 queries, caption vocabulary.
_CORPUS = [
    "In this 360-degree panoramic image, describe the {query} in one or two sentences.",
    "USER: ASSISTANT: Question: Answer: [INST] [/INST] system user assistant model",
    "location people weather building sky trees road street water interior garden vehicle animals",
    "A wide view of a sunny beach with blue sky, green trees and a red house near the road.",
    "The people are walking on the street under a cloudy sky; the room is bright and empty.",
    "0 1 2 3 4 5 6 7 8 9 . , ; : ! ? ' \" ( ) - _ / < > | [ ] { } # = + * & % $ @ ~ ^ `",
]


def train_tokenizer(
    special_tokens: list[str],
    *,
    vocab_size: int = 400,
    bos_token: str | None = "<s>",
    eos_token: str = "</s>",
    pad_token: str = "<pad>",
    unk_token: str = "<unk>",
    extra_corpus: list[str] | None = None,
    add_bos: bool = False,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here with `tokenizers` (round-trips any text), wrapped for transformers.

    add_bos: prepend bos_token to every encoded text, as Llama/Mistral/OPT tokenizers do.
    """
    base = [t for t in (pad_token, bos_token, eos_token, unk_token) if t]
    specials = base + [t for t in special_tokens if t not in base]
    tokenizer = Tokenizer(models.BPE(unk_token=unk_token))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS + (extra_corpus or []), trainer=trainer)
    if add_bos and bos_token:
        bos_id = tokenizer.token_to_id(bos_token)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B", special_tokens=[(bos_token, bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        unk_token=unk_token,
        additional_special_tokens=[t for t in specials if t not in base],
    )


TinyBuilder = Callable[[ModelSpec, Path], None]
_BUILDERS: dict[str, TinyBuilder] = {}


def register_tiny(family: str) -> Callable[[TinyBuilder], TinyBuilder]:
    def decorate(builder: TinyBuilder) -> TinyBuilder:
        _BUILDERS[family] = builder
        return builder

    return decorate


def builder_for(name: str) -> TinyBuilder:
    import runner.tiny  # noqa: F401  (importing the package registers every builder)

    try:
        return _BUILDERS[name]
    except KeyError:
        raise ValueError(f"no tiny checkpoint builder {name!r}; known: {sorted(_BUILDERS)}") from None


def tiny_builders() -> list[str]:
    import runner.tiny  # noqa: F401

    return sorted(_BUILDERS)


def tiny_decoder_sizes(tokenizer: PreTrainedTokenizerFast, **overrides: object) -> dict[str, object]:
    """Config keywords of the tiny Llama-style language models (Llama, Mistral): sizes and the tokenizer's ids."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **overrides,
    }


def finish_tiny(model: object, tokenizer: PreTrainedTokenizerFast, processor: object, out_dir: Path) -> None:
    """Seeded wide random weights, word-like greedy output, then save (see widen_init and prefer_word_tokens)."""
    widen_init(model)
    prefer_word_tokens(model, tokenizer)
    model.eval()  # type: ignore[attr-defined]
    save_tiny(model, processor, out_dir)


def save_tiny(model: object, processor: object, out_dir: Path) -> None:
    """Save model weights (float32 safetensors) and processor the way a Hub checkpoint is laid out, plus the
    marker that makes every run of it say "random weights" (run manifest, console, report)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)  # type: ignore[attr-defined]
    processor.save_pretrained(out_dir)  # type: ignore[attr-defined]
    marker = {"random_weights": True, "built_by": "python -m runner.tiny", "class": type(model).__name__}
    (out_dir / RANDOM_WEIGHTS_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    # safetensors writes its file 0600; a checkpoint is shared like any file the user writes (e.g. with the
    # container user of the docker engine), so every file gets the user's umask.
    mask = os.umask(0o022)
    os.umask(mask)
    for path in out_dir.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~mask)


def widen_init(model: object, std: float = 0.2, seed: int = 0) -> None:
    """Re-draw every weight matrix with a larger spread, seeded.

    The default init (std 0.02, often 1e-10 for vision towers) makes a random model repeat one token forever; a
    wider spread makes greedy outputs depend on the image and prompt and vary token to token, so tests that
    compare predictions can fail. Norm weights (1-D) are left alone so activations stay bounded.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():  # type: ignore[attr-defined]
            if parameter.dim() >= 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def prefer_word_tokens(model: object, tokenizer: PreTrainedTokenizerFast) -> None:
    """Zero the output rows of every token that is not a word (single bytes, symbols, specials other than EOS).

    Random weights otherwise pick byte tokens about as often as words, and predictions fill up with control
    characters and broken UTF-8. With these rows at zero their logit is 0 while some word's is almost surely
    higher, so greedy output reads as (random) words and can still end with EOS.
    """
    import torch

    head = model.get_output_embeddings()  # type: ignore[attr-defined]
    rows = head.weight.shape[0]
    non_words = []
    for token, index in tokenizer.get_vocab().items():
        if index >= rows or index == tokenizer.eos_token_id:
            continue
        text = tokenizer.convert_tokens_to_string([token]).strip()
        if token in tokenizer.all_special_tokens or not (len(text) >= 2 and text.isalpha()):
            non_words.append(index)
    with torch.no_grad():
        head.weight[non_words] = 0.0
        if getattr(head, "bias", None) is not None:
            head.bias[non_words] = 0.0


def with_named_tokens(tokenizer: PreTrainedTokenizerFast, named: dict[str, str]) -> PreTrainedTokenizerFast:
    """Re-wrap a trained tokenizer so processors find model-specific tokens by name (saved in tokenizer_config)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
        unk_token=tokenizer.unk_token,
        extra_special_tokens=named,
    )
