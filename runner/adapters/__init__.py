"""One module per model family; importing this package registers them all (see base.register_family)."""

from runner.adapters import blip2, gemma3, instructblip, internvl2, llava, llava_next, qwen2_5_vl  # noqa: F401
from runner.adapters.base import Adapter, LoadedModel, adapter_for, register_family

__all__ = ["Adapter", "LoadedModel", "adapter_for", "register_family"]
