"""Opening images for the runner: EXIF-upright RGB, downscaled ONCE to what the family consumes, loaded ahead.

QuIC-360 panoramas go up to 8K x 4K; a model sees at most ~1K pixels on a side. Decoding the full JPEG and letting
the processor resize it wastes most of the CPU time of a run, so JPEGs are decoded at a reduced scale
(`Image.draft`) and every image is resized once here, before the processor. Loading runs in worker threads
(PIL releases the GIL while decoding) a few batches ahead of generation.
"""

from __future__ import annotations

import io
import math
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps

# Larger than any real panorama (8K x 4K = 33.5 MP) with room to spare; a header claiming more is refused before
# any pixel is decoded (a "decompression bomb": a small file that expands to gigabytes).
DEFAULT_MAX_DECODE_PIXELS = 16384 * 8192
# ONE guard, ours (ImageLimits.max_decode_pixels, error kind `image_too_large`): Pillow's own check would warn on
# stderr from 89 MP and raise above 179 MP, before ours could run, so it is switched off in the runner process.
Image.MAX_IMAGE_PIXELS = None
# Modes holding more than 8 bits per channel; convert("RGB") would clip them (a 16-bit PNG becomes white).
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
URL_TIMEOUT_S = 30.0
URL_MAX_BYTES = 200 * 1024 * 1024


class ImageLoadError(Exception):
    """An image that cannot be used; `kind` goes into the run manifest's error counts."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind

    def record_text(self) -> str:
        """What the prediction record's `error` field holds: `kind: message`."""
        return f"{self.kind}: {self}"


@dataclass(frozen=True)
class ImageLimits:
    max_side: int | None  # longest side after downscaling; None keeps the size
    max_pixels: int | None = None  # width * height after downscaling; None: no limit
    max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS  # decompression-bomb guard on the file's own size


def target_size(width: int, height: int, limits: ImageLimits) -> tuple[int, int]:
    """The size to downscale to (never upscales), keeping the aspect ratio."""
    scale = 1.0
    if limits.max_side and max(width, height) > limits.max_side:
        scale = limits.max_side / max(width, height)
    if limits.max_pixels and width * height * scale * scale > limits.max_pixels:
        scale = math.sqrt(limits.max_pixels / (width * height))
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def _read_source(source: str) -> str | io.BytesIO:
    if source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(source, timeout=URL_TIMEOUT_S) as response:  # noqa: S310 (http(s) only)
                data = response.read(URL_MAX_BYTES + 1)
        except OSError as error:
            raise ImageLoadError("image_download", f"{source}: download failed: {error}") from error
        if len(data) > URL_MAX_BYTES:
            raise ImageLoadError("image_download", f"{source}: larger than {URL_MAX_BYTES} bytes")
        return io.BytesIO(data)
    if Path(source).is_dir():
        raise ImageLoadError("missing_image", f"{source}: a folder, not an image file")
    if not Path(source).is_file():
        raise ImageLoadError("missing_image", f"{source}: image file not found")
    return source


def load_image(source: str, limits: ImageLimits) -> Image.Image:
    """Open a local path or http(s) URL as an upright RGB image no larger than `limits`."""
    raw = _read_source(source)
    try:
        # Our own pixel check below replaces PIL's global bomb limit, so its warning/error does not fire first.
        with Image.open(raw) as opened:
            width, height = opened.size
            if width * height > limits.max_decode_pixels:
                raise ImageLoadError(
                    "image_too_large",
                    f"{source}: {width}x{height} = {width * height} pixels is over the limit of "
                    f"{limits.max_decode_pixels} (decompression-bomb guard)",
                )
            target = target_size(width, height, limits)
            if opened.format == "JPEG" and target != (width, height):
                # Decode at 1/2, 1/4 or 1/8 scale, never below the target: a big panorama decodes several times faster.
                opened.draft("RGB", target)
            opened.load()
            image = ImageOps.exif_transpose(opened)
            image = to_rgb(image)
    except ImageLoadError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageLoadError("corrupt_image", f"{source}: cannot decode image: {error}") from error
    # The EXIF rotation may have swapped the sides; the target follows the upright image.
    upright = target_size(*image.size, limits)
    if upright != image.size:
        image = image.resize(upright, Image.Resampling.BICUBIC)
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. High bit-depth grey images are SCALED to 8 bits (16-bit: 65535 -> 255), never clipped."""
    if image.mode not in HIGH_BIT_DEPTH_MODES:
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        # Floating point: [0, 1] when it fits there, else the 16-bit range, like integer images.
        top = 1.0 if values.size and values.max() <= 1.0 else 65535.0
    else:
        # 16-bit PNG/TIFF (I;16*, or I for a 16-bit file in older Pillows); wider integers scale by their maximum.
        top = max(65535.0, float(values.max()) if values.size else 0.0)
    grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")


def header_pixels(source: str) -> int:
    """Width x height from the file header only (cheap), 0 when unknown; used to sort samples by image size."""
    if source.startswith(("http://", "https://")):
        return 0
    try:
        with Image.open(source) as opened:
            return opened.size[0] * opened.size[1]
    except Exception:  # noqa: BLE001  (a bad image is reported when it is really loaded)
        return 0


Item = TypeVar("Item")
Loaded = TypeVar("Loaded")


def prefetch_batches(
    batches: Iterable[list[Item]],
    load: Callable[[Item], Loaded],
    *,
    num_workers: int = 2,
    batches_ahead: int = 2,
) -> Iterator[tuple[list[Item], list[Loaded | ImageLoadError]]]:
    """Yield (batch, loaded items) IN ORDER while worker threads already load the next `batches_ahead` batches.

    A failing load yields its ImageLoadError in place of the item, so one bad image never sinks a batch.
    """

    def safe_load(item: Item) -> Loaded | ImageLoadError:
        try:
            return load(item)
        except ImageLoadError as error:
            return error

    pending: deque[tuple[list[Item], list[Future[Loaded | ImageLoadError]]]] = deque()
    iterator = iter(batches)
    with ThreadPoolExecutor(max_workers=max(1, num_workers), thread_name_prefix="image-loader") as executor:
        try:
            while True:
                while len(pending) <= batches_ahead:
                    batch = next(iterator, None)
                    if batch is None:
                        break
                    pending.append((batch, [executor.submit(safe_load, item) for item in batch]))
                if not pending:
                    return
                batch, futures = pending.popleft()
                yield batch, [future.result() for future in futures]
        finally:
            for _, futures in pending:
                for future in futures:
                    future.cancel()
