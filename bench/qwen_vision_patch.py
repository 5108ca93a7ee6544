"""Qwen2.5-VL vision attention on the CPU: transformers' per-window SDPA loop vs runner.patches.qwen2_5_vl_vision.

    python -m bench.qwen_vision_patch [--images 1] [--repeats 3] [--out bench/out/qwen_vision_patch.json]

Builds the FULL-size vision tower of bench/configs/qwen2.5-vl-3b.json (1280 hidden, 16 heads, window 112) with
random weights, float32, cut to two blocks (one window-attention block, one full-attention block), and feeds it
1400 x 700 images' patches (what the runner's adapter hands the processor: 100 x 50 patches = 5,000 tokens and 91
windows per image). CPU times (one thread), best of `repeats`, per block: the SDPA dispatch alone (split + one
call per segment + concatenate, vs segment_attention), the attention module (with its qkv and output projections)
and the whole block, loop vs batched; and checks the outputs agree. Says nothing about a GPU, where the loop's cost
is kernel launches, not arithmetic.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.fullsize import load_bench_config
from runner.patches import qwen2_5_vl_vision

IMAGE_WIDTH, IMAGE_HEIGHT = 1400, 700


def best_of(repeats: int, call: Any) -> float:
    """Best CPU time of this process over `repeats` calls (one torch thread): on a CPU shared with other jobs the
    wall time mostly measures them."""
    times = []
    for _ in range(repeats):
        started = time.process_time()
        call()
        times.append(time.process_time() - started)
    return min(times)


def measure(images: int, repeats: int) -> dict[str, Any]:
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
    from transformers.vision_utils import (
        get_vision_attention_seqlens,
        get_vision_position_ids,
        get_vision_window_index,
    )

    values = dict(load_bench_config("qwen2.5-vl-3b").config["vision_config"])
    values.pop("model_type", None)
    config = Qwen2_5_VLVisionConfig(**{**values, "depth": 2, "fullatt_block_indexes": [1]})
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(config, dtype=torch.float32).eval()
    patch = config.patch_size
    grid = torch.tensor([[1, IMAGE_HEIGHT // patch, IMAGE_WIDTH // patch]] * images)
    tokens = int(grid.prod(-1).sum())
    cu_images, _ = get_vision_attention_seqlens(grid, config)
    _, cu_windows = get_vision_window_index(grid, config.spatial_merge_size, config.window_size, patch)
    hidden = torch.randn(tokens, config.hidden_size)
    # The tower's own rotary embedding at the real patch positions (window order does not change the cost).
    embeddings = tower.rotary_pos_emb(hidden, get_vision_position_ids(grid, config.spatial_merge_size))
    window_lengths = (cu_windows[1:] - cu_windows[:-1]).tolist()
    result: dict[str, Any] = {
        "images": images,
        "image_size": f"{IMAGE_WIDTH}x{IMAGE_HEIGHT}",
        "tokens": tokens,
        "windows": len(window_lengths),
        "distinct_window_lengths": sorted(set(window_lengths)),
        "hidden_size": config.hidden_size,
        "heads": config.num_heads,
        "torch_threads": torch.get_num_threads(),
    }
    heads, head_dim = config.num_heads, config.hidden_size // config.num_heads
    qkv = tuple(torch.randn(tokens, heads, head_dim) for _ in range(3))
    for name, block, cu_seqlens in (
        ("window_block", tower.blocks[0], cu_windows),
        ("full_attention_block", tower.blocks[1], cu_images),
    ):
        result[name] = time_block(tower, block, cu_seqlens, hidden, embeddings, qkv, repeats)
    return result


def time_block(
    tower: Any, block: Any, cu_seqlens: torch.Tensor, hidden: torch.Tensor, embeddings: Any,
    qkv: tuple[torch.Tensor, ...], repeats: int,
) -> dict[str, Any]:  # fmt: skip
    query, key, value = qkv
    scale = query.shape[-1] ** -0.5

    def loop_dispatch() -> torch.Tensor:
        # What transformers does without flash-attn: split at cu_seqlens, one SDPA per segment, concatenate.
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        splits = (torch.split(t.transpose(0, 1)[None], lengths, dim=2) for t in (query, key, value))
        parts = [F.scaled_dot_product_attention(q, k, v, scale=scale) for q, k, v in zip(*splits, strict=True)]
        return torch.cat(parts, dim=2)

    def batched_dispatch() -> torch.Tensor:
        return qwen2_5_vl_vision.segment_attention(query, key, value, cu_seqlens, scale=scale)

    def attention() -> torch.Tensor:
        return block.attn(hidden, cu_seqlens=cu_seqlens, position_embeddings=embeddings)

    def whole() -> torch.Tensor:
        return block(hidden, cu_seqlens=cu_seqlens, position_embeddings=embeddings)

    with torch.inference_mode():
        loop_dispatch_s = best_of(repeats, loop_dispatch)
        batched_dispatch_s = best_of(repeats, batched_dispatch)
        loop_out = whole()
        loop_attention_s = best_of(repeats, attention)
        loop_block_s = best_of(repeats, whole)
        qwen2_5_vl_vision.apply(tower)
        try:
            batched_out = whole()
            batched_attention_s = best_of(repeats, attention)
            batched_block_s = best_of(repeats, whole)
        finally:
            qwen2_5_vl_vision.remove(tower)
    return {
        "segments": len(cu_seqlens) - 1,
        "loop_sdpa_calls": len(cu_seqlens) - 1,
        "batched_sdpa_calls": len(set((cu_seqlens[1:] - cu_seqlens[:-1]).tolist()) - {0}),
        "loop_sdpa_dispatch_ms": round(loop_dispatch_s * 1e3, 1),
        "batched_sdpa_dispatch_ms": round(batched_dispatch_s * 1e3, 1),
        "loop_attention_ms": round(loop_attention_s * 1e3, 1),
        "batched_attention_ms": round(batched_attention_s * 1e3, 1),
        "loop_block_ms": round(loop_block_s * 1e3, 1),
        "batched_block_ms": round(batched_block_s * 1e3, 1),
        "max_abs_difference": float((loop_out - batched_out).abs().max()),
        "max_abs_output": float(loop_out.abs().max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = {"machine": platform.processor() or platform.machine(), **measure(args.images, args.repeats)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
