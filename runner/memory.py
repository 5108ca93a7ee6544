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

import json
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
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


# --- host memory: what the runner process holds in the node's RAM (not the GPU's) --------------------------------
#
# A job scheduler counts it (Slurm's --mem, a container's memory limit), so it is stated before the runner starts,
# from files alone: the checkpoint's weight files and the catalogue entry. Measured and explained in docs/SCALING.md
# (python -m bench.host_memory). The peak is the larger of two phases, which do not overlap (batches are read only
# after the model is loaded):
# - loading: the checkpoint's weight files are memory-mapped and every page is read (counted as the process's own
#   resident memory while mapped); on the CPU the weights then stay, in the load dtype (the mapped pages themselves
#   when that is the file's dtype);
# - captioning: the batches in flight, decoded images and the processor's tensors (samples_in_flight: how many
#   runner.loop keeps alive at once), plus, on the CPU, the weights and the model's activations.
# On top of both: the Python runtime (torch, transformers, the processor), and on a GPU the CUDA libraries' pages.

MIB = 1 << 20
# Peak of a whole runner on a tiny checkpoint (weights under 1 MB), CPU, batch 4 of 2048x1024 panoramas, measured on
# every tiny family (bench.host_memory runtime): Python, torch, transformers, the processor and tokenizer, 888-945
# MiB; a third more for the other library versions the family images pin.
RUNTIME_BYTES = 1280 * MIB
# On a GPU: the CUDA libraries torch 2.14.1 maps (3.9 GB on disk: an upper bound of the pages they can occupy), and
# the driver's own host allocations. Not measured on a GPU host (none was available).
CUDA_HOST_BYTES = 4096 * MIB
# The processor's output for one sample (bench.host_memory inputs, the 8 models' full-size processors on a 2048x1024
# panorama downscaled as the runner does): float32 channels at the processor's resolution, 6.0-24.0 bytes per pixel
# of the decoded image (Qwen2.5-VL's patches repeat each frame twice: 24.0; InternVL2's tiles and thumbnail: 13.5),
# and at least a fixed-size tower's whole input however small the image (Gemma 3's 896x896: 9.6 MB). Rounded up.
PREPARED_BYTES_PER_PIXEL = 25
PREPARED_MIN_BYTES = 10 * MIB
DECODED_BYTES_PER_PIXEL = 3  # RGB, 8 bits per channel
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class CheckpointSize:
    """A checkpoint's weight files: their bytes on disk, and the parameters where the safetensors headers say."""

    file_bytes: int
    parameters: int | None
    files: int


def _safetensors_parameters(path: Path) -> int:
    """Parameters in one .safetensors file, from its JSON header (8-byte little-endian length, then the header)."""
    with open(path, "rb") as handle:
        length = struct.unpack("<Q", handle.read(8))[0]
        if length > 100 * MIB:
            raise ValueError(f"{path}: a safetensors header of {length} bytes (corrupt file?)")
        header = json.loads(handle.read(length))
    total = 0
    for name, entry in header.items():
        if name != "__metadata__":
            total += math.prod(entry.get("shape", []))
    return total


def checkpoint_size(folder: str | Path) -> CheckpointSize | None:
    """The weight files of a checkpoint folder (a Hub snapshot's symlinks are followed); None when it has none.
    Safetensors when there are any (what from_pretrained loads then), else PyTorch .bin/.pt files."""
    root = Path(folder)
    if not root.is_dir():
        return None
    files = sorted(path for path in root.iterdir() if path.suffix in WEIGHT_SUFFIXES and path.is_file())
    safetensors = [path for path in files if path.suffix == ".safetensors"]
    chosen = safetensors or files
    if not chosen:
        return None
    parameters: int | None = None
    if safetensors:
        try:
            parameters = sum(_safetensors_parameters(path) for path in safetensors)
        except (OSError, ValueError, KeyError, TypeError, struct.error):
            parameters = None
    return CheckpointSize(sum(path.stat().st_size for path in chosen), parameters, len(chosen))


def image_pixels(sizes: Iterable[tuple[int, int]], max_image_side: int, max_pixels: int | None = None) -> int:
    """Pixels of the largest image the runner hands the processor: each (width, height) downscaled as runner.images
    does it; with no size known, the most the limits let through (a square of max_image_side, at most
    max_pixels)."""
    limit = max_image_side * max_image_side
    if max_pixels:
        limit = min(limit, max_pixels)
    known = [size for size in sizes if size[0] > 0 and size[1] > 0]
    if not known:
        return limit
    try:
        from runner.images import ImageLimits, target_size
    except ImportError:  # no Pillow on this host: the bound
        return limit
    limits = ImageLimits(max_side=max_image_side, max_pixels=max_pixels)
    return max(math.prod(target_size(width, height, limits)) for width, height in known)


def prepared_bytes_per_sample(pixels: int) -> int:
    """The processor's output for one sample whose decoded image has `pixels` pixels."""
    return max(PREPARED_MIN_BYTES, pixels * PREPARED_BYTES_PER_PIXEL)


def input_bytes_per_sample(pixels: int) -> int:
    """Host bytes of one sample in flight with an image of `pixels` pixels: decoded, plus the processor's output."""
    return pixels * DECODED_BYTES_PER_PIXEL + prepared_bytes_per_sample(pixels)


def samples_in_flight(batch_size: int, preprocess_workers: int) -> tuple[int, int]:
    """(decoded images, processor outputs) alive at once in runner.loop: its image prefetch keeps max(2, workers + 1)
    batches ahead plus the one being handed over; the preprocessing keeps one batch per worker plus the one being
    generated, each still holding its images."""
    workers = max(1, preprocess_workers)
    image_batches = max(2, workers + 1) + 1 + workers + 1
    prepared_batches = workers + 1
    return batch_size * image_batches, batch_size * prepared_batches


@dataclass(frozen=True)
class HostMemory:
    memory_bytes: int
    parts: tuple[tuple[str, int], ...]

    @property
    def memory_mib(self) -> int:
        return math.ceil(self.memory_bytes / MIB)


def host_memory(
    checkpoint: CheckpointSize | None,
    *,
    device: str,
    dtype: str,
    batch_size: int,
    pixels: int,
    preprocess_workers: int = 2,
    gpu_gb_per_sample: float | None = None,
) -> HostMemory:
    """The runner's peak host memory (see above). `device`: cuda or cpu; `dtype`: the load dtype (the catalogue's on
    a GPU, float32 on the CPU unless --dtype); `batch_size`: a number (for --batch-size auto, AUTO_BATCH_MAX on a
    GPU, AUTO_BATCH_CPU on the CPU, never more than the samples); `pixels`: the largest image after downscaling
    (image_pixels). Without a checkpoint (not fetched yet) the weights count as nothing and the caller says so."""
    file_bytes = checkpoint.file_bytes if checkpoint else 0
    parts: list[tuple[str, int]] = [("Python, torch, transformers", RUNTIME_BYTES)]
    if device == "cuda":
        parts.append(("CUDA libraries", CUDA_HOST_BYTES))
    decoded, prepared = samples_in_flight(batch_size, preprocess_workers)
    batches = decoded * pixels * DECODED_BYTES_PER_PIXEL + prepared * prepared_bytes_per_sample(pixels)
    if device == "cuda":
        loading, captioning = file_bytes, batches
        parts.append(("checkpoint pages while loading" if loading >= captioning else "batches in flight",
                      max(loading, captioning)))  # fmt: skip
    else:
        load_bytes = DTYPE_BYTES.get(dtype, 4)
        weights = checkpoint.parameters * load_bytes if checkpoint and checkpoint.parameters else file_bytes
        # Loaded in the file's own dtype the weights ARE the mapped file pages (measured: a 4.41 GB bf16 checkpoint
        # loaded in bf16 peaked at 4.67 GB); converted, the file's pages stay mapped beside them while loading.
        converting = file_bytes if abs(weights - file_bytes) > file_bytes // 100 else 0
        # On the CPU the activations are in host memory too: the GPU's per-sample figure, at the load dtype.
        activations = int(batch_size * (gpu_gb_per_sample or FALLBACK_GB_PER_SAMPLE) * 1e9 * load_bytes / BYTES)
        parts.append((f"weights in {dtype}", weights))
        parts.append(("checkpoint pages while converting" if converting >= batches + activations else
                      "batches in flight and activations", max(converting, batches + activations)))  # fmt: skip
    return HostMemory(sum(value for _, value in parts), tuple(parts))
