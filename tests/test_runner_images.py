"""runner.images: upright RGB, one downscale before the processor, bomb guard, clear errors, ordered prefetch."""

from __future__ import annotations

import functools
import http.server
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import write_panorama
from PIL import Image

from runner.images import ImageLimits, ImageLoadError, load_image, prefetch_batches, target_size


def test_exif_orientation_is_applied(tmp_path):
    # Stored 200x100, left half red, right half blue; orientation 6 = display rotated 90 degrees clockwise.
    pixels = np.zeros((100, 200, 3), dtype=np.uint8)
    pixels[:, :100] = (255, 0, 0)
    pixels[:, 100:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)

    image = load_image(str(path), ImageLimits(max_side=None))
    assert image.size == (100, 200) and image.mode == "RGB"
    top, bottom = image.getpixel((50, 20)), image.getpixel((50, 180))
    assert top[0] > 200 and top[2] < 60  # red on top
    assert bottom[2] > 200 and bottom[0] < 60  # blue below


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_downscaled_once_to_the_max_side_keeping_the_aspect(tmp_path, fmt):
    path = write_panorama(tmp_path / f"big.{fmt.lower()}", 1600, 800, fmt, seed=1)
    assert load_image(str(path), ImageLimits(max_side=400)).size == (400, 200)
    assert load_image(str(path), ImageLimits(max_side=None, max_pixels=20_000)).size == (200, 100)
    assert load_image(str(path), ImageLimits(max_side=4000)).size == (1600, 800)  # never upscaled


def test_jpeg_draft_decoding_matches_a_full_decode(tmp_path):
    path = write_panorama(tmp_path / "pano.jpg", 2048, 1024, "JPEG", seed=2)
    fast = np.asarray(load_image(str(path), ImageLimits(max_side=256)), dtype=np.float32)
    with Image.open(path) as full:
        reference = np.asarray(full.convert("RGB").resize((256, 128), Image.Resampling.BICUBIC), dtype=np.float32)
    assert fast.shape == reference.shape == (128, 256, 3)
    assert np.abs(fast - reference).mean() < 4.0  # same picture, within JPEG/resampling noise


def test_target_size():
    assert target_size(8192, 4096, ImageLimits(max_side=1024)) == (1024, 512)
    assert target_size(4096, 8192, ImageLimits(max_side=1024)) == (512, 1024)
    assert target_size(300, 150, ImageLimits(max_side=1024)) == (300, 150)
    assert target_size(8192, 4096, ImageLimits(max_side=2048, max_pixels=512 * 256)) == (512, 256)


def test_modes_are_converted_to_rgb(tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (64, 32), (10, 20, 30, 128)).save(rgba)
    gray = tmp_path / "gray.png"
    Image.new("L", (64, 32), 99).save(gray)
    for path in (rgba, gray):
        assert load_image(str(path), ImageLimits(max_side=None)).mode == "RGB"


def test_decompression_bomb_guard_names_the_file_and_size(tmp_path):
    path = write_panorama(tmp_path / "pano.png", 256, 128, "PNG", seed=3)
    with pytest.raises(ImageLoadError) as caught:
        load_image(str(path), ImageLimits(max_side=None, max_decode_pixels=10_000))
    assert caught.value.kind == "image_too_large"
    assert str(path) in str(caught.value) and "256x128" in str(caught.value)


def test_missing_and_corrupt_files_raise_kinds(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageLoadError) as caught:
        load_image(str(missing), ImageLimits(max_side=64))
    assert caught.value.kind == "missing_image" and caught.value.record_text().startswith("missing_image: ")

    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    good = write_panorama(tmp_path / "good.jpg", 512, 256, "JPEG", seed=4).read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good[: len(good) // 2])
    for path in (garbage, truncated):
        with pytest.raises(ImageLoadError) as caught:
            load_image(str(path), ImageLimits(max_side=128))
        assert caught.value.kind == "corrupt_image" and str(path) in str(caught.value)


def test_http_url_is_loaded_and_a_404_is_an_error(tmp_path):
    write_panorama(tmp_path / "remote.jpg", 400, 200, "JPEG", seed=5)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert load_image(f"{base}/remote.jpg", ImageLimits(max_side=100)).size == (100, 50)
        with pytest.raises(ImageLoadError) as caught:
            load_image(f"{base}/absent.jpg", ImageLimits(max_side=100))
        assert caught.value.kind == "image_download"
    finally:
        server.shutdown()
        server.server_close()


def test_prefetch_yields_batches_in_order_with_errors_in_place():
    def slow_load(item: int) -> str:
        time.sleep(0.02 * ((7 * item) % 3))  # later items often finish first
        if item == 4:
            raise ImageLoadError("corrupt_image", "item 4")
        return f"image-{item}"

    batches = [[0, 1, 2], [3, 4], [5], [6, 7, 8]]
    seen = list(prefetch_batches(batches, slow_load, num_workers=3, batches_ahead=2))
    assert [batch for batch, _ in seen] == batches
    flat = [loaded for _, items in seen for loaded in items]
    assert [x if isinstance(x, str) else x.kind for x in flat] == [
        "image-0", "image-1", "image-2", "image-3", "corrupt_image", "image-5", "image-6", "image-7", "image-8",
    ]  # fmt: skip


def test_prefetch_runs_ahead_of_the_consumer():
    started: list[int] = []

    def record(item: int) -> int:
        started.append(item)
        return item

    iterator = prefetch_batches([[0], [1], [2], [3], [4]], record, num_workers=2, batches_ahead=2)
    next(iterator)
    time.sleep(0.1)
    # While the first batch is being used, the next two are already loading (not the rest).
    assert sorted(started) == [0, 1, 2]
    assert [batch for batch, _ in iterator] == [[1], [2], [3], [4]]


def test_panorama_fixture_writes_2_to_1_images(panorama_data):
    assert panorama_data.num_samples == 8
    for path in panorama_data.images:
        with Image.open(path) as image:
            assert image.size[0] == 2 * image.size[1]
    assert Path(panorama_data.data_file).read_text().startswith("url,query,annotation\n")
