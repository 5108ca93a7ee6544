"""--reuse-images: the vision tower runs once per distinct image, and predictions stay token for token the same.

Every catalogue entry with a tiny checkpoint (the 8 families and the generic-path architectures; real transformers
classes, float32, CPU) captions a data file whose rows interleave 3 panoramas x 3 queries, through `runner.loop.run`
with reuse on and off, at batch 1 and 4, without and with 2 shards, eager (and, in the slow tests, compiled):
every run's predictions equal the reference run's (off, batch 1), and `<model>_run.json` counts one encoding per
distinct image with reuse on and one per sample with it off. The model is loaded once per architecture and handed
to each run (the runs differ only in the loop's arguments). The adapter-level tests show that the features really
come from the cache (naming every row's image the same changes the predictions) and that a call the layout cannot
split turns reuse off with its reason and changes nothing.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, write_panorama
from PIL import Image

from contract import (
    PREDICTIONS_JSONL,
    RUN_MANIFEST,
    PredictionRecord,
    RunManifest,
    load_dataset,
    read_json,
    read_jsonl,
    results_file,
)
from contract.shards import Shard, merge_shards, samples_of_shard
from runner.adapters import LoadedModel, adapter_for, open_adapter
from runner.adapters.image_reuse import image_content_key, refusal_reason
from runner.loop import RunConfig, run
from runner.registry import BUILTIN, MODELS, get_model

NAMES = sorted(name for name, spec in BUILTIN.models.items() if spec.tiny)
# Where reuse is verified here; every other entry runs with it off and says why (docs/RUNNER.md).
REUSING = sorted(set(NAMES) - {"lfm2-vl-1.6b"})
QUERIES = ("location", "the people in the scene", "weather")
NUM_IMAGES = 3
MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def interleaved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 panoramas (JPEG and PNG, different sizes) x 3 queries, rows query by query: in the data file the queries
    of one image are never next to each other, so only the runner's grouping puts them together."""
    folder = tmp_path_factory.mktemp("interleaved")
    sizes = ((512, 256, "JPEG"), (384, 192, "PNG"), (448, 224, "JPEG"))
    images = [
        write_panorama(folder / "images" / f"pano_{i}.{'jpg' if fmt == 'JPEG' else 'png'}", w, h, fmt, seed=i)
        for i, (w, h, fmt) in enumerate(sizes)
    ]
    rows = [(image.relative_to(folder).as_posix(), query, f"a caption of the {query}.") for query in QUERIES
            for image in images]  # fmt: skip
    data_file = folder / "data.csv"
    with open(data_file, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "query", "annotation"])
        writer.writerows(rows)
    return data_file


@dataclass
class Preloaded:
    adapter_class: type[Any]  # the entry's adapter, whose load() hands back the model loaded once
    checkpoint: Path
    model: Any


@pytest.fixture(scope="module")
def preloaded(tiny_checkpoint: Callable[[str], Path]) -> Callable[[str], Preloaded]:
    """name -> its tiny checkpoint loaded ONCE, and the adapter class every run of the module gets it through."""
    classes: dict[str, Preloaded] = {}

    def get(name: str) -> Preloaded:
        if name not in classes:
            spec = get_model(name)
            base = adapter_for(spec.adapter)
            loaded = base.load(str(tiny_checkpoint(name)), revision=None, dtype=torch.float32,
                               device=torch.device("cpu"), spec=spec)  # fmt: skip

            class FromMemory(base):  # type: ignore[misc,valid-type]
                @classmethod
                def load(cls, source: str, **kwargs: Any) -> LoadedModel:
                    return loaded

            classes[name] = Preloaded(FromMemory, tiny_checkpoint(name), loaded.model)
        return classes[name]

    return get


def caption(name: str, model: Preloaded, data_file: Path, out: Path, reuse: str, batch_size: int,
            shard: Shard | None = None, decode: str = "eager", compile_cache: Path | None = None,
            ) -> tuple[dict[str, str], RunManifest]:  # fmt: skip
    config = RunConfig(model_name=name, data_file=data_file, output_dir=out, batch_size=batch_size,
                       max_new_tokens=MAX_NEW_TOKENS, model_path=model.checkpoint, device="cpu", progress="none",
                       reuse_images=reuse, shard=shard, decode=decode, compile_cache=compile_cache)  # fmt: skip
    result = run(config, log=lambda line: None, adapter_class=model.adapter_class)
    assert result.status == "completed" and result.num_errors == 0, result
    predictions = {r.sample_id: r.prediction for r in read_jsonl(Path(result.predictions_file), PredictionRecord)}
    return predictions, read_json(Path(result.manifest_file), RunManifest)


def cross_batch_hits(batch_size: int) -> int:
    """Images whose features a batch takes from an earlier one, when each image's queries run consecutively."""
    order = [image for image in range(NUM_IMAGES) for _ in QUERIES]
    batches = [set(order[start : start + batch_size]) for start in range(0, len(order), batch_size)]
    return sum(len(batch & set().union(*batches[:index])) for index, batch in enumerate(batches))


def reuse_of(manifest: RunManifest) -> dict[str, Any]:
    assert manifest.image_reuse is not None
    return manifest.image_reuse


@pytest.mark.parametrize("name", NAMES)
def test_reuse_on_and_off_give_the_same_predictions_at_batch_1_and_4_with_and_without_shards(
    name: str, preloaded: Callable[[str], Preloaded], interleaved: Path, tmp_path: Path
) -> None:
    model = preloaded(name)
    supported = refusal_reason(model.model) is None
    assert supported == (name in REUSING), refusal_reason(model.model)  # no architecture lost (or gained) silently
    samples = load_dataset(interleaved).samples
    reference, off = caption(name, model, interleaved, tmp_path / "off-1", "off", 1)
    assert len(reference) == len(samples) == NUM_IMAGES * len(QUERIES)
    assert reuse_of(off)["requested"] == "off" and reuse_of(off)["active"] is False
    assert reuse_of(off)["image_encodings"] == (len(samples) if supported else None)
    assert (reuse_of(off)["distinct_images"], reuse_of(off)["samples"]) == (NUM_IMAGES, len(samples))

    for reuse, batch_size in (("on", 1), ("on", 4), ("off", 4)):
        predictions, manifest = caption(name, model, interleaved, tmp_path / f"{reuse}-{batch_size}", reuse,
                                        batch_size)  # fmt: skip
        assert predictions == reference, (reuse, batch_size)
        record = reuse_of(manifest)
        if reuse == "on" and supported:
            # Batch 1: each image's queries are consecutive, so the cache carries its features to the next batch.
            assert record["active"] is True and record["reason"] is None, record
            assert record["image_encodings"] == NUM_IMAGES, (batch_size, record)
            assert record["cache_hits"] == cross_batch_hits(batch_size), record
        elif reuse == "on":
            assert record["active"] is False and record["image_encodings"] is None
            assert record["reason"] and "lfm2_vl" in record["reason"], record
    # The queries of one image ran together: the predictions file (appended in run order) groups them.
    written = [r.image for r in read_jsonl(results_file(tmp_path / "on-4", PREDICTIONS_JSONL, name), PredictionRecord)]
    assert [image for index, image in enumerate(written) if index == 0 or written[index - 1] != image] == list(
        dict.fromkeys(written)
    )
    assert len(dict.fromkeys(written)) == NUM_IMAGES
    # The setting changes no prediction, so it is not one a resume must match.
    assert caption(name, model, interleaved, tmp_path / "on-4", "off", 4)[0] == reference

    # Two shards, reuse on: each shard encodes each of ITS images once; the merge is in data order.
    out = tmp_path / "shards"
    for index in range(2):
        shard = Shard(index, 2)
        predictions, manifest = caption(name, model, interleaved, out, "on", 4, shard=shard)
        mine = samples_of_shard(samples, shard)
        assert predictions == {s.sample_id: reference[s.sample_id] for s in mine}
        distinct = len({s.image_path for s in mine})
        assert reuse_of(manifest)["distinct_images"] == distinct
        assert reuse_of(manifest)["image_encodings"] == (distinct if supported else None)
    outcome = merge_shards(out, name, 2, samples)
    assert outcome.complete
    merged = list(read_jsonl(results_file(out, PREDICTIONS_JSONL, name), PredictionRecord))
    assert [r.sample_id for r in merged] == [s.sample_id for s in samples]
    assert {r.sample_id: r.prediction for r in merged} == reference
    merged_manifest = read_json(results_file(out, RUN_MANIFEST, name), RunManifest)
    shards_reuse = [shard["image_reuse"] for shard in merged_manifest.shards]  # type: ignore[attr-defined]
    assert reuse_of(merged_manifest)["samples"] == len(samples)
    assert reuse_of(merged_manifest)["distinct_images"] == sum(r["distinct_images"] for r in shards_reuse)
    if supported:
        assert reuse_of(merged_manifest)["image_encodings"] == sum(r["image_encodings"] for r in shards_reuse)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_reuse_on_and_off_give_the_same_predictions_when_decoding_compiled(
    name: str, preloaded: Callable[[str], Preloaded], interleaved: Path, tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:  # fmt: skip
    """Compiled decoding pads the last batch (1 sample) with rows that hold no image: the reuse counts only the
    real rows, and the prefill (where the features enter) is the same as eager."""
    model = preloaded(name)
    cache = tmp_path_factory.getbasetemp() / "image-reuse-compile-cache"
    off, off_manifest = caption(name, model, interleaved, tmp_path / "off", "off", 4, decode="compiled",
                                compile_cache=cache)  # fmt: skip
    on, on_manifest = caption(name, model, interleaved, tmp_path / "on", "on", 4, decode="compiled",
                              compile_cache=cache)  # fmt: skip
    assert on == off
    report = on_manifest.decode  # type: ignore[attr-defined]
    if name in MODELS and name != "internvl2-2b":  # the 8 families compile (InternVL2: dynamic RoPE, eager)
        assert report["decode"] == "compiled" and any(b["batch"] == 4 for b in report["buckets"]), report
    elif report["fallback_reason"] is not None:  # e.g. an architecture that declares no torch.compile support
        assert report["decode"] == "eager", report
    if name in REUSING:
        assert reuse_of(on_manifest)["image_encodings"] == NUM_IMAGES
        assert reuse_of(off_manifest)["image_encodings"] == NUM_IMAGES * len(QUERIES)


# --- the adapter level --------------------------------------------------------------------------------------------


def panoramas(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, 2 * h, 3), dtype=np.uint8)) for h in (96, 160, 128, 224)[:count]]


def generate(adapter: Any, images: list[Image.Image], queries: list[str], keys: list[str] | None) -> list[str]:
    inputs = adapter.to_device(adapter.preprocess(images, [adapter.build_prompt(q) for q in queries]))
    with adapter.image_reuse.batch(keys, inputs):
        return adapter.decode(adapter.generate(inputs, MAX_NEW_TOKENS), inputs)


@pytest.mark.parametrize("name", REUSING)
def test_the_model_reads_the_reused_features(name: str, tiny_checkpoint: Callable[[str], Path]) -> None:
    """Naming all four rows' images the same hands rows 2-4 the first image's features: their predictions change,
    so the model's input really is what the cache returns (and with the right names, nothing changes)."""
    adapter = open_adapter(get_model(name), str(tiny_checkpoint(name)), device=torch.device("cpu"),
                           dtype=torch.float32)  # fmt: skip
    images, queries = panoramas(4), ["location", "people", "the sky", "weather"]
    plain = generate(adapter, images, queries, None)
    adapter.image_reuse.enable(True)
    keys = [image_content_key(image) for image in images]
    assert len(set(keys)) == 4
    assert generate(adapter, images, queries, keys) == plain
    adapter.image_reuse.clear_cache()
    same = generate(adapter, images, queries, [keys[0]] * 4)
    assert same[0] == plain[0] and same[1:] != plain[1:]
    # Rows whose images repeat (and one cached from the call before) encode only the new ones.
    before = adapter.image_reuse.image_encodings
    duplicated = [images[0], images[1], images[0], images[2]]
    assert generate(adapter, duplicated, queries, [image_content_key(i) for i in duplicated]) == [
        generate(adapter, [image], [query], None)[0] for image, query in zip(duplicated, queries, strict=True)
    ]
    assert adapter.image_reuse.image_encodings - before == 2 + 4  # images 1 and 2 (0 is cached); then 4 alone


@pytest.mark.parametrize(
    ("layout", "fields", "reason"),
    [
        ("rows", ("no_such_field",), "no_such_field"),  # the output lacks a field the rule reads
        ("row_tiles", ("pooler_output",), "not (rows, tiles, C, H, W)"),  # LLaVA's pixels have no tiles dimension
    ],
)
def test_a_call_the_layout_cannot_split_turns_reuse_off_with_its_reason(
    layout: Any, fields: tuple[str, ...], reason: str, tiny_checkpoint: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from runner.adapters import image_reuse

    rule = image_reuse.ReuseRule("get_image_features", layout, fields=fields)
    monkeypatch.setitem(image_reuse.REUSE_RULES, "llava", rule)
    adapter = open_adapter(get_model("llava-1.5-7b"), str(tiny_checkpoint("llava-1.5-7b")),
                           device=torch.device("cpu"), dtype=torch.float32)  # fmt: skip
    lines: list[str] = []
    adapter.image_reuse.enable(True, log=lines.append)
    images, queries = panoramas(3), ["location", "people", "weather"]
    plain = generate(adapter, images, queries, None)
    keys = [image_content_key(image) for image in images]
    rows = [images[0], images[0], images[1]]
    assert generate(adapter, rows, queries, [keys[0], keys[0], keys[1]]) == [
        generate(adapter, [image], [query], None)[0] for image, query in zip(rows, queries, strict=True)
    ]
    assert generate(adapter, images, queries, keys) == plain
    report = adapter.image_reuse.report()
    assert report["active"] is False and reason in report["reason"], report
    assert len(lines) == 1 and "off for the rest of the run" in lines[0]


def test_gemma_3n_reuses_the_vision_path_only(tiny_checkpoint: Callable[[str], Path]) -> None:
    """Gemma 3n also has an audio tower: the wrapper sits on the image features alone, the audio path is untouched."""
    adapter = open_adapter(get_model("gemma-3n-e2b"), str(tiny_checkpoint("gemma-3n-e2b")),
                           device=torch.device("cpu"), dtype=torch.float32)  # fmt: skip
    base = adapter.model.base_model
    assert adapter.image_reuse.supported
    assert hasattr(base.get_image_features, "_image_reuse_slot")
    assert not hasattr(base.get_audio_features, "_image_reuse_slot")
    assert not hasattr(base.audio_tower.forward, "_image_reuse_slot")
    assert not hasattr(base.vision_tower.forward, "_image_reuse_slot")


def test_the_cache_is_bounded_and_a_miss_only_costs_an_encoding(tiny_checkpoint: Callable[[str], Path]) -> None:
    adapter = open_adapter(get_model("gemma-3-4b"), str(tiny_checkpoint("gemma-3-4b")), device=torch.device("cpu"),
                           dtype=torch.float32)  # fmt: skip
    adapter.image_reuse.enable(True)
    adapter.image_reuse._cache_limit = 1  # smaller than any image's features: nothing is kept between calls
    images = panoramas(2)
    keys = [image_content_key(image) for image in images]
    first = generate(adapter, images, ["location", "people"], keys)
    second = generate(adapter, images, ["location", "people"], keys)
    assert first == second
    assert adapter.image_reuse.image_encodings == 4 and adapter.image_reuse.cache_hits == 0
    assert not adapter.image_reuse._cache
    adapter.image_reuse._cache_limit = 1 << 30
    generate(adapter, images, ["location", "people"], keys)
    generate(adapter, images, ["location", "people"], keys)
    assert adapter.image_reuse.image_encodings == 6 and adapter.image_reuse.cache_hits == 2


def test_the_content_key_is_the_pixels() -> None:
    a, b = panoramas(2)
    assert image_content_key(a) == image_content_key(a.copy())
    assert image_content_key(a) != image_content_key(b)
    changed = a.copy()
    changed.putpixel((0, 0), (0, 0, 0) if a.getpixel((0, 0)) != (0, 0, 0) else (1, 1, 1))
    assert image_content_key(changed) != image_content_key(a)
    assert image_content_key(a) != image_content_key(a.convert("L").convert("RGB"))


def test_unsupported_architectures_say_why(tiny_checkpoint: Callable[[str], Path]) -> None:
    adapter = open_adapter(get_model("lfm2-vl-1.6b"), str(tiny_checkpoint("lfm2-vl-1.6b")),
                           device=torch.device("cpu"), dtype=torch.float32)  # fmt: skip
    reason = refusal_reason(adapter.model)
    assert reason is not None and "tile" in reason
    adapter.image_reuse.enable(True)
    assert not adapter.image_reuse.active and adapter.image_reuse.report()["reason"] == reason


# --- the command lines ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen2.5-vl-3b", "llava-1.6-mistral-7b", "internvl2-2b", "gemma-3-4b"])
def test_the_sample_data_encodes_each_image_once(name: str, tiny_checkpoint, run_runner, tmp_path: Path) -> None:
    """`python -m runner` on data/sample (7 panoramas, 24 samples): 7 encodings with reuse on, 24 with it off, and
    the same predictions."""
    data = REPO_ROOT / "data" / "sample" / "sample.csv"
    common = ["--model", name, "--model-path", tiny_checkpoint(name), "--data", data, "--device", "cpu",
              "--max-new-tokens", "8", "--no-progress"]  # fmt: skip
    on = run_runner(*common, "--output-dir", tmp_path / "on")
    off = run_runner(*common, "--output-dir", tmp_path / "off", "--reuse-images", "off")
    assert {r.sample_id: r.prediction for r in on.predictions} == {r.sample_id: r.prediction for r in off.predictions}
    assert len(on.predictions) == 24
    reuse_on, reuse_off = reuse_of(on.manifest), reuse_of(off.manifest)  # type: ignore[arg-type]
    assert (reuse_on["image_encodings"], reuse_on["distinct_images"], reuse_on["samples"]) == (7, 7, 24)
    assert (reuse_off["image_encodings"], reuse_off["distinct_images"], reuse_off["samples"]) == (24, 7, 24)
    assert reuse_on["active"] is True and reuse_off["requested"] == "off"


def test_a_bad_setting_is_refused_before_loading(run_runner, tmp_path: Path) -> None:
    data = REPO_ROOT / "data" / "sample" / "sample.csv"
    bad = run_runner("--model", "llava-1.5-7b", "--data", data, "--output-dir", tmp_path, "--reuse-images", "maybe",
                     expect_ok=False)  # fmt: skip
    assert bad.returncode == 2 and "--reuse-images" in bad.stderr and "'maybe'" in bad.stderr


def test_the_orchestrator_passes_the_setting_to_every_runner(tmp_path: Path, panorama_data) -> None:
    from orchestrator.ablation import runner_argv
    from orchestrator.engines import RunPaths
    from orchestrator.plan import AblationOptions, GpuSelection, build_plan

    spec = get_model("blip2-opt-2.7b")
    paths = RunPaths("/data/data.csv", "/results", None, None, None)
    for setting, expected in ((None, []), ("off", ["--reuse-images", "off"]), ("on", ["--reuse-images", "on"])):
        options = AblationOptions(models=[spec.name], data_file=panorama_data.data_file, output_dir=tmp_path,
                                  reuse_images=setting)  # fmt: skip
        argv = runner_argv(build_plan(options), spec, paths, GpuSelection("none"), None)
        found = argv[argv.index("--reuse-images") : argv.index("--reuse-images") + 2] if expected else []
        assert found == expected and ("--reuse-images" in argv) == bool(expected)
