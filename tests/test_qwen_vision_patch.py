"""runner.patches.qwen2_5_vl_vision: the batched window attention gives the loop's results, with far fewer calls.

On the tiny Qwen2.5-VL checkpoint (real transformers classes, float32, CPU): vision tower outputs within float32
rounding, identical greedy token ids through the real adapter, and the number of SDPA calls per forward drops from
one per window/image to one per distinct segment length.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.overrides import TorchFunctionMode

from runner.adapters import open_adapter
from runner.adapters.base import GREEDY
from runner.patches import qwen2_5_vl_vision
from runner.registry import get_model

MODEL = "qwen2.5-vl-3b"
# Different sizes and aspect ratios: windows of several lengths (interior, edge, corner) and images of different
# lengths in the full-attention layer.
IMAGE_SIZES = ((140, 84), (308, 154), (196, 196))  # merged grids 3x5, 2x5, 4x4 (the tiny pixel budget)


class CountSdpa(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if func is F.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def adapter(tiny_checkpoint):
    return open_adapter(get_model(MODEL), str(tiny_checkpoint(MODEL)), device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture(scope="module")
def inputs(adapter):
    rng = np.random.default_rng(7)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in IMAGE_SIZES]
    prompts = [adapter.build_prompt(text) for text in ("describe the location", "the weather", "people here")]
    return adapter.to_device(adapter.preprocess(images, prompts))


def vision(adapter, inputs):
    visual = adapter.model.model.visual
    with torch.inference_mode():
        return visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])


def expected_sdpa_calls(adapter, inputs) -> tuple[int, int]:
    """(calls of transformers' loop, calls of the batched forward) for one vision forward, from the segment layout."""
    from transformers.vision_utils import get_vision_window_index

    visual = adapter.model.model.visual
    config = visual.config
    grid = inputs["image_grid_thw"]
    _, cu_windows = get_vision_window_index(grid, config.spatial_merge_size, config.window_size, config.patch_size)
    window_lengths = (cu_windows[1:] - cu_windows[:-1]).tolist()
    image_lengths = (grid[:, 0] * grid[:, 1] * grid[:, 2]).tolist()
    full = len(config.fullatt_block_indexes)
    windowed = config.depth - full
    loop = windowed * len(window_lengths) + full * len(image_lengths)
    batched = windowed * len(set(window_lengths)) + full * len(set(image_lengths))
    assert len(set(window_lengths)) >= 3, "the images must give windows of several lengths to test the grouping"
    return loop, batched


@pytest.mark.parametrize("lengths", [[16, 16, 8, 16, 4, 8, 1], [8, 8, 8, 8, 8]], ids=["mixed", "equal"])
def test_segment_attention_matches_one_call_per_segment(lengths):
    torch.manual_seed(0)
    heads, head_dim = 3, 8
    tokens = sum(lengths)
    query, key, value = (torch.randn(tokens, heads, head_dim) for _ in range(3))
    cu_seqlens = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)
    expected = []
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist(), strict=True):
        q, k, v = (t[start:end].transpose(0, 1)[None] for t in (query, key, value))
        expected.append(F.scaled_dot_product_attention(q, k, v, scale=0.3)[0].transpose(0, 1))
    result = qwen2_5_vl_vision.segment_attention(query, key, value, cu_seqlens, scale=0.3)
    assert result.shape == (tokens, heads, head_dim)
    torch.testing.assert_close(result, torch.cat(expected), rtol=1e-6, atol=1e-6)
    # No segment attends across its boundary: changing one segment leaves every other one as it was.
    start, end = int(cu_seqlens[3]), int(cu_seqlens[4])
    changed_key = key.clone()
    changed_key[start:end] += 5.0
    changed = qwen2_5_vl_vision.segment_attention(query, changed_key, value, cu_seqlens, scale=0.3)
    outside = torch.ones(tokens, dtype=torch.bool)
    outside[start:end] = False
    assert torch.equal(changed[outside], result[outside])
    assert not torch.equal(changed[start:end], result[start:end])


def test_vision_tower_outputs_and_calls(adapter, inputs):
    loop_calls, batched_calls = expected_sdpa_calls(adapter, inputs)
    with CountSdpa() as counted:
        reference = vision(adapter, inputs)
    assert counted.calls == loop_calls

    assert qwen2_5_vl_vision.apply(adapter.model) == adapter.model.config.vision_config.depth
    assert qwen2_5_vl_vision.apply(adapter.model) == adapter.model.config.vision_config.depth  # idempotent
    try:
        with CountSdpa() as counted:
            patched = vision(adapter, inputs)
        assert counted.calls == batched_calls < loop_calls
        torch.testing.assert_close(patched.last_hidden_state, reference.last_hidden_state, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(patched.pooler_output, reference.pooler_output, rtol=1e-5, atol=1e-5)
    finally:
        qwen2_5_vl_vision.remove(adapter.model)
    with CountSdpa() as counted:
        vision(adapter, inputs)
    assert counted.calls == loop_calls  # remove() restored transformers' forward


def test_greedy_predictions_identical(adapter, inputs):
    kwargs = dict(**GREEDY, max_new_tokens=10, pad_token_id=adapter.pad_token_id, **adapter.generation_kwargs())
    with torch.inference_mode():
        reference = adapter.model.generate(**inputs, **kwargs)
        qwen2_5_vl_vision.apply(adapter.model)
        try:
            patched = adapter.model.generate(**inputs, **kwargs)
        finally:
            qwen2_5_vl_vision.remove(adapter.model)
    assert patched.shape == reference.shape
    assert torch.equal(patched, reference)
    assert adapter.decode(patched, inputs) == adapter.decode(reference, inputs)


def test_other_attention_implementations_keep_transformers_forward(adapter, inputs):
    """`eager` attention is not replaced (the batched forward is SDPA): same call path, same numbers as before."""
    visual = adapter.model.model.visual
    previous = visual.config._attn_implementation
    qwen2_5_vl_vision.apply(adapter.model)
    try:
        visual.config._attn_implementation = "eager"
        with CountSdpa() as counted:
            vision(adapter, inputs)
        assert counted.calls == 0  # transformers' eager attention uses matmul + softmax, no SDPA
    finally:
        visual.config._attn_implementation = previous
        qwen2_5_vl_vision.remove(adapter.model)
