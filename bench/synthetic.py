"""Synthetic equirectangular panoramas written as JPEG files, and benchmark samples over them.

Real QuIC-360 images are Flickr URLs that are not available offline; the benchmark needs files with the same
sizes and encoding (2:1 JPEG, 2048x1024 and up) so decoding and resizing cost what they cost on real data.
Content is a sky/ground gradient with coloured blocks and noise: JPEG decode time depends on size and entropy, so
pure flat colour would decode unrealistically fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# QuIC-360's query kinds, so prompts have realistic lengths.
QUERIES = ("location", "people", "weather", "building", "vehicle", "water", "trees", "sky")


def write_panorama_jpeg(path: Path, width: int, height: int, seed: int, quality: int = 90) -> Path:
    rng = np.random.default_rng(seed)
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    cols = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    sky = np.array([90, 150, 230], np.float32) - rows * np.array([0, 40, 90], np.float32)
    ground = np.array([100, 120, 70], np.float32) + cols * np.array([60, 20, 30], np.float32)
    pixels = np.where(rows < 0.5, sky + 0 * cols, ground + 0 * rows)
    for _ in range(24):
        x, y = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        w, h = int(rng.integers(8, max(9, width // 6))), int(rng.integers(8, max(9, height // 4)))
        pixels[y : y + h, x : x + w] = rng.integers(0, 256, size=3)
    pixels += rng.normal(0.0, 8.0, size=pixels.shape).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=quality)
    return path


def write_panoramas(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """`count` distinct panoramas (reused if already there with the same size)."""
    paths = []
    for index in range(count):
        path = folder / f"pano_{width}x{height}_{index:03d}.jpg"
        if not path.is_file():
            write_panorama_jpeg(path, width, height, seed=index)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class BenchSample:
    image: str
    query: str


def make_samples(images: list[Path], num_samples: int) -> list[BenchSample]:
    """Samples cycling over images and queries, as in QuIC-360 (several queries per panorama)."""
    return [
        BenchSample(image=str(images[index % len(images)]), query=QUERIES[index % len(QUERIES)])
        for index in range(num_samples)
    ]


def instruction(query: str) -> str:
    """The runner's default captioning instruction shape (wording does not change the measured work much)."""
    return f"In this 360-degree panoramic image, describe the {query} in one or two sentences."
