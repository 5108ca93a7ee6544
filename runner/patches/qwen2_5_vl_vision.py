"""Qwen2.5-VL vision tower: one batched SDPA per group of equal-length segments instead of one SDPA per segment.

Without flash-attn, transformers 5.24's `Qwen2_5_VLVisionAttention.forward` splits the packed sequence at
`cu_seqlens` and calls attention once per segment in a Python loop: once per window in the 28 window-attention
layers (about 91 windows for a 1400 x 700 image, so ~2,500 calls per image) and once per image in the 4
full-attention layers. Here the segments are grouped by length and each group runs as ONE SDPA call over a
(segments, heads, length, head_dim) batch, without a mask, so every segment attends to exactly the tokens it did
before; a panorama has at most 4 distinct window lengths (interior, right edge, bottom edge, corner).

Only the `sdpa` attention implementation is replaced (the runner's default); `flash_attention_*` (already varlen)
and `eager` keep transformers' forward. The projections, the vision rotary embedding and the output projection are
transformers' own modules and function; only the attention dispatch differs. Results agree with the loop within
float32 rounding (the same math per segment in a batched kernel; tests/test_qwen_vision_patch.py).
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

PATCHED_ATTRIBUTE = "_vlm_ablation_batched_windows"


def segment_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention within each segment [cu_seqlens[i], cu_seqlens[i+1]) of a packed sequence.

    query/key/value: (tokens, heads, head_dim). Returns (tokens, heads, head_dim). One SDPA call per distinct
    segment length: the segments of one length are gathered (whole token rows) into a (segments, heads, length,
    head_dim) batch, or viewed as one when they tile the sequence in order (equal-size images in a full-attention
    layer), and written back in place.
    """
    tokens, heads, head_dim = query.shape
    starts = cu_seqlens[:-1].to(device=query.device, dtype=torch.long)
    lengths = cu_seqlens[1:].to(device=query.device, dtype=torch.long) - starts
    distinct = sorted(set(lengths.tolist()) - {0})  # one host sync (transformers' loop calls .tolist() as well)
    if len(distinct) == 1 and distinct[0] * int((lengths > 0).sum()) == tokens:
        # Equal segments that tile the sequence: a view, nothing is copied.
        count, length = tokens // distinct[0], distinct[0]
        batched = [t.reshape(count, length, heads, head_dim).transpose(1, 2) for t in (query, key, value)]
        attended = F.scaled_dot_product_attention(*batched, scale=scale)
        return attended.transpose(1, 2).reshape(tokens, heads, head_dim)
    output = torch.empty_like(query)
    for length in distinct:
        group_starts = starts[lengths == length]
        count = group_starts.shape[0]
        index = (group_starts[:, None] + torch.arange(length, device=query.device)).reshape(-1)
        batched = [
            t.index_select(0, index).reshape(count, length, heads, head_dim).transpose(1, 2)
            for t in (query, key, value)
        ]
        attended = F.scaled_dot_product_attention(*batched, scale=scale)
        output.index_copy_(0, index, attended.transpose(1, 2).reshape(count * length, heads, head_dim))
    return output


def _batched_forward(
    self: Any,
    hidden_states: torch.Tensor,
    cu_seqlens: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_seqlen: int | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    if self.config._attn_implementation != "sdpa" or self.training:
        return type(self).forward(self, hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    tokens = hidden_states.shape[0]
    query, key, value = self.qkv(hidden_states).reshape(tokens, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
    attended = segment_attention(query, key, value, cu_seqlens, self.scaling)
    return self.proj(attended.reshape(tokens, -1))


def apply(model: Any) -> int:
    """Replace the forward of every Qwen2_5_VLVisionAttention in `model` (instance attributes: the class and other
    models are untouched); idempotent. Returns how many modules now run the batched forward."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionAttention

    count = 0
    for module in model.modules():
        if type(module) is Qwen2_5_VLVisionAttention:
            if not getattr(module, PATCHED_ATTRIBUTE, False):
                module.forward = types.MethodType(_batched_forward, module)
                setattr(module, PATCHED_ATTRIBUTE, True)
            count += 1
    return count


def remove(model: Any) -> None:
    """Undo apply(): the modules use the class's forward again."""
    for module in model.modules():
        if getattr(module, PATCHED_ATTRIBUTE, False):
            del module.forward
            delattr(module, PATCHED_ATTRIBUTE)
