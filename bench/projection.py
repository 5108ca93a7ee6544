"""PROJECTED full-ablation time on one H100, from the published configs: arithmetic, not a measurement.

    python -m bench.projection --out bench/out/projection.json

For each model: parameter counts come from instantiating the published config (bench/configs) on the meta device;
prompt lengths come from the full-size processor run on a 2048x1024 panorama after the runner's image loading.
Then, for N samples, batch B and T new tokens:

- decode: ceil(N / B) * T steps; each step reads the per-token weights (bf16) plus the batch's KV cache at the
  mean context length (prompt + T/2) from HBM: step_s = (weight_bytes + B * ctx * kv_bytes_per_token) / bandwidth;
- prefill: 2 * FLOPs per parameter per token: language model over N prompts, vision side over N images
  (patches per image from the config geometry), at an assumed fraction (MFU) of the bf16 dense peak;
- load: checkpoint bytes (bf16 safetensors) / disk read rate + a fixed start-up cost.

Every constant is a command-line option and is written into the JSON. Host overhead per decode step (Python,
kernel launches) is NOT in the floor; `--step-overhead-ms` adds it per step to show its weight.

    python -m bench.projection --measured bench/measured/gpu_bench-h200-batch128.json

From a GPU measurement instead: per model, N / the runner's measured samples/s (everything the runner does:
decode, preprocessing, generation, writing) + the same load estimate, since the benchmark builds its random
weights in GPU memory and loads no checkpoint.

    python -m bench.projection --measured bench/measured/gpu_bench-h200-batch128.json --reuse-images

With `--reuse-images` (runner --reuse-images on: the vision tower runs once per distinct image, `--images` of them,
393 in QuIC-360's test split): the measured runs encoded every sample's image, so (N - images) encodings are taken
off, each ESTIMATED at the vision side's FLOPs for one image (2 x the parameters reuse skips x patches) at `--mfu` of
the bf16 peak. Without `--measured` the floor's prefill counts the vision side over `--images` images instead of N.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from bench.fullsize import (
    ParameterCounts,
    build_tiny_reference,
    count_parameters,
    full_size_processor,
    load_bench_config,
    model_class,
)
from bench.synthetic import write_panorama_jpeg
from contract import write_json_atomic
from runner.adapters import LoadedModel, adapter_for
from runner.images import ImageLimits, load_image
from runner.loop import DEFAULT_PROMPT_TEMPLATE
from runner.registry import MODELS, ModelSpec

H100_SXM_HBM3_BYTES_PER_S = 3.35e12
H100_BF16_DENSE_FLOPS = 989e12  # the H200 has the same compute (its HBM is larger and faster)
QUIC360_TEST_IMAGES = 393


def vision_patches(spec: ModelSpec, config: dict[str, Any], image_size: tuple[int, int], image_tokens: int) -> int:
    """Patch positions the vision tower processes for one image (drives the vision FLOPs of prefill)."""
    vision = config.get("vision_config", {})
    patch = vision.get("patch_size", 14)
    patch = patch[0] if isinstance(patch, list) else patch
    family = spec.family
    if family in ("blip2", "instructblip", "llava", "gemma3"):
        side = vision["image_size"]
        return (side // patch) ** 2 + (1 if family != "gemma3" else 0)
    if family == "llava-next":
        # base 336 view + one 336 view per grid tile; image tokens ~ patches (newline tokens aside)
        side = vision["image_size"]
        per_view = (side // patch) ** 2 + 1
        return per_view * max(1, round(image_tokens / (per_view - 1)))
    if family == "qwen2.5-vl":
        width, height = image_size
        return (width // patch) * (height // patch)
    if family == "internvl2":
        return image_tokens * 4  # pixel shuffle 0.5 merges 2x2 patches into one token
    raise ValueError(f"no patch rule for family {family!r}")


def prompt_shape(spec: ModelSpec, panorama: Path, tiny_root: Path) -> dict[str, Any]:
    """Prompt tokens and image size for one sample, from the full-size processor (no model weights needed)."""
    tiny_dir = build_tiny_reference(spec.name, tiny_root / spec.name)
    bench = load_bench_config(spec.name)
    processor = full_size_processor(bench, tiny_dir)
    adapter_class = adapter_for(spec.adapter)
    tiny = adapter_class.load(str(tiny_dir), revision=None, dtype=torch.float32, device=torch.device("cpu"), spec=spec)
    adapter = adapter_class(
        spec, LoadedModel(model=tiny.model, processor=processor), torch.device("cpu"), torch.float32
    )
    image = load_image(str(panorama), ImageLimits(max_side=spec.max_image_side))
    prompt = adapter.build_prompt(DEFAULT_PROMPT_TEMPLATE.format(query="location"))
    inputs = adapter.build_inputs([image], [prompt])
    ids = inputs["input_ids"][0]
    image_token_id = next(
        (getattr(tiny.model.config, key) for key in ("image_token_id", "image_token_index")
         if isinstance(getattr(tiny.model.config, key, None), int)),
        None,
    )  # fmt: skip
    image_tokens = int((ids == image_token_id).sum()) if image_token_id is not None else 0
    return {"prompt_tokens": int(ids.shape[0]), "image_tokens": image_tokens, "image_size": list(image.size)}


def reused_parameters(spec: ModelSpec, counts: ParameterCounts) -> int:
    """Parameters whose work image reuse does once per image: the whole vision side, except for BLIP-2 and
    InstructBLIP, where only the ViT is reused (the Q-Former and projection run per sample; InstructBLIP's Q-Former
    reads the instruction)."""
    if spec.family not in ("blip2", "instructblip"):
        return counts.vision_side
    config = load_bench_config(spec.name).build_config()
    with torch.device("meta"):
        model = model_class(load_bench_config(spec.name))._from_config(config)
    return sum(parameter.numel() for name, parameter in model.named_parameters() if name.startswith("vision_model."))


def vision_s_per_image(spec: ModelSpec, shape: dict[str, Any], args: argparse.Namespace) -> tuple[float, int]:
    """ESTIMATED GPU seconds one image's reused vision work takes: its FLOPs at `--mfu` of the peak; and the patches."""
    bench = load_bench_config(spec.name)
    patches = vision_patches(spec, bench.config, tuple(shape["image_size"]), shape["image_tokens"])
    flops = 2 * reused_parameters(spec, count_parameters(bench)) * patches
    return flops / (args.peak_flops * args.mfu), patches


def stack_depths(name: str) -> tuple[int, int]:
    """(vision tower layers, language model layers) of the published config."""
    config = load_bench_config(name).build_config()
    vision, text = config.vision_config, config.get_text_config(decoder=True)
    return int(getattr(vision, "depth", None) or vision.num_hidden_layers), int(text.num_hidden_layers)


def cpu_vision_shares(path: Path) -> dict[str, float]:
    """Per model, the vision tower's share of the work at FULL depth, from a bench.image_reuse run (reuse off) on
    the CPU, where every step runs at compute speed: the tower's CPU seconds x (its real layers / the run's) against
    the rest x (the language model's real layers / the run's). An estimate: embeddings, heads and preprocessing are
    scaled with the layers too."""
    report = json.loads(path.read_text(encoding="utf-8"))
    layers = int(report["settings"]["layers"])
    shares = {}
    for entry in report["models"]:
        off = entry["off"]
        vision_layers, text_layers = stack_depths(entry["model"])
        vision = off["vision_cpu_s"] * vision_layers / layers
        rest = (off["cpu_s"] - off["vision_cpu_s"]) * text_layers / layers
        shares[entry["model"]] = vision / (vision + rest)
    return shares


def load_estimate_s(total_parameters: int, args: argparse.Namespace) -> float:
    """Estimated, not measured: bf16 checkpoint bytes / disk read rate + a fixed start-up cost per model."""
    return 2 * total_parameters / args.disk_bytes_per_s + args.startup_s


def project_model(
    spec: ModelSpec, counts: ParameterCounts, shape: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    bench = load_bench_config(spec.name)
    batches = math.ceil(args.samples / args.batch_size)
    steps = batches * args.new_tokens
    context = shape["prompt_tokens"] + args.new_tokens / 2
    if counts.encoder_only:  # T5: the decoder's self-attention cache grows with the answer only
        context = args.new_tokens / 2
    weight_bytes = 2 * counts.per_token
    kv_bytes = args.batch_size * context * counts.kv_bytes_per_token_bf16
    step_s = (weight_bytes + kv_bytes) / args.bandwidth
    decode_s = steps * step_s
    patches = vision_patches(spec, bench.config, tuple(shape["image_size"]), shape["image_tokens"])
    reused = reused_parameters(spec, counts) if args.reuse_images else 0
    encoded = min(args.images, args.samples) if args.reuse_images else args.samples  # images the tower encodes
    prefill_flops = 2 * (
        args.samples * ((counts.per_token + counts.encoder_only) * shape["prompt_tokens"])
        + (args.samples * (counts.vision_side - reused) + encoded * reused) * patches
    )
    prefill_s = prefill_flops / (args.peak_flops * args.mfu)
    load_s = load_estimate_s(counts.total, args)
    overhead_s = steps * args.step_overhead_ms / 1000
    return {
        "model": spec.name,
        "parameters_total": counts.total,
        "parameters_read_per_decode_step": counts.per_token,
        "prompt_tokens": shape["prompt_tokens"],
        "image_tokens": shape["image_tokens"],
        "runner_image_size": shape["image_size"],
        "vision_patches_per_image": patches,
        "decode_steps": steps,
        "ms_per_decode_step": round(1000 * step_s, 2),
        "kv_cache_gb_at_batch": round(
            args.batch_size * (shape["prompt_tokens"] + args.new_tokens) * counts.kv_bytes_per_token_bf16 / 1e9, 2
        ),  # fmt: skip
        "decode_s": round(decode_s, 1),
        "prefill_s": round(prefill_s, 1),
        "load_s": round(load_s, 1),
        "step_overhead_s": round(overhead_s, 1),
        "total_s": round(decode_s + prefill_s + load_s + overhead_s, 1),
    }


def from_measured(measured: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    temp = tempfile.TemporaryDirectory(prefix="projection_") if args.reuse_images else None
    shares = cpu_vision_shares(args.vision_share) if args.vision_share else {}
    for entry in measured["models"]:
        if "runner" not in entry:
            raise SystemExit(f"--measured: {entry['model']} has no runner figures ({entry.get('error', 'skipped')})")
        rate = entry["runner"]["samples_per_s"]
        generate_s = args.samples / rate
        load_s = load_estimate_s(entry["parameters"]["total"], args)
        row = {
            "model": entry["model"],
            "runner_samples_per_s_measured": rate,
            "runner_batch_size": entry["runner"]["batch_size"],
            "generate_s": round(generate_s, 1),
            "load_s": round(load_s, 1),
            "total_s": round(generate_s + load_s, 1),
        }  # fmt: skip
        if temp is not None:
            spec = MODELS[entry["model"]]
            panorama = write_panorama_jpeg(Path(temp.name) / "pano.jpg", 2048, 1024, seed=0)
            per_image, patches = vision_s_per_image(spec, prompt_shape(spec, panorama, Path(temp.name) / "tiny"), args)
            saved = (args.samples - min(args.images, args.samples)) * per_image
            row.update({
                "vision_patches_per_image": patches,
                "vision_s_per_image_estimated": round(per_image, 4),
                "vision_share_estimated": round(args.samples * per_image / generate_s, 3),
                "saved_by_reuse_s": round(saved, 1),
                "generate_with_reuse_s": round(generate_s - saved, 1),
                "total_with_reuse_s": round(generate_s - saved + load_s, 1),
            })  # fmt: skip
            if args.vision_share:
                # The other estimate: the tower takes the share of the H200 time it takes of the CPU's compute.
                share = shares.get(spec.name)
                saved_share = (
                    generate_s * share * (1 - min(args.images, args.samples) / args.samples) if share else saved
                )
                row.update({
                    "vision_share_cpu_full_depth": round(share, 3) if share else None,
                    "saved_by_reuse_cpu_share_s": round(saved_share, 1),
                    "total_with_reuse_cpu_share_s": round(generate_s - saved_share + load_s, 1),
                })  # fmt: skip
        rows.append(row)
    if temp is not None:
        temp.cleanup()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.projection", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1211, help="samples per model (QuIC-360 test: 1211)")
    parser.add_argument("--new-tokens", type=int, default=64, help="new tokens per sample (64)")
    parser.add_argument("--batch-size", type=int, default=32, help="runner batch size (32)")
    parser.add_argument("--bandwidth", type=float, default=H100_SXM_HBM3_BYTES_PER_S, help="HBM bytes/s (3.35e12)")
    parser.add_argument("--peak-flops", type=float, default=H100_BF16_DENSE_FLOPS, help="bf16 dense FLOP/s (989e12)")
    parser.add_argument("--mfu", type=float, default=0.4, help="fraction of peak FLOP/s reached in prefill (0.4)")
    parser.add_argument("--disk-bytes-per-s", type=float, default=2e9, help="safetensors read rate (2e9)")
    parser.add_argument("--startup-s", type=float, default=10.0, help="fixed cost per model: process, CUDA (10)")
    parser.add_argument("--step-overhead-ms", type=float, default=0.0, help="host overhead per decode step (0)")
    parser.add_argument("--measured", type=Path, help="a bench.gpu_bench JSON: project from its runner samples/s")
    parser.add_argument(
        "--reuse-images", action="store_true", help="the vision tower runs once per distinct image (--images)"
    )
    parser.add_argument("--images", type=int, default=QUIC360_TEST_IMAGES, help="distinct images (QuIC-360: 393)")
    parser.add_argument(
        "--vision-share", type=Path, help="a bench.image_reuse JSON: also project with its CPU vision shares"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/out/projection.json"), help="JSON results file")
    args = parser.parse_args(argv)
    command = " ".join(["python -m bench.projection", *(argv if argv is not None else sys.argv[1:])])
    if args.measured:
        measured = json.loads(args.measured.read_text(encoding="utf-8"))
        rows = from_measured(measured, args)
        total = sum(row["total_s"] for row in rows)
        report = {
            "benchmark": "projection", "kind": f"from measured runner samples/s on {measured['device']} "
            f"({args.measured}); load times estimated" + ("; reuse savings estimated" if args.reuse_images else ""),
            "command": command, "assumptions": {k: str(v) for k, v in vars(args).items() if k != "out"},
            "models": rows, "total_s": round(total, 1), "total_min": round(total / 60, 1),
        }  # fmt: skip
        print(f"{'model':<24} {'batch':>5} {'samples/s':>9} {'generate s':>10} {'load s':>7} {'total s':>8}", end="")
        print(f" {'vision s/img':>12} {'share':>6} {'saved s':>8} {'total reuse s':>13}" if args.reuse_images else "")
        for row in rows:
            print(f"{row['model']:<24} {row['runner_batch_size']:>5} {row['runner_samples_per_s_measured']:>9} "
                  f"{row['generate_s']:>10} {row['load_s']:>7} {row['total_s']:>8}", end="")  # fmt: skip
            if args.reuse_images:
                print(f" {row['vision_s_per_image_estimated']:>12} {row['vision_share_estimated']:>6} "
                      f"{row['saved_by_reuse_s']:>8} {row['total_with_reuse_s']:>13}", end="")  # fmt: skip
            print()
        print(f"total {round(total, 1)} s = {round(total / 60, 1)} min ({measured['device']}); {args.out}")
        if args.reuse_images:
            reused = sum(row["total_with_reuse_s"] for row in rows)
            report.update(total_with_reuse_s=round(reused, 1), total_with_reuse_min=round(reused / 60, 1))
            print(f"with --reuse-images on ({args.images} images, vision at {args.mfu:.0%} of the peak, ESTIMATED): "
                  f"{round(reused, 1)} s = {round(reused / 60, 1)} min")  # fmt: skip
        if args.reuse_images and args.vision_share:
            reused = sum(row["total_with_reuse_cpu_share_s"] for row in rows)
            report.update(
                total_with_reuse_cpu_share_s=round(reused, 1), total_with_reuse_cpu_share_min=round(reused / 60, 1)
            )
            print(f"with --reuse-images on, the tower's H200 share = its CPU compute share ({args.vision_share}; "
                  f"FLOPs for the models it lacks), ESTIMATED: {round(reused, 1)} s = "
                  f"{round(reused / 60, 1)} min")  # fmt: skip
            for row in rows:
                print(f"  {row['model']:<24} share {row['vision_share_cpu_full_depth']} saved "
                      f"{row['saved_by_reuse_cpu_share_s']} s")  # fmt: skip
        write_json_atomic(args.out, report)
        return 0
    if min(args.samples, args.new_tokens, args.batch_size) < 1 or not 0 < args.mfu <= 1:
        parser.error("--samples, --new-tokens, --batch-size must be >= 1 and 0 < --mfu <= 1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="projection_") as temp:
        panorama = write_panorama_jpeg(Path(temp) / "pano.jpg", 2048, 1024, seed=0)
        for spec in MODELS.values():
            counts = count_parameters(load_bench_config(spec.name))
            rows.append(project_model(spec, counts, prompt_shape(spec, panorama, Path(temp) / "tiny"), args))
    total = sum(row["total_s"] for row in rows)
    report = {
        "benchmark": "projection",
        "kind": "PROJECTION from published configs and stated constants; not a measurement",
        "command": command,
        "assumptions": {k: v for k, v in vars(args).items() if k != "out"},
        "models": rows,
        "total_s": round(total, 1),
        "total_min": round(total / 60, 1),
    }
    write_json_atomic(args.out, report)
    print(f"{'model':<24} {'params B':>8} {'prompt':>7} {'ms/step':>8} {'KV GB':>6} {'decode s':>9} "
          f"{'prefill s':>9} {'load s':>7} {'total s':>8}")  # fmt: skip
    for row in rows:
        print(
            f"{row['model']:<24} {row['parameters_total'] / 1e9:>8.2f} {row['prompt_tokens']:>7} "
            f"{row['ms_per_decode_step']:>8} {row['kv_cache_gb_at_batch']:>6} {row['decode_s']:>9} "
            f"{row['prefill_s']:>9} {row['load_s']:>7} {row['total_s']:>8}"
        )
    print(f"PROJECTED total: {report['total_s']} s = {report['total_min']} min (not a measurement); {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
