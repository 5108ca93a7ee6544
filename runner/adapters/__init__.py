"""The generic adapter (`auto`, in base.py) and the few that differ; importing this package registers them all."""

from __future__ import annotations

import torch

from runner.adapters import internvl2  # noqa: F401
from runner.adapters.base import Adapter, LoadedModel, adapter_for, register_adapter
from runner.registry import ModelSpec

__all__ = ["Adapter", "LoadedModel", "adapter_for", "open_adapter", "register_adapter"]


def open_adapter(
    spec: ModelSpec, source: str, *, device: torch.device, dtype: torch.dtype, revision: str | None = None
) -> Adapter:
    """The entry's adapter with its model loaded from `source` (a Hub id or a local folder)."""
    adapter_class = adapter_for(spec.adapter)
    loaded = adapter_class.load(source, revision=revision, dtype=dtype, device=device, spec=spec)
    return adapter_class(spec, loaded, device, dtype)
