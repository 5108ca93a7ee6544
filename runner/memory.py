"""GPU memory one more sample in a batch costs, for `--batch-size auto`: the catalogue's measured figure where it
has one, else an estimate from the loaded model's config and one real sample's inputs (exact prompt length, pixel
count), so a model named hf:Org/Name gets a size fitted to it rather than a flat guess. The OOM halving stays the
net for both. bench/memory_estimate.py compares the estimate with the 8 measured figures (docs/PERFORMANCE.md).

Per sample, bf16 (2 bytes):
- KV cache: 2 (K and V) x layers x key-value heads x head dim x (prompt + new tokens);
- language-model prefill activations, live at once in one layer: prompt tokens x (2 x intermediate + 4 x hidden);
- vision tower activations per image patch: 2 x intermediate + 4 x hidden, and every layer's hidden state where
  the model keeps them for a feature layer other than the last (LLaVA's vision_feature_layer = -2).
"""

from __future__ import annotations

from typing import Any

from runner.registry import ModelSpec

BYTES = 2  # bf16
FALLBACK_GB_PER_SAMPLE = 0.5  # only when a config says too little to estimate anything


def _get(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def estimate_gb_per_sample(config: Any, prompt_tokens: int, new_tokens: int, vision_patches: int) -> float | None:
    """The estimate described above, in GB; None when the config lacks the language model's sizes."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layers = _get(text, "num_hidden_layers", "num_layers", "n_layer")
    heads = _get(text, "num_attention_heads", "n_head", "num_heads")
    hidden = _get(text, "hidden_size", "d_model", "n_embd")
    if not (layers and heads and hidden):
        return None
    kv_heads = _get(text, "num_key_value_heads") or heads
    head_dim = _get(text, "head_dim", "d_kv") or hidden // heads
    intermediate = _get(text, "intermediate_size", "d_ff", "ffn_dim") or 4 * hidden
    kv = 2 * layers * kv_heads * head_dim * BYTES * (prompt_tokens + new_tokens)
    prefill = prompt_tokens * (2 * intermediate + 4 * hidden) * BYTES
    vision = 0
    vision_config = getattr(config, "vision_config", None)
    if vision_config is not None and vision_patches > 0:
        v_hidden = _get(vision_config, "hidden_size", "embed_dim", "width") or 1024
        v_intermediate = _get(vision_config, "intermediate_size", "mlp_dim") or 4 * v_hidden
        v_layers = _get(vision_config, "num_hidden_layers", "depth", "num_layers") or 24
        per_patch = 2 * v_intermediate + 4 * v_hidden
        feature_layer = getattr(config, "vision_feature_layer", -1)
        if isinstance(feature_layer, int) and feature_layer != -1:
            per_patch += (v_layers + 1) * v_hidden  # output_hidden_states keeps every layer's output
        vision = vision_patches * per_patch * BYTES
    return (kv + prefill + vision) / 1e9


def vision_patches_of(inputs: dict[str, Any], config: Any) -> int:
    """Patch positions of one sample's image, from its pixel tensor and the vision patch size."""
    pixels = inputs.get("pixel_values")
    vision = getattr(config, "vision_config", None)
    if pixels is None or vision is None or not hasattr(pixels, "numel"):
        return 0
    patch = getattr(vision, "patch_size", 14)
    patch = patch[0] if isinstance(patch, list | tuple) else patch
    return int(pixels.numel() // (3 * patch * patch))


def gb_per_sample(
    spec: ModelSpec, config: Any, max_new_tokens: int, sample_inputs: dict[str, Any] | None
) -> tuple[float, str]:
    """(GB per sample, how it was found: "measured", "estimated from the config" or "default")."""
    if spec.gpu_gb_per_sample is not None:
        return spec.gpu_gb_per_sample, "measured"
    if sample_inputs is not None and "input_ids" in sample_inputs:
        prompt = int(sample_inputs["input_ids"].shape[-1])
        estimate = estimate_gb_per_sample(config, prompt, max_new_tokens, vision_patches_of(sample_inputs, config))
        if estimate is not None:
            return round(estimate, 4), "estimated from the config"
    return FALLBACK_GB_PER_SAMPLE, "default"
