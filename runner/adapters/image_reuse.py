"""Encode each image once: the vision tower runs once per distinct image, and every query of that image reuses it.

QuIC-360 asks about 3 queries per panorama, and the runner groups a panorama's queries into the same or
consecutive batches (runner/loop.py). Here the architecture's image-feature call is wrapped on the loaded model:

- `get_image_features` of the base model for most architectures (transformers' `generate` calls it once before
  the prefill and hands its output to the forward as `mm_encoder_outputs`);
- the vision model's `forward` for BLIP-2, InstructBLIP and Mllama, whose generate/forward call the vision model
  directly. InstructBLIP's Q-Former reads the instruction, so ITS output is never reused; the ViT before it reads
  only pixels, and only the ViT's output is.

During one `generate` call (`ImageReuse.batch`), the runner names each row's image by a hash of its pixels
(`image_content_key`). The wrapper splits the call's pixel inputs per image (the architecture's layout: one entry
per row, Qwen's flat patches with one grid per image, InternVL's flat tiles, or Perception LM's tiles per row),
runs the ORIGINAL method once on the images it has not encoded yet, splits that output per image, and returns what
the call would have returned for every row: the same fields, per-row features in row order. Features stay in a
small cache (keyed by the hash, bounded in bytes) for the next batches. Outside a `batch` context the wrapper is
the original method.

Nothing is approximated: a row's features are the ones its image gives (vision towers treat each image or tile
independently), so predictions equal those of a run without reuse (tests/test_image_reuse.py, every architecture,
fp32 on the CPU; in bf16 on a GPU a tower run over fewer images may round differently in the last bits, as between
batch sizes). An input or output the layout does not explain turns reuse off for the rest of the
run with ONE reason (logged, in the manifest) and that call runs unchanged. Architectures not listed in
`REUSE_RULES` run without reuse; `UNSUPPORTED` says why for those known to be unsafe or unverified.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from PIL import Image
from transformers.utils import ModelOutput

# Cross-batch cache of per-image features. With a panorama's queries grouped, a batch shares at most its first
# image with the previous one; 256 MiB holds ~18 LLaVA-NeXT panoramas (~1,750 tokens x 4,096 x bf16) or ~50 of
# Qwen2.5-VL. Within one batch every distinct image's features are held regardless (the batch needs them).
FEATURE_CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class ReuseRule:
    """How one architecture's image-feature call is split per image.

    hook: "get_image_features" (method of the base model) or "vision_model" (forward of the vision model module).
    layout: "rows" (every image tensor has one entry per row), "row_tiles" (as "rows", but pixel_values is
      (rows, tiles, channels, height, width) and the output has one entry per tile, row after row: Perception LM),
      "grid" (flat patches, `image_grid_thw` gives each image's patch grid: Qwen-VL), "tiles" (flat tiles, equal
      image tokens per tile: InternVL; each row's tile count follows from its image-token count in input_ids).
    fields: output fields the model reads, each holding one entry per image or per unit (patch, tile), as a tensor
      (first dimension) or a list/tuple.
    layered_fields: output fields that are a list over layers, each per image (Qwen3-VL's DeepStack features).
    """

    hook: Literal["get_image_features", "vision_model"]
    layout: Literal["rows", "row_tiles", "grid", "tiles"]
    fields: tuple[str, ...] = ("pooler_output",)
    layered_fields: tuple[str, ...] = ()


_FEATURES_ROWS = ReuseRule("get_image_features", "rows")
_VISION_MODEL_ROWS = ReuseRule("vision_model", "rows", fields=("last_hidden_state", "pooler_output"))
# Keyed by config.model_type; each one verified in tests/test_image_reuse.py on its tiny checkpoint.
REUSE_RULES: dict[str, ReuseRule] = {
    "llava": _FEATURES_ROWS,
    "llava_next": _FEATURES_ROWS,
    "llava_onevision": _FEATURES_ROWS,
    "gemma3": _FEATURES_ROWS,
    "paligemma": _FEATURES_ROWS,
    "idefics3": _FEATURES_ROWS,
    "smolvlm": _FEATURES_ROWS,  # Idefics3's layout: (rows, tiles) pixels, all-zero padding tiles dropped; a list out
    "gemma3n": _FEATURES_ROWS,  # the MobileNetV5 tower only; audio has its own get_audio_features, never wrapped
    "florence2": _FEATURES_ROWS,
    "qwen2_vl": ReuseRule("get_image_features", "grid"),
    "qwen2_5_vl": ReuseRule("get_image_features", "grid"),
    "qwen3_vl": ReuseRule("get_image_features", "grid", layered_fields=("deepstack_features",)),
    "internvl": ReuseRule("get_image_features", "tiles"),
    "aya_vision": ReuseRule("get_image_features", "tiles"),
    "perception_lm": ReuseRule("get_image_features", "row_tiles"),
    "blip-2": _VISION_MODEL_ROWS,
    "instructblip": _VISION_MODEL_ROWS,
    "mllama": ReuseRule("vision_model", "rows", fields=("last_hidden_state",)),
}
UNSUPPORTED: dict[str, str] = {
    "lfm2_vl": "its pixel inputs are flat tiles whose image-token counts differ (a thumbnail has more), and the "
    "processor gives no tile count per image, so a batch's tiles cannot be assigned to images",
    "internvl_chat": "OpenGVLab's remote code (transformers 4.46) computes image features inside its own generate()",
}


class ReuseNotApplicable(Exception):
    """This call's inputs or outputs do not fit the architecture's layout: reuse goes off, with this reason."""


def image_content_key(image: Image.Image) -> str:
    """A hash of the pixels the processor gets (mode, size, bytes): equal keys mean equal vision-tower inputs."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def refusal_reason(model: Any) -> str | None:
    """Why this model's image features cannot be reused here (None: they can)."""
    model_type = str(getattr(model.config, "model_type", None))
    if model_type in UNSUPPORTED:
        return f"{model_type}: {UNSUPPORTED[model_type]}"
    rule = REUSE_RULES.get(model_type)
    if rule is None:
        return f"model_type {model_type!r} is not one the runner has verified image reuse for"
    if _hook_target(model, rule) is None:
        return f"{type(model).__name__} has no {rule.hook} to wrap"
    return None


def idle_report(requested: bool) -> dict[str, Any]:
    """ImageReuse.report() of a run that loaded no model (nothing left to caption)."""
    return {"requested": "on" if requested else "off", "active": False, "reason": None, "image_encodings": 0,
            "cache_hits": 0}  # fmt: skip


def _hook_target(model: Any, rule: ReuseRule) -> tuple[Any, str] | None:
    """(object, attribute) whose callable is wrapped."""
    base = getattr(model, "base_model", model)
    if rule.hook == "get_image_features":
        return (base, "get_image_features") if callable(getattr(base, "get_image_features", None)) else None
    for owner in (base, model):
        vision = getattr(owner, "vision_model", None)
        if isinstance(vision, torch.nn.Module):
            return vision, "forward"
    return None


class _Slot:
    """What the installed wrapper calls through: the original callable and the reuse state active on this model."""

    def __init__(self, original: Callable[..., Any]):
        self.original = original
        self.active: ImageReuse | None = None


def _install(owner: Any, attribute: str) -> _Slot:
    """Wrap owner.attribute once per model object (a second adapter on the same model shares the wrapper)."""
    current = getattr(owner, attribute)
    slot = getattr(current, "_image_reuse_slot", None)
    if isinstance(slot, _Slot):
        return slot
    slot = _Slot(current)

    @functools.wraps(current)  # transformers reads the signature to choose the call's arguments
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if slot.active is None:
            return slot.original(*args, **kwargs)
        return slot.active.call(slot.original, args, kwargs)

    wrapped._image_reuse_slot = slot  # type: ignore[attr-defined]
    setattr(owner, attribute, wrapped)
    return slot


@dataclass
class _Batch:
    keys: list[str] | None  # one per row; None: reuse off for this call (the tower still counts its images)
    rows: int
    input_ids: torch.Tensor | None


@dataclass
class _Split:
    """Per-image pieces of one call's arguments."""

    units: list[int]  # entries per image along the unit-aligned tensors' first dimension
    starts: list[int]
    output_units: list[int]  # entries per image along the output fields' first dimension
    unit_aligned: set[str] = field(default_factory=set)  # argument names split by units
    row_aligned: set[str] = field(default_factory=set)  # argument names with one entry per image


class ImageReuse:
    """Per loaded model and run: the switch, the cross-batch cache and the count of images the tower encoded."""

    def __init__(self, model: Any, log: Callable[[str], None] | None = None):
        self.model = model
        self.requested = False
        self.reason = refusal_reason(model)
        self.rule = None if self.reason else REUSE_RULES[str(model.config.model_type)]
        self.slot: _Slot | None = None
        if self.rule is not None:
            target = _hook_target(model, self.rule)
            assert target is not None  # refusal_reason checked it
            self.slot = _install(*target)
        self.image_encodings = 0  # images the vision tower encoded (counted inside batch() calls)
        self.cache_hits = 0  # images served from the cross-batch cache
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = FEATURE_CACHE_BYTES
        self._output_class: type[Any] | None = None
        self._batch: _Batch | None = None
        self._log = log or (lambda line: None)

    @property
    def supported(self) -> bool:
        return self.rule is not None

    @property
    def active(self) -> bool:
        """Features are being reused: requested, supported, and not turned off by a call it could not split."""
        return self.requested and self.rule is not None and self.reason is None

    def enable(self, requested: bool, log: Callable[[str], None] | None = None) -> None:
        """Reuse features from now on (`requested`), where supported; `log` gets the one line if it turns off."""
        self.requested = requested
        if log is not None:
            self._log = log

    def report(self) -> dict[str, Any]:
        """For the run manifest: the setting, whether it was in effect, why not, and the tower's image count."""
        return {
            "requested": "on" if self.requested else "off",
            "active": self.active,
            "reason": None if not self.requested else self.reason,
            "image_encodings": self.image_encodings if self.rule is not None else None,
            "cache_hits": self.cache_hits,
        }

    def clear_cache(self) -> None:
        self._cache.clear()
        self._cache_bytes = 0

    @contextmanager
    def batch(self, keys: Sequence[str] | None, inputs: dict[str, Any]) -> Iterator[None]:
        """The span of one generate call whose rows show the images named by `keys` (one per row, in order)."""
        if self.slot is None:
            yield
            return
        input_ids = inputs.get("input_ids")
        rows = len(keys) if keys is not None else int(input_ids.shape[0]) if input_ids is not None else 0
        self._batch = _Batch(list(keys) if keys is not None and self.active else None, rows, input_ids)
        self.slot.active = self
        try:
            yield
        except BaseException:
            self.clear_cache()  # after an out-of-memory error above all: free what the cache holds
            raise
        finally:
            self.slot.active = None
            self._batch = None

    # --- the wrapped call ---------------------------------------------------------------------------------------

    def call(self, original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        batch = self._batch
        if batch is None or batch.keys is None or not self.active:
            if batch is not None:
                self.image_encodings += batch.rows
            return original(*args, **kwargs)
        try:
            bound = inspect.signature(original).bind(*args, **kwargs)
            split = self._split_inputs(bound, batch)
        except (ReuseNotApplicable, TypeError) as error:
            return self._give_up(str(error), original, args, kwargs, batch)
        keys = batch.keys
        fresh: dict[str, int] = {}  # key -> first row showing it, for images neither cached nor seen in this call
        for row, key in enumerate(keys):
            if key not in self._cache and key not in fresh:
                fresh[key] = row
        if len(fresh) == len(keys):  # every row a new image: the call exactly as it was
            output = original(*args, **kwargs)
            self.image_encodings += len(keys)
            try:
                per_image = self._split_output(output, split, list(range(len(keys))))
            except ReuseNotApplicable as error:
                self._turn_off(str(error))
                return output
            self._remember(dict(zip(keys, per_image, strict=True)))
            return output
        encoded: dict[str, dict[str, Any]] = {}
        if fresh:
            rows = list(fresh.values())
            selected = self._select(bound, split, rows)
            output = original(*selected.args, **selected.kwargs)
            self.image_encodings += len(rows)
            try:
                encoded = dict(zip(fresh, self._split_output(output, split, rows), strict=True))
            except ReuseNotApplicable as error:
                return self._give_up(str(error), original, args, kwargs, batch)
        hits = [key for key in dict.fromkeys(keys) if key not in fresh]
        self.cache_hits += len(hits)
        records = [encoded[key] if key in encoded else self._cache[key] for key in keys]
        for key in hits:
            self._cache.move_to_end(key)  # used again: evicted last
        self._remember(encoded)
        return self._join(records)

    def _give_up(
        self, reason: str, original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], batch: _Batch
    ) -> Any:
        self._turn_off(reason)
        self.image_encodings += batch.rows
        return original(*args, **kwargs)

    def _turn_off(self, reason: str) -> None:
        self.reason = f"turned off during the run: {reason}"
        self.clear_cache()
        self._log(f"image reuse: off for the rest of the run: {reason}")

    # --- inputs ---------------------------------------------------------------------------------------------------

    def _split_inputs(self, bound: inspect.BoundArguments, batch: _Batch) -> _Split:
        assert self.rule is not None
        tensors = dict(_tensor_arguments(bound))
        pixels = tensors.get("pixel_values")
        if pixels is None:
            raise ReuseNotApplicable("the call has no pixel_values")
        images = batch.rows
        output_units = None
        if self.rule.layout in ("rows", "row_tiles"):
            units = [1] * images
            if self.rule.layout == "row_tiles":
                if pixels.ndim != 5:
                    shape = tuple(pixels.shape)
                    raise ReuseNotApplicable(f"pixel_values has shape {shape}, not (rows, tiles, C, H, W)")
                output_units = [int(pixels.shape[1])] * images
        elif self.rule.layout == "grid":
            grid = tensors.get("image_grid_thw")
            if grid is None or grid.shape[0] != images:
                raise ReuseNotApplicable(f"image_grid_thw does not give one grid per row ({images} rows)")
            units = [int(value) for value in grid.prod(-1).tolist()]
        else:
            units = self._tiles_per_row(int(pixels.shape[0]), batch)
        total = sum(units)
        split = _Split(units=units, starts=[sum(units[:i]) for i in range(images)], output_units=output_units or units)
        for name, tensor in tensors.items():
            if tensor.ndim == 0:
                continue
            if tensor.shape[0] == total:
                split.unit_aligned.add(name)
            elif tensor.shape[0] == images:
                split.row_aligned.add(name)
            else:
                raise ReuseNotApplicable(
                    f"argument {name} has {tensor.shape[0]} entries, neither one per image ({images}) nor per unit "
                    f"({total})"
                )
        if "pixel_values" not in split.unit_aligned:
            raise ReuseNotApplicable(f"pixel_values has {pixels.shape[0]} entries for {total} units")
        return split

    def _tiles_per_row(self, tiles: int, batch: _Batch) -> list[int]:
        image_token = _image_token_id(self.model)
        if batch.input_ids is None or image_token is None:
            raise ReuseNotApplicable("no input_ids or image token id to count each row's tiles")
        tokens = (batch.input_ids[: batch.rows] == image_token).sum(-1).tolist()
        total = sum(tokens)
        if 0 in tokens or any((count * tiles) % total for count in tokens):
            raise ReuseNotApplicable(f"{tiles} tiles cannot be shared out by the rows' image tokens {tokens}")
        return [count * tiles // total for count in tokens]

    def _select(self, bound: inspect.BoundArguments, split: _Split, rows: list[int]) -> inspect.BoundArguments:
        """The call's arguments for the images of `rows` only."""
        unit_index = torch.tensor(
            [unit for row in rows for unit in range(split.starts[row], split.starts[row] + split.units[row])]
        )
        row_index = torch.tensor(rows)

        def pick(name: str, value: Any) -> Any:
            if name in split.unit_aligned:
                return value.index_select(0, unit_index.to(value.device))
            if name in split.row_aligned:
                return value.index_select(0, row_index.to(value.device))
            return value

        selected = inspect.BoundArguments(bound.signature, OrderedDict(bound.arguments))
        for name, value in list(selected.arguments.items()):
            parameter = bound.signature.parameters[name]
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                selected.arguments[name] = {key: pick(key, item) for key, item in value.items()}
            elif isinstance(value, torch.Tensor):
                selected.arguments[name] = pick(name, value)
        return selected

    # --- outputs --------------------------------------------------------------------------------------------------

    def _split_output(self, output: Any, split: _Split, rows: list[int]) -> list[dict[str, Any]]:
        """Per image (of `rows`, in order): each read field's piece."""
        assert self.rule is not None
        if not isinstance(output, ModelOutput):
            raise ReuseNotApplicable(f"the call returned {type(output).__name__}, not a model output")
        self._output_class = type(output)
        units = [split.output_units[row] for row in rows]
        records: list[dict[str, Any]] = [{} for _ in rows]
        for name in self.rule.fields:
            value = getattr(output, name, None)
            if value is None:
                raise ReuseNotApplicable(f"the output has no {name}")
            for record, piece in zip(records, _pieces(value, units, name), strict=True):
                record[name] = piece
        for name in self.rule.layered_fields:
            layers = getattr(output, name, None)
            if not isinstance(layers, (list, tuple)):
                raise ReuseNotApplicable(f"the output's {name} is not a list over layers")
            per_layer = [_pieces(layer, units, name) for layer in layers]
            for index, record in enumerate(records):
                record[name] = [pieces[index] for pieces in per_layer]
        return records

    def _join(self, records: list[dict[str, Any]]) -> Any:
        """The output the call would have returned for these rows: each field's pieces joined in row order."""
        assert self.rule is not None and self._output_class is not None
        values: dict[str, Any] = {name: _joined([r[name] for r in records]) for name in self.rule.fields}
        for name in self.rule.layered_fields:
            layers = len(records[0][name])
            values[name] = [_joined([r[name][layer] for r in records]) for layer in range(layers)]
        for required in dataclasses.fields(self._output_class):  # e.g. timm's last_hidden_state, which is not read
            if required.default is dataclasses.MISSING and required.default_factory is dataclasses.MISSING:
                values.setdefault(required.name, None)
        return self._output_class(**values)

    def _remember(self, records: dict[str, dict[str, Any]]) -> None:
        """Cache the features of a call's last images (in row order: the next batch may start with the last one),
        as many as fit in the budget; older entries go first."""
        chosen: list[str] = []
        room = self._cache_limit
        for key in reversed(records):
            size = _nbytes(records[key])
            if size > room:
                break
            chosen.append(key)
            room -= size
        for key in reversed(chosen):
            if key not in self._cache:
                stored = {name: _owned(value) for name, value in records[key].items()}
                self._cache[key] = stored
                self._cache_bytes += _nbytes(stored)
        while self._cache_bytes > self._cache_limit and self._cache:
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= _nbytes(evicted)


def _tensor_arguments(bound: inspect.BoundArguments) -> Iterator[tuple[str, torch.Tensor]]:
    for name, value in bound.arguments.items():
        if bound.signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            yield from ((key, item) for key, item in value.items() if isinstance(item, torch.Tensor))
        elif isinstance(value, torch.Tensor):
            yield name, value


def _image_token_id(model: Any) -> int | None:
    for config in (model.config, getattr(model.config, "text_config", None)):
        for name in ("image_token_id", "image_token_index"):
            value = getattr(config, name, None)
            if isinstance(value, int):
                return value
    return None


def _pieces(value: Any, units: list[int], name: str) -> list[Any]:
    """Split one output value per image: one entry per image, or `units[i]` entries for image i."""
    count = len(value) if isinstance(value, (list, tuple)) else int(value.shape[0]) if value.ndim else -1
    if count == len(units):
        sizes = [1] * len(units)
    elif count == sum(units):
        sizes = units
    else:
        raise ReuseNotApplicable(
            f"the output's {name} has {count} entries for {len(units)} images ({sum(units)} units)"
        )
    pieces, start = [], 0
    for size in sizes:
        pieces.append(value[start : start + size])
        start += size
    return pieces


def _joined(pieces: list[Any]) -> Any:
    if isinstance(pieces[0], torch.Tensor):
        return torch.cat(pieces, dim=0)
    return type(pieces[0])(item for piece in pieces for item in piece)


def _owned(value: Any) -> Any:
    """A cached piece that does not keep its whole batch's output alive (a slice is a view of it)."""
    if isinstance(value, torch.Tensor):
        return value.clone() if value.untyped_storage().nbytes() > value.nbytes else value
    if isinstance(value, (list, tuple)):
        return type(value)(_owned(item) for item in value)
    return value


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(_nbytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(item) for item in value)
    return 0
