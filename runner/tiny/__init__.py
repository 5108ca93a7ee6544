"""Tiny random-weight checkpoints of each model's real transformers classes (see common.py)."""

from runner.tiny import (  # noqa: F401
    architectures,
    blip2,
    gemma3,
    instructblip,
    internvl2,
    llava,
    llava_next,
    qwen2_5_vl,
)
from runner.tiny.common import builder_for, register_tiny, train_tokenizer

__all__ = ["builder_for", "build_tiny", "register_tiny", "train_tokenizer"]


def build_tiny(model_name: str, out_dir: str) -> None:
    """Build the tiny checkpoint of a catalogue entry (its `tiny` builder) into out_dir."""
    from pathlib import Path

    from runner.registry import get_model

    spec = get_model(model_name)
    if spec.tiny is None:
        raise ValueError(f"{model_name}: its catalogue entry names no tiny checkpoint builder (`tiny = ...`)")
    import torch

    torch.manual_seed(0)  # weights a builder does not draw itself (norms, biases) are the same on every build
    builder_for(spec.tiny)(spec, Path(out_dir))
