"""runner.decoding: compiled static-cache decoding returns exactly what eager `generate` returns.

Every family's tiny checkpoint (real transformers classes, float32, CPU, torch.compile with inductor + gcc), driven
through its real adapter (load, prompt, processor, generation arguments): batches of 3, 2 and 4 samples with
different images and prompt lengths, with and without an early stop, compared token for token (shape and values)
with plain `model.generate`. One compilation per family: 3 is padded to the batch bucket 4, and 2 and 4 reuse it.
The fast tests check the bucket ladders, that padding rows and columns leave every real row's eager output as it
was, and the fallbacks with their reasons.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import StoppingCriteria

from runner.adapters import open_adapter
from runner.adapters.base import GREEDY
from runner.decoding import (
    PaddingRowsFinished,
    batch_bucket,
    length_bucket,
    make_decoder,
    media_token_ids,
    pad_batch,
    pad_columns_right,
    rope_type,
)
from runner.registry import MODELS, get_model

MODEL_NAMES = sorted(MODELS)
MAX_NEW_TOKENS = 8
QUERIES = (
    "describe the location in this panorama",
    "weather",
    "what are the people near the water doing today",
    "the buildings",
    "cars",
    "is it day or night and how do you know",
    "trees",
    "the sky",
    "the road and the street signs",
)
IMAGE_HEIGHTS = (96, 128, 160, 224)
REPO_ROOT = Path(__file__).resolve().parent.parent


def load_adapter(name: str, checkpoint: Path):
    return open_adapter(get_model(name), str(checkpoint), device=torch.device("cpu"), dtype=torch.float32)


def generate_kwargs(adapter, max_new_tokens: int = MAX_NEW_TOKENS, min_new_tokens: int = 0, **extra):
    """The arguments Adapter.generate passes to model.generate."""
    return {
        **GREEDY,
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": min_new_tokens or None,
        "pad_token_id": adapter.pad_token_id,
        **adapter.generation_kwargs(),
        **extra,
    }


def make_batch(adapter, size: int, seed: int) -> dict:
    """`size` samples: 2:1 random-pixel panoramas of mixed heights (different image token counts for the families
    that keep the resolution) and queries of different lengths (left padding inside the batch)."""
    rng = np.random.default_rng(seed)
    heights = [IMAGE_HEIGHTS[(seed + i) % len(IMAGE_HEIGHTS)] for i in range(size)]
    images = [Image.fromarray(rng.integers(0, 255, (h, 2 * h, 3), dtype=np.uint8)) for h in heights]
    prompts = [adapter.build_prompt(QUERIES[(seed * 3 + i) % len(QUERIES)]) for i in range(size)]
    return adapter.to_device(adapter.preprocess(images, prompts))


def answer_offset(adapter, inputs) -> int:
    return inputs["input_ids"].shape[1] if adapter.decoder_only else 0


def early_stop_ids(adapter, inputs, eager_ids: torch.Tensor) -> list[int]:
    """Stop tokens that end every row within a few steps (random weights rarely emit their EOS)."""
    step = answer_offset(adapter, inputs) + 2
    return sorted({int(token) for token in eager_ids[:, step]})


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory: pytest.TempPathFactory):
    # Graphs another test module compiled in this worker process (same model classes) would be reused silently.
    torch._dynamo.reset()
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    folder = tmp_path_factory.mktemp("torch_compile_cache")
    yield folder
    if previous is None:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    else:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous


# --- buckets ---------------------------------------------------------------------------------------------------


def test_batch_bucket():
    assert [batch_bucket(n) for n in (1, 2, 3, 5, 8, 9, 100, 128, 129)] == [1, 2, 4, 8, 8, 16, 128, 128, 256]
    # A compiled size that fits is reused (the last, smaller batch of a run and OOM halving compile nothing new).
    assert batch_bucket(3, {128}) == 128
    assert batch_bucket(2, {4, 8}) == 4
    assert batch_bucket(9, {8}) == 16
    with pytest.raises(ValueError, match="at least 1"):
        batch_bucket(0)


def test_length_bucket():
    lengths = (1, 16, 17, 24, 25, 33, 49, 65, 97, 1330 + 64, 2472 + 64)
    assert [length_bucket(n) for n in lengths] == [16, 16, 24, 24, 32, 48, 64, 96, 128, 1536, 3072]
    with pytest.raises(ValueError, match="at least 1"):
        length_bucket(0)


def test_make_decoder_kinds():
    assert make_decoder("eager").report() == {
        "decode": "eager",
        "requested": "eager",
        "compilations": 0,
        "compile_call_s": 0.0,
        "fallback_reason": None,
        "buckets": [],
    }
    with pytest.raises(ValueError, match="'jit'"):
        make_decoder("jit")


# --- padding never changes a real row (eager, no compilation) ------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_padding_rows_and_columns_leave_real_rows_unchanged(name, tiny_checkpoint):
    adapter = load_adapter(name, tiny_checkpoint(name))
    inputs = make_batch(adapter, 3, seed=5)
    media = media_token_ids(adapter.model)
    padded = pad_batch(inputs, 8, media)
    rows, columns = inputs["input_ids"].shape
    assert padded["input_ids"].shape == (8, columns)
    # Each padding row attends to exactly one token, a text token; no tensor but the token-aligned ones grows.
    assert padded["attention_mask"][rows:].sum(dim=1).tolist() == [1] * 5
    assert not any(int(t) in media for t in padded["input_ids"][rows:].flatten())
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.shape[:2] != inputs["input_ids"].shape:
            assert padded[key] is value, key
    if not adapter.decoder_only:
        padded = pad_columns_right(padded, columns + 7, media)
        assert padded["input_ids"].shape == (8, columns + 7)
        assert padded["attention_mask"][:, columns:].sum() == 0

    kwargs = generate_kwargs(adapter)
    with torch.inference_mode():
        eager = adapter.model.generate(**inputs, **kwargs)
        stop = early_stop_ids(adapter, inputs, eager)
        for extra in ({}, {"eos_token_id": stop}):
            reference = adapter.model.generate(**inputs, **kwargs, **extra)
            criterion = {"stopping_criteria": [PaddingRowsFinished(rows)]}
            with_padding = adapter.model.generate(**padded, **kwargs, **extra, **criterion)
            assert with_padding.shape[0] == 8
            assert torch.equal(with_padding[:rows], reference), extra
    assert reference.shape[1] < eager.shape[1]  # the stop tokens did end generation early


# --- compiled == eager for every family ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_compiled_equals_eager(name, tiny_checkpoint, compile_cache):
    torch._dynamo.reset()  # each model compiles its own graph here, whatever ran before in this process
    adapter = load_adapter(name, tiny_checkpoint(name))
    logs: list[str] = []
    decoder = make_decoder("compiled", cache_dir=compile_cache, log=logs.append)
    batches = [make_batch(adapter, size, seed) for size, seed in ((3, 1), (2, 2), (4, 3))]
    # Longest prompt first: the static cache transformers keeps on the model then never grows, so ONE compilation.
    batches.sort(key=lambda inputs: -inputs["input_ids"].shape[1])
    assert len({inputs["input_ids"].shape for inputs in batches}) == 3
    compared = 0
    with torch.inference_mode():
        for inputs in batches:
            eager_full = adapter.model.generate(**inputs, **generate_kwargs(adapter))
            stop = early_stop_ids(adapter, inputs, eager_full)
            for extra in ({}, {"eos_token_id": stop, "min_new_tokens": 1}):
                kwargs = generate_kwargs(adapter, **extra)
                eager = adapter.model.generate(**inputs, **kwargs)
                compiled = decoder.generate(adapter.model, inputs, **kwargs)
                assert compiled.shape == eager.shape, extra
                assert torch.equal(compiled, eager), extra
                assert adapter.decode(compiled, inputs) == adapter.decode(eager, inputs)
                compared += 1
    assert compared == 6
    report = decoder.report()
    if rope_type(adapter.model) == "dynamic":
        # InternVL2's InternLM2 (and so its tiny checkpoint) scales RoPE dynamically: ONE reason, eager decoding.
        assert report["decode"] == "eager" and "dynamic RoPE" in report["fallback_reason"], report
        assert len(logs) == 1 and "dynamic RoPE" in logs[0]
        return
    assert report["decode"] == "compiled" and report["fallback_reason"] is None, report
    assert logs == []
    assert report["compilations"] == 1, report
    (bucket,) = report["buckets"]
    assert bucket["batch"] == 4 and bucket["calls"] == 6
    longest = batches[0]["input_ids"].shape[1]
    if adapter.decoder_only:
        assert bucket["cache_len"] == length_bucket(longest + MAX_NEW_TOKENS) and bucket["encoder_len"] is None
    else:
        assert bucket["cache_len"] == length_bucket(1 + MAX_NEW_TOKENS) and bucket["encoder_len"] == length_bucket(
            longest
        )
    assert any(compile_cache.rglob("*")), "torch.compile wrote nothing into the cache folder"


@pytest.fixture(scope="module")
def compiled_llava(tiny_checkpoint, compile_cache):
    """LLaVA-1.5's tiny checkpoint with a compiled decoder that has run batch bucket 4 once."""
    adapter = load_adapter("llava-1.5-7b", tiny_checkpoint("llava-1.5-7b"))
    decoder = make_decoder("compiled", cache_dir=compile_cache, log=lambda line: None)
    with torch.inference_mode():
        decoder.generate(adapter.model, make_batch(adapter, 3, 1), **generate_kwargs(adapter))
    assert decoder.report()["buckets"][0]["batch"] == 4
    return adapter, decoder


@pytest.mark.slow
def test_compile_cache_is_reused_by_a_new_process(compiled_llava, tiny_checkpoint, compile_cache):
    """The inductor FX graph cache in the caller's folder serves the next process: nothing is compiled anew."""
    script = f"""
import json, sys, torch
from pathlib import Path
sys.path.insert(0, {str(REPO_ROOT)!r})
from torch._dynamo.utils import counters
from tests.test_decoding import load_adapter, make_batch, generate_kwargs
from runner.decoding import make_decoder
decoder = make_decoder("compiled", cache_dir={str(compile_cache)!r})
adapter = load_adapter("llava-1.5-7b", Path({str(tiny_checkpoint("llava-1.5-7b"))!r}))
with torch.inference_mode():
    decoder.generate(adapter.model, make_batch(adapter, 3, 1), **generate_kwargs(adapter))
inductor = counters["inductor"]
print(json.dumps({{"hit": inductor["fxgraph_cache_hit"], "miss": inductor["fxgraph_cache_miss"],
                  "report": decoder.report()}}))
"""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    second = json.loads(done.stdout.strip().splitlines()[-1])
    assert second["report"]["decode"] == "compiled" and second["report"]["compilations"] == 1
    assert second["hit"] >= 1 and second["miss"] == 0, second


class RaiseOutOfMemory(StoppingCriteria):
    """A CUDA out-of-memory error inside generate, as the decoder sees it (there is no GPU here to run out of):
    raised at the first step, after recording the batch size generate ran with."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None, **kwargs) -> torch.Tensor:
        self.rows.append(input_ids.shape[0])
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")


@pytest.mark.slow
def test_out_of_memory_propagates_and_the_failed_size_is_not_reused(compiled_llava):
    """The loop halves the batch on OOM; the decoder must let the error through (no fallback) and must not pad the
    halved batch back up to the compiled size that just failed."""
    adapter, decoder = compiled_llava
    out_of_memory = RaiseOutOfMemory()
    kwargs = generate_kwargs(adapter, stopping_criteria=[out_of_memory])
    with torch.inference_mode():
        with pytest.raises(torch.OutOfMemoryError):
            decoder.generate(adapter.model, make_batch(adapter, 3, 4), **kwargs)
        with pytest.raises(torch.OutOfMemoryError):
            decoder.generate(adapter.model, make_batch(adapter, 2, 5), **kwargs)
    assert out_of_memory.rows == [4, 2]  # 3 rows ran in the compiled size 4; after it failed, 2 rows run as 2
    report = decoder.report()
    assert report["decode"] == "compiled" and report["fallback_reason"] is None


# --- fallbacks -------------------------------------------------------------------------------------------------


def test_model_without_compile_support_falls_back_with_reason(tiny_checkpoint):
    adapter = load_adapter("llava-1.5-7b", tiny_checkpoint("llava-1.5-7b"))
    adapter.model._can_compile_fullgraph = False  # what a model class without torch.compile support declares
    logs: list[str] = []
    decoder = make_decoder("compiled", log=logs.append)
    inputs = make_batch(adapter, 3, 1)
    kwargs = generate_kwargs(adapter)
    with torch.inference_mode():
        expected = adapter.model.generate(**inputs, **kwargs)
        first = decoder.generate(adapter.model, inputs, **kwargs)
        second = decoder.generate(adapter.model, inputs, **kwargs)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    report = decoder.report()
    assert report["decode"] == "eager" and report["requested"] == "compiled" and report["compilations"] == 0
    assert "_can_compile_fullgraph is False" in report["fallback_reason"]
    assert logs == [f"decode: compiled -> eager: {report['fallback_reason']}"]  # logged once, not per batch


@pytest.mark.slow
def test_compile_failure_falls_back_with_reason(tiny_checkpoint):
    """A compiled path that fails at run time (here: a compile mode torch does not know) is given up after the
    first failure; that batch and every later one are generated eagerly, and the report says why."""
    adapter = load_adapter("llava-1.5-7b", tiny_checkpoint("llava-1.5-7b"))
    logs: list[str] = []
    decoder = make_decoder("compiled", log=logs.append, mode="no-such-mode")
    kwargs = generate_kwargs(adapter)
    with torch.inference_mode():
        for size, seed in ((3, 1), (2, 2)):
            inputs = make_batch(adapter, size, seed)
            expected = adapter.model.generate(**inputs, **kwargs)
            assert torch.equal(decoder.generate(adapter.model, inputs, **kwargs), expected)
    report = decoder.report()
    assert report["decode"] == "eager" and report["compilations"] == 0
    assert report["fallback_reason"].startswith("compiled generate failed: ")
    assert "no-such-mode" in report["fallback_reason"]
    assert len(logs) == 1


# --- Gemma 3: decode-step masks without the image-block overlay --------------------------------------------------


def test_gemma3_decode_mask_patch_builds_the_same_masks(tiny_checkpoint):
    """runner.patches.gemma3_decode_mask (applied by the compiled decoder): on every step of a static-cache
    generate, the patched mask builder returns exactly the masks transformers builds, and the tokens are eager's."""
    from runner.patches import gemma3_decode_mask

    adapter = load_adapter("gemma-3-4b", tiny_checkpoint("gemma-3-4b"))
    model = adapter.model
    inputs = make_batch(adapter, 3, 1)
    kwargs = generate_kwargs(adapter)
    original = type(model).create_masks_for_generate
    assert gemma3_decode_mask.apply(model) and gemma3_decode_mask.apply(model)
    patched = model.create_masks_for_generate
    steps: list[bool] = []

    def compare(*args, **mask_kwargs):
        expected, result = original(*args, **mask_kwargs), patched(*args, **mask_kwargs)
        assert expected.keys() == result.keys()
        assert all(torch.equal(expected[key], result[key]) for key in expected)
        steps.append(bool(mask_kwargs.get("is_first_iteration")))
        return result

    model.create_masks_for_generate = compare
    try:
        with torch.inference_mode():
            eager = model.generate(**inputs, **kwargs)
            static = model.generate(**inputs, **kwargs, cache_implementation="static", disable_compile=True)
    finally:
        gemma3_decode_mask.remove(model)
    assert torch.equal(static, eager)
    assert steps == [True] + [False] * (MAX_NEW_TOKENS - 1)  # the prefill keeps the overlay, decode steps drop it
    assert "create_masks_for_generate" not in vars(model)  # remove() restored the class's builder
    assert not gemma3_decode_mask.apply(load_adapter("llava-1.5-7b", tiny_checkpoint("llava-1.5-7b")).model)


@pytest.mark.slow
def test_the_runner_decodes_compiled_with_the_same_predictions_and_records_it(
    tiny_checkpoint, make_panorama_data, run_runner, tmp_path
):
    """`python -m runner --decode compiled` end to end: predictions equal to eager, the path and its compilations
    in `<model>_run.json`, and the requested path part of what a resume must match."""
    data = make_panorama_data(tmp_path / "data", num_images=3)
    checkpoint = tiny_checkpoint("llava-1.5-7b")
    common = ["--model", "llava-1.5-7b", "--model-path", checkpoint, "--data", data.data_file, "--batch-size", "4",
              "--max-new-tokens", "6", "--device", "cpu", "--no-progress"]  # fmt: skip
    eager = run_runner(*common, "--output-dir", tmp_path / "eager", timeout=600)
    compiled = run_runner(*common, "--output-dir", tmp_path / "compiled", "--decode", "compiled", timeout=900)
    by_id = {r.sample_id: r.prediction for r in eager.predictions}
    assert {r.sample_id: r.prediction for r in compiled.predictions} == by_id
    report = compiled.manifest.decode  # type: ignore[union-attr]
    assert report["decode"] == "compiled" and report["fallback_reason"] is None and 1 <= report["compilations"] <= 2
    assert eager.manifest.decode["decode"] == "eager"  # type: ignore[union-attr]
    assert compiled.manifest.decoding["decode"] == "compiled"  # type: ignore[union-attr]
    mixed = run_runner(*common, "--output-dir", tmp_path / "compiled", expect_ok=False)  # eager onto compiled
    assert mixed.returncode == 2 and "made with other arguments" in mixed.stderr
