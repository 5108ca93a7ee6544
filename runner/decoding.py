"""How batched greedy generation runs: `eager` (plain `model.generate`) or `compiled` (static KV cache, compiled step).

On a GPU, Hugging Face `generate` with its default dynamic cache is host-bound: every decode step launches hundreds of
small kernels from Python (docs/PERFORMANCE.md). `compiled` gives transformers a static KV cache and lets it compile
the decode step (`cache_implementation="static"` + `compile_config`, transformers' own generation loop; CUDA graphs
on CUDA via mode "reduce-overhead"). The prefill, and with it every vision tower, stays eager. A compiled step is
specialised to its shapes, so shapes come from a few buckets:

- batch: the smallest batch size already compiled that fits, else the next power of two. Extra rows are padding
  rows: one attended text token (the last real row's last prompt token) and no image token, so no image tensor
  changes; a stopping criterion marks them finished from the first step, so they never keep generation going.
  After a CUDA out-of-memory error the failed size is not reused (the loop's halved batch is not padded back up).
- KV cache length: the next size of 16, 24, 32, 48, 64, 96, ... (powers of two and 1.5x between them) that holds
  prompt + max_new_tokens; transformers keeps the largest cache length seen on a model, so the length only grows.
  The decode step sees the prompt only through the cache length, so decoder-only prompts are NOT padded: the
  prefill runs on exactly the tensors the processor made.
- encoder-decoder models (BLIP-2 Flan-T5): the encoder output is an input of every decode step, so the encoder
  input is padded on the right (masked) to the same ladder, never shorter than before.

What `generate()` returns has the eager result's shape for the real rows: padding rows are sliced off, no prompt
column is added, and generation stops when the real rows stop. Values agree token for token with eager in float32
on the 8 tiny checkpoints (tests/test_decoding.py); compiled kernels round differently in the last bits, so a
near-tie between two logits could still flip on another device or dtype.

Host reads of device values (each a host-device sync on a GPU) per decode step, counted on the CPU with the
profiler (`aten::_local_scalar_dense`): eager 2 (Gemma 3: 3), compiled 1, the stop check
(`bool(unfinished.max() == 0)`; transformers 5.24 defers it by a step only on MPS). The compiled forward has none.
For Gemma 3, runner.patches.gemma3_decode_mask (applied here) removes host work the static-cache path adds per step.

A model whose cache or generate path refuses (remote code, no torch.compile support declared, a transformers
without CompileConfig, a compile error, more recompilations than the recompile limit) falls back to eager for the
rest of the run with ONE reason, logged once and returned by `report()`. Use one decoder per loaded model.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from runner.patches import gemma3_decode_mask
from runner.registry import DECODE_KINDS  # noqa: E402  (the one list, also read by the torch-free CLI)

DecodeKind = Literal["eager", "compiled"]

MIN_LENGTH_BUCKET = 16
# The sliding-window cache layer (Gemma 3) tracks its fill level in a Python int; compiled as a constant, every decode
# step would recompile. Marking it dynamic keeps one graph per shape bucket.
DYNAMIC_CACHE_INTS = r".*cumulative_length_int"
# Graphs one compiled forward may hold per model (torch's default is 8); beyond it the run falls back to eager
# with that reason instead of silently running eager frames.
RECOMPILE_LIMIT = 32
# Config attributes naming the token ids the processor expands to image/video features. A padding row must hold none
# of them: multimodal models scatter one image's features into each such token.
MEDIA_TOKEN_ATTRIBUTES = ("image_token_id", "image_token_index", "video_token_id", "video_token_index")


def batch_bucket(size: int, compiled: Iterable[int] = ()) -> int:
    """The batch size a compiled step runs for `size` real rows: the smallest already compiled size that fits (padding
    rows cost little in a host-bound decode step, a compilation costs seconds to minutes), else the next power of 2."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    fitting = [bucket for bucket in compiled if bucket >= size]
    return min(fitting) if fitting else 1 << (size - 1).bit_length()


def length_bucket(length: int, minimum: int = MIN_LENGTH_BUCKET) -> int:
    """The smallest of minimum x (1, 1.5, 2, 3, 4, 6, 8, ...) that is at least `length`: at most 50% waste."""
    if length < 1:
        raise ValueError(f"length must be at least 1, got {length}")
    size = minimum
    while True:
        if size >= length:
            return size
        if size + size // 2 >= length:
            return size + size // 2
        size *= 2


class Decoder:
    """Runs `model.generate` for one loaded model; `report()` says how it ran (for the run manifest)."""

    kind: str = "eager"

    def generate(self, model: Any, inputs: dict[str, Any], **generate_kwargs: Any) -> torch.Tensor:
        return model.generate(**inputs, **generate_kwargs)

    def report(self) -> dict[str, Any]:
        return {"decode": "eager", "requested": self.kind, "compilations": 0, "compile_call_s": 0.0,
                "fallback_reason": None, "buckets": []}  # fmt: skip


class EagerDecoder(Decoder):
    """Exactly today's `model.generate(**inputs, **generate_kwargs)` (dynamic cache, nothing compiled)."""

    kind = "eager"


class CompiledDecoder(Decoder):
    kind = "compiled"

    def __init__(self, log: Callable[[str], None], mode: str | None = None):
        self._log = log
        self._mode = mode  # None: "reduce-overhead" (CUDA graphs) on CUDA, "default" elsewhere
        self._compile_config: Any = None
        self._checked = False
        self.fallback_reason: str | None = None
        self.compilations = 0
        self.compile_call_s = 0.0  # wall time of the generate calls that compiled something (compile + that batch)
        self._buckets: dict[tuple[int, int, int | None], int] = {}  # (batch, cache, encoder length) -> calls
        self._batch_sizes: set[int] = set()
        self._encoder_length = 0

    # --- the one entry point ------------------------------------------------------------------------------

    def generate(self, model: Any, inputs: dict[str, Any], **generate_kwargs: Any) -> torch.Tensor:
        if not self._checked:
            self._checked = True
            reason = refusal_reason(model, inputs, generate_kwargs)
            if reason is not None:
                self._fall_back(reason)
        if self.fallback_reason is not None:
            return model.generate(**inputs, **generate_kwargs)
        try:
            return self._generate_compiled(model, inputs, generate_kwargs)
        except torch.OutOfMemoryError:
            # The loop halves the batch and retries: padding the smaller batch back up to a compiled size that did
            # not fit would fail again, so sizes from the one that failed up are no longer reused.
            failed = batch_bucket(inputs["input_ids"].shape[0], self._batch_sizes)
            self._batch_sizes = {size for size in self._batch_sizes if size < failed}
            raise
        except Exception as error:  # noqa: BLE001  (any refusal of the compiled path: one reason, then eager)
            first_line = (str(error).strip().splitlines() or [""])[0][:300]
            self._fall_back(f"compiled generate failed: {type(error).__name__}: {first_line}")
            return model.generate(**inputs, **generate_kwargs)

    def report(self) -> dict[str, Any]:
        return {
            "decode": "eager" if self.fallback_reason is not None else "compiled",
            "requested": "compiled",
            "compilations": self.compilations,
            "compile_call_s": round(self.compile_call_s, 3),
            "fallback_reason": self.fallback_reason,
            "buckets": [
                {"batch": batch, "cache_len": cache, "encoder_len": encoder, "calls": calls}
                for (batch, cache, encoder), calls in sorted(self._buckets.items(), key=lambda item: str(item[0]))
            ],
        }

    # --- internals ----------------------------------------------------------------------------------------

    def _fall_back(self, reason: str) -> None:
        self.fallback_reason = reason
        self._log(f"decode: compiled -> eager: {reason}")

    def _config(self, device: torch.device) -> Any:
        if self._compile_config is None:
            from transformers import CompileConfig

            mode = self._mode or ("reduce-overhead" if device.type == "cuda" else "default")
            config = CompileConfig(fullgraph=False, dynamic=False, mode=mode)
            config._compile_all_devices = True  # transformers compiles only on accelerators unless told otherwise
            self._compile_config = config
        return self._compile_config

    def _generate_compiled(self, model: Any, inputs: dict[str, Any], kwargs: dict[str, Any]) -> torch.Tensor:
        input_ids = inputs["input_ids"]
        real_rows, prompt_length = input_ids.shape
        max_new_tokens = int(kwargs["max_new_tokens"])
        encoder_decoder = is_encoder_decoder(model)
        media_ids = media_token_ids(model)

        rows = batch_bucket(real_rows, self._batch_sizes)
        padded = dict(inputs)
        if rows > real_rows and padding_row_token(padded, media_ids) is None:
            rows = real_rows  # no safe padding row (never seen with the 8 families): compile this exact size
        if rows > real_rows:
            padded = pad_batch(padded, rows, media_ids)
        encoder_length = None
        if encoder_decoder:
            # Like transformers' decoder cache, the encoder length only grows: a shorter batch reuses the graph.
            encoder_length = max(length_bucket(prompt_length), self._encoder_length)
            self._encoder_length = encoder_length
            padded = pad_columns_right(padded, encoder_length, media_ids)
            cache_length = length_bucket(1 + max_new_tokens)  # decoder start token + new tokens
        else:
            cache_length = length_bucket(prompt_length + max_new_tokens)

        stopping = StoppingCriteriaList(list(kwargs.get("stopping_criteria") or []))
        if rows > real_rows:
            stopping.append(PaddingRowsFinished(real_rows))
        call_kwargs = {
            **kwargs,
            "cache_implementation": "static",
            "max_cache_len": cache_length,
            "compile_config": self._config(input_ids.device),
            "stopping_criteria": stopping,
        }
        gemma3_decode_mask.apply(model)  # no-op for other models; see runner/patches/gemma3_decode_mask.py
        graphs_before = compiled_graphs()
        started = time.perf_counter()
        with (
            torch.compiler.config.patch(dynamic_sources=DYNAMIC_CACHE_INTS),
            torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True),
        ):
            output = model.generate(**padded, **call_kwargs)
        new_graphs = compiled_graphs() - graphs_before
        if new_graphs:
            self.compilations += new_graphs
            self.compile_call_s += time.perf_counter() - started
        self._batch_sizes.add(rows)
        effective_cache = max(cache_length, previous_cache_length(model))
        key = (rows, effective_cache, encoder_length)
        self._buckets[key] = self._buckets.get(key, 0) + 1
        return output[:real_rows]


class PaddingRowsFinished(StoppingCriteria):
    """Stopping criterion: every row from `real_rows` on is a padding row and counts as finished from the first
    step, so generation ends when the real rows end, exactly as it would without them. No host sync: a constant."""

    def __init__(self, real_rows: int):
        self.real_rows = real_rows
        self._done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor | None, **kwargs: Any) -> torch.Tensor:
        if self._done is None or self._done.shape[0] != input_ids.shape[0] or self._done.device != input_ids.device:
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            done[self.real_rows :] = True
            self._done = done
        return self._done


# --- checks and tensor helpers ---------------------------------------------------------------------------------


def refusal_reason(model: Any, inputs: dict[str, Any], kwargs: dict[str, Any]) -> str | None:
    """Why this model/transformers cannot take the compiled path at all (None: it can). Checked once per decoder."""
    try:
        from transformers import CompileConfig, StaticCache  # noqa: F401
    except ImportError:
        import transformers

        return f"transformers {transformers.__version__} has no CompileConfig/StaticCache"
    module = type(model).__module__
    if module.startswith("transformers_modules"):
        return f"{type(model).__name__} is remote code: its generate() takes no static cache or compile config"
    if not getattr(model, "_can_compile_fullgraph", False):
        return f"{type(model).__name__} does not declare torch.compile support (_can_compile_fullgraph is False)"
    if not isinstance(inputs.get("input_ids"), torch.Tensor) or inputs["input_ids"].ndim != 2:
        return "the inputs have no 2-D input_ids"
    if kwargs.get("max_new_tokens") is None:
        return "max_new_tokens was not given (the static cache is sized from it)"
    if not hasattr(torch.compiler, "config") or not hasattr(torch.compiler.config, "dynamic_sources"):
        return f"torch {torch.__version__} has no torch.compiler.config.dynamic_sources"
    if rope_type(model) == "dynamic":
        # Dynamic NTK RoPE recomputes its frequencies from the sequence length (InternVL2's InternLM2): every decode
        # step would be a new graph.
        return "dynamic RoPE scaling (rope_type dynamic) changes with the sequence length: every step would recompile"
    return None


def rope_type(model: Any) -> str | None:
    config = model.config
    text_config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    for name in ("rope_parameters", "rope_scaling"):
        value = getattr(text_config, name, None)
        if isinstance(value, dict):
            return value.get("rope_type") or value.get("type")
    return None


def is_encoder_decoder(model: Any) -> bool:
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(config, "is_encoder_decoder", False) or getattr(text_config, "is_encoder_decoder", False))


def media_token_ids(model: Any) -> set[int]:
    ids: set[int] = set()
    for config in (model.config, getattr(model.config, "text_config", None)):
        for name in MEDIA_TOKEN_ATTRIBUTES:
            value = getattr(config, name, None)
            if isinstance(value, int):
                ids.add(value)
    return ids


def previous_cache_length(model: Any) -> int:
    """The static cache length transformers will reuse: GenerationMixin._prepare_static_cache keeps the largest one
    seen on the module that ran generate (the model itself, or its language model for BLIP-2 / InstructBLIP)."""
    candidates = (model, getattr(model, "language_model", None))
    return max(int(getattr(module, "_previous_max_cache_length", 0) or 0) for module in candidates)


def compiled_graphs() -> int:
    """Graphs torch.compile has captured and compiled in this process: one per compilation of the decode step
    (a recompilation counts again; a graph break would add one; an inductor cache hit still counts)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _attention_mask(inputs: dict[str, Any]) -> torch.Tensor:
    mask = inputs.get("attention_mask")
    return mask if isinstance(mask, torch.Tensor) else torch.ones_like(inputs["input_ids"])


def padding_row_token(inputs: dict[str, Any], media_ids: set[int]) -> tuple[int, int] | None:
    """(column, token id) of the last real row's last attended token, the one token a padding row attends to;
    None when it is a media token (a padding row must not claim image features)."""
    mask = _attention_mask(inputs)[-1]
    attended = torch.nonzero(mask).flatten()
    if attended.numel() == 0:
        return None
    column = int(attended[-1])
    token = int(inputs["input_ids"][-1, column])
    return None if token in media_ids else (column, token)


def pad_batch(inputs: dict[str, Any], rows: int, media_ids: set[int]) -> dict[str, Any]:
    """Add padding rows up to `rows`: each attends to one text token; tensors shaped like input_ids (token type ids)
    get 0 (text) there; image tensors are left as they are, since no padding row holds an image token."""
    found = padding_row_token(inputs, media_ids)
    if found is None:
        raise ValueError("no padding row is possible for these inputs")
    column, token = found
    input_ids = inputs["input_ids"]
    extra = rows - input_ids.shape[0]
    padded = dict(inputs)
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.shape[:2] == input_ids.shape:
            if key == "input_ids":
                fill = torch.full((extra, *value.shape[1:]), token, dtype=value.dtype, device=value.device)
            else:
                fill = torch.zeros((extra, *value.shape[1:]), dtype=value.dtype, device=value.device)
                if key == "attention_mask":
                    fill[:, column] = 1
            padded[key] = torch.cat([value, fill], dim=0)
    if "attention_mask" not in padded:
        mask = torch.zeros((rows, input_ids.shape[1]), dtype=torch.long, device=input_ids.device)
        mask[: input_ids.shape[0]] = 1
        mask[input_ids.shape[0] :, column] = 1
        padded["attention_mask"] = mask
    return padded


def pad_columns_right(inputs: dict[str, Any], length: int, media_ids: set[int]) -> dict[str, Any]:
    """Masked columns on the right up to `length` (encoder inputs): token-aligned tensors get the padding-row token
    (input_ids) or 0; the attention mask gets 0, so no real token attends to them."""
    input_ids = inputs["input_ids"]
    extra = length - input_ids.shape[1]
    if extra <= 0:
        return inputs
    found = padding_row_token(inputs, media_ids)
    token = found[1] if found is not None else 0
    padded = dict(inputs)
    if "attention_mask" not in padded:
        padded["attention_mask"] = torch.ones_like(input_ids)
    for key, value in list(padded.items()):
        if isinstance(value, torch.Tensor) and value.shape[:2] == input_ids.shape:
            fill_value = token if key == "input_ids" else 0
            fill = torch.full((value.shape[0], extra, *value.shape[2:]), fill_value, dtype=value.dtype,
                              device=value.device)  # fmt: skip
            padded[key] = torch.cat([value, fill], dim=1)
    return padded


def make_decoder(
    kind: str,
    cache_dir: str | Path | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    mode: str | None = None,
) -> Decoder:
    """The decoder for `--decode KIND`. `cache_dir` keeps torch.compile's caches (inductor FX graphs, kernels)
    across runs: set before the first compilation of the process (TORCHINDUCTOR_CACHE_DIR)."""
    if kind not in DECODE_KINDS:
        raise ValueError(f"decode must be one of {DECODE_KINDS}, got {kind!r}")
    if kind == "eager":
        return EagerDecoder()
    if cache_dir is not None:
        folder = Path(cache_dir).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return CompiledDecoder(log=log, mode=mode)
