"""The one adapter interface, and the generic adapter most models take.

The batching loop (runner/loop.py) lives once and calls only this interface. `Adapter` itself IS the generic
adapter (`adapter = "auto"` in the catalogue): AutoProcessor + AutoModelForImageTextToText, the prompt from the
processor's chat template with one `[{"type": "image"}, {"type": "text"}]` user turn (else the entry's documented
`prompt_format`), left padding for decoder-only models, the answer sliced at the padded input length,
encoder-decoder outputs kept whole, special tokens stripped. What differs between models is data in the catalogue
entry (runner/catalogue.toml); a subclass exists only where behaviour really differs (InternVL2's remote code).
Register one with `@register_adapter("name")`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import transformers
from PIL import Image

from runner.adapters.image_reuse import ImageReuse
from runner.registry import ModelSpec

# Plain greedy decoding, whatever the checkpoint's generation_config says; recorded in the run manifest.
GREEDY: dict[str, Any] = {
    "do_sample": False,
    "num_beams": 1,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "temperature": None,
    "top_p": None,
    "top_k": None,
}


@dataclass
class LoadedModel:
    model: Any  # a transformers PreTrainedModel
    processor: Any  # a transformers ProcessorMixin
    resolved_revision: str | None = None  # commit hash when loaded from the Hub


class Adapter:
    name: ClassVar[str] = "auto"
    # The transformers class, looked up by name when loading, so that importing every adapter works on each image's
    # pinned transformers version.
    model_class_name: ClassVar[str] = "AutoModelForImageTextToText"

    def __init__(self, spec: ModelSpec, loaded: LoadedModel, device: torch.device, dtype: torch.dtype):
        self.spec = spec
        self.model = loaded.model
        self.processor = loaded.processor
        self.resolved_revision = loaded.resolved_revision
        self.device = device
        self.dtype = dtype
        self.decoder: Any = None  # runner.decoding.Decoder; None: plain model.generate
        # Decoder-only models pad on the left and return prompt + answer; encoder-decoder models (BLIP-2 with
        # Flan-T5) return only the answer. Read from the LOADED config, never from the model's name.
        config = self.model.config
        text_config = getattr(config, "text_config", None) or config
        self.decoder_only = not (getattr(text_config, "is_encoder_decoder", False) or config.is_encoder_decoder)
        if self.decoder_only:
            # Batched decoder-only generation needs left padding: every row's answer then starts at the same column.
            self.tokenizer.padding_side = "left"
        if getattr(self.tokenizer, "pad_token", "") is None and getattr(self.tokenizer, "eos_token", None):
            # Some Llama-family tokenizers ship without a pad token; batching needs one (masked out anyway).
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # One vision-tower run per distinct image (runner/adapters/image_reuse.py): wrapped here where the
        # architecture allows it, inert until the loop enables it and names each row's image (`image_reuse.batch`).
        self.image_reuse = ImageReuse(self.model)

    # --- loading ----------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, source: str, *, revision: str | None, dtype: torch.dtype, device: torch.device, spec: ModelSpec
    ) -> LoadedModel:
        """Load model + processor from a Hub id or a local folder (the same code path for both)."""
        commit = resolve_hub_revision(source, revision)
        pinned = commit or revision  # processor and weights from the same commit
        processor = cls.load_processor(source, pinned, spec)
        model_class = getattr(transformers, cls.model_class_name)
        # device_map loads the safetensors straight onto the device (no full copy in host memory first).
        model = model_class.from_pretrained(source, revision=pinned, dtype=dtype, device_map=str(device)).eval()
        return LoadedModel(model=model, processor=processor, resolved_revision=commit or commit_hash(model))

    @classmethod
    def load_processor(cls, source: str, revision: str | None, spec: ModelSpec) -> Any:
        processor = transformers.AutoProcessor.from_pretrained(source, revision=revision)
        if spec.max_pixels is not None:
            cap_max_pixels(getattr(processor, "image_processor", processor), spec.max_pixels)
        return processor

    # --- prompts and inputs -----------------------------------------------------------------------------

    def build_prompt(self, instruction: str) -> str:
        """The exact text the model sees for one sample: the chat template, else the entry's documented format."""
        templated = chat_template_prompt(self.processor, instruction)
        if templated is not None:
            return templated
        if self.spec.prompt_format is None:
            raise ValueError(
                f"{self.spec.name}: the processor has no chat template and the catalogue entry sets no prompt_format "
                '(e.g. prompt_format = "USER: <image>\\n{prompt} ASSISTANT:")'
            )
        return self.spec.prompt_format.format(prompt=instruction)

    def preprocess(self, images: list[Image.Image], prompts: list[str], processor: Any = None) -> dict[str, Any]:
        """Processor call for one batch, on the CPU (the loop runs it in worker threads, overlapping generation).

        `processor`: the worker's own copy of self.processor (one per thread). Left padding is set in __init__;
        tensors come back in pinned memory so the copy to the GPU is asynchronous.
        """
        processor = processor or self.processor
        kwargs: dict[str, Any] = {}
        if template_wrote_bos(self.tokenizer, prompts):
            kwargs["add_special_tokens"] = False  # a second <bos> would change the model's input
        inputs = processor(
            images=[[image] for image in images] if self.spec.nested_images else images,
            text=prompts,
            padding=True,
            return_tensors="pt",
            **kwargs,
        )
        inputs = dict(inputs)
        inputs.pop("labels", None)  # a training target some processors add (PaliGemma); generate never reads it
        return pin_memory(inputs, self.device)

    def to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return move_inputs(inputs, self.device, self.dtype)

    def build_inputs(self, images: list[Image.Image], prompts: list[str]) -> dict[str, Any]:
        """Model inputs for one batch, on self.device."""
        return self.to_device(self.preprocess(images, prompts))

    # --- generating and decoding ------------------------------------------------------------------------

    def generate(self, inputs: dict[str, Any], max_new_tokens: int, min_new_tokens: int = 0) -> torch.Tensor:
        """Greedy decoding. Returns generated ids (with the prompt for decoder-only models).

        GREEDY overrides what a checkpoint's generation_config sets (Qwen2.5-VL ships sampling settings and a
        repetition penalty), so every model decodes the same way and the manifest says exactly how.
        """
        kwargs = {
            **GREEDY,
            "max_new_tokens": max_new_tokens,
            "min_new_tokens": min_new_tokens or None,
            "pad_token_id": self.pad_token_id,
            **self.generation_kwargs(),
        }
        if "stop_strings" in kwargs:
            kwargs["tokenizer"] = self.tokenizer  # generate() matches stop strings with the tokenizer
        with torch.inference_mode():
            if self.decoder is not None:
                return self.decoder.generate(self.model, inputs, **kwargs)
            return self.model.generate(**inputs, **kwargs)

    def manifest_extras(self) -> dict[str, Any]:
        """Extra keys for `<model>_run.json` about how the model was loaded (e.g. a checkpoint conversion)."""
        return {}

    def generation_kwargs(self) -> dict[str, Any]:
        """Model-specific generate() arguments: the catalogue entry's `generate_kwargs` (e.g. a stop token)."""
        return dict(self.spec.generate_kwargs)

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
    def max_image_side(self) -> int:
        return self.spec.max_image_side

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


def resolve_hub_revision(source: str, revision: str | None) -> str | None:
    """The commit a Hub `revision` (branch, tag, hash) points to, resolved ONCE before loading; None when unknown.

    Passing the returned hash as `revision` to every from_pretrained call of one load makes processor and weights
    come from the same repository state, and the hash is what the run manifest records. A local folder has no
    commit (None). Offline (HF_HUB_OFFLINE=1), the mapping cached by an earlier download is used.
    """
    import os

    if os.path.isdir(source):
        return None
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.constants import HF_HUB_OFFLINE

        resolved = HfApi().resolve_revision(source, revision=revision, local_files_only=bool(HF_HUB_OFFLINE))
        return str(getattr(resolved, "resolved", "") or "") or None
    except Exception:  # noqa: BLE001  (older huggingface_hub, no network, no cache: loading reports real problems)
        return None


def move_inputs(inputs: Any, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Processor output onto the device; floating tensors (pixel values) to the model's dtype, ids stay integer."""
    moved: dict[str, Any] = {}
    for key, value in dict(inputs).items():
        if isinstance(value, torch.Tensor):
            dtype_here = dtype if value.is_floating_point() else value.dtype
            value = value.to(device=device, dtype=dtype_here, non_blocking=value.is_pinned())
        moved[key] = value
    return moved


def pin_memory(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Page-locked CPU tensors when the model is on a GPU (asynchronous host-to-device copies); as is otherwise."""
    if device.type != "cuda":
        return inputs
    return {key: value.pin_memory() if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}


def template_wrote_bos(tokenizer: Any, prompts: list[str]) -> bool:
    """True when every prompt already starts with the BOS token (the tokenizer must not add another one)."""
    bos = getattr(tokenizer, "bos_token", None)
    return bool(bos) and all(prompt.startswith(bos) for prompt in prompts)


def chat_template_prompt(processor: Any, instruction: str) -> str | None:
    """One user turn (an image, then the instruction) through the processor's chat template; None without one."""
    if not getattr(processor, "chat_template", None):
        return None
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def cap_max_pixels(image_processor: Any, max_pixels: int) -> int:
    """Lower a dynamic-resolution image processor's pixel budget to max_pixels (never raise it); returns the budget
    in effect. Qwen2-VL-style processors keep it as size["longest_edge"] (in pixels, not a side length)."""
    size = getattr(image_processor, "size", None)
    current = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
    if current is None:
        raise ValueError(
            f"max_pixels is set but {type(image_processor).__name__} has no pixel budget (size.longest_edge) to cap"
        )
    effective = min(int(current), max_pixels)
    if isinstance(size, dict):
        size["longest_edge"] = effective
    else:
        size.longest_edge = effective
    return effective


_ADAPTERS: dict[str, type[Adapter]] = {"auto": Adapter}


def register_adapter(name: str) -> Callable[[type[Adapter]], type[Adapter]]:
    def decorate(cls: type[Adapter]) -> type[Adapter]:
        cls.name = name
        _ADAPTERS[name] = cls
        return cls

    return decorate


def adapter_for(name: str) -> type[Adapter]:
    import runner.adapters  # noqa: F401  (importing the package registers every adapter)

    try:
        return _ADAPTERS[name]
    except KeyError:
        raise ValueError(f"no adapter registered as {name!r}; known: {sorted(_ADAPTERS)}") from None
