"""The one interface every model family implements, and the registry of families.

The batching loop (runner/loop.py) lives once and calls only this interface. An adapter holds only what
differs between families: how to load, how to turn (images, prompts) into model inputs, and which part of
the generated ids is the answer. Register a family with `@register_family("name")`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image

from runner.registry import ModelSpec


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel
    processor: Any  # a transformers ProcessorMixin
    resolved_revision: str | None = None  # commit hash when loaded from the Hub


class Adapter(ABC):
    family: ClassVar[str]
    # Decoder-only models pad on the left and return prompt + answer; encoder-decoder models return only the answer.
    decoder_only: ClassVar[bool] = True
    # Largest image side worth decoding for this family: panoramas are downscaled to this once, before the
    # processor, so CPU time is not spent on pixels the model never sees.
    max_image_side: ClassVar[int] = 1024

    def __init__(self, spec: ModelSpec, loaded: LoadedModel, device: torch.device, dtype: torch.dtype):
        self.spec = spec
        self.model = loaded.model
        self.processor = loaded.processor
        self.resolved_revision = loaded.resolved_revision
        self.device = device
        self.dtype = dtype
        if self.decoder_only:
            # Batched decoder-only generation needs left padding: every row's answer then starts at the same column.
            self.tokenizer.padding_side = "left"
        if getattr(self.tokenizer, "pad_token", "") is None and getattr(self.tokenizer, "eos_token", None):
            # Some Llama-family tokenizers ship without a pad token; batching needs one (masked out anyway).
            self.tokenizer.pad_token = self.tokenizer.eos_token

    # --- what each family provides -------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def load(cls, source: str, *, revision: str | None, dtype: torch.dtype, device: torch.device) -> LoadedModel:
        """Load model + processor from a Hub id or a local folder (same code path for both)."""

    @abstractmethod
    def build_prompt(self, instruction: str) -> str:
        """The exact text the model sees for one sample (chat template or documented format applied)."""

    @abstractmethod
    def build_inputs(self, images: list[Image.Image], prompts: list[str]) -> dict[str, Any]:
        """Processor call for one batch; returns tensors already on self.device."""

    # --- shared behaviour, overridable ---------------------------------------------------------------

    def generate(self, inputs: dict[str, Any], max_new_tokens: int, min_new_tokens: int = 0) -> torch.Tensor:
        """Greedy decoding. Returns generated ids (with the prompt for decoder-only models)."""
        with torch.inference_mode():
            return self.model.generate(
                **inputs,
                do_sample=False,
                num_beams=1,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens or None,
                pad_token_id=self.pad_token_id,
            )

    def generated_ids(self, output_ids: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """Only the newly generated ids: slice at the PADDED input length (never at a count of non-pad tokens).

        Encoder-decoder models return only the answer (after the decoder start token): nothing to slice.
        """
        if self.decoder_only:
            return output_ids[:, inputs["input_ids"].shape[1] :]
        return output_ids

    def decode(self, output_ids: torch.Tensor, inputs: dict[str, Any]) -> list[str]:
        generated = self.generated_ids(output_ids, inputs)
        return [text.strip() for text in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def pad_token_id(self) -> int | None:
        tokenizer = self.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


# --- helpers for adapters ---------------------------------------------------------------------------


def commit_hash(model: Any) -> str | None:
    """The Hub commit a model was loaded from (transformers records it in the config); None for a local folder."""
    value = getattr(getattr(model, "config", None), "_commit_hash", None)
    return value if isinstance(value, str) and value else None


def move_inputs(inputs: Any, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Processor output onto the device; floating tensors (pixel values) to the model's dtype, ids stay integer."""
    moved: dict[str, Any] = {}
    for key, value in dict(inputs).items():
        if isinstance(value, torch.Tensor):
            value = value.to(device=device, dtype=dtype) if value.is_floating_point() else value.to(device)
        moved[key] = value
    return moved


def chat_template_prompt(processor: Any, instruction: str) -> str | None:
    """One user turn (an image, then the instruction) through the processor's chat template; None without one."""
    if not getattr(processor, "chat_template", None):
        return None
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


_FAMILIES: dict[str, type[Adapter]] = {}


def register_family(name: str) -> Callable[[type[Adapter]], type[Adapter]]:
    def decorate(cls: type[Adapter]) -> type[Adapter]:
        cls.family = name
        _FAMILIES[name] = cls
        return cls

    return decorate


def adapter_for(family: str) -> type[Adapter]:
    import runner.adapters  # noqa: F401  (importing the package registers every family)

    try:
        return _FAMILIES[family]
    except KeyError:
        raise ValueError(f"no adapter registered for family {family!r}; known: {sorted(_FAMILIES)}") from None
