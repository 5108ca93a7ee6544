"""How `--batch-size auto`'s memory estimate (runner/memory.py, used for models without a measured figure) compares
with the 8 figures measured on one H200 (runner/catalogue.toml gpu_gb_per_sample, docs/PERFORMANCE.md).

    python -m bench.memory_estimate

For each model: the published config (bench/configs), its full-size processor on a 2048x1024 panorama downscaled as
the runner does, and runner.memory's estimate from that config and that sample's real inputs, next to the measured
value. No weights are needed (a tiny checkpoint stands in; only the processor runs).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.fullsize import build_tiny_reference, full_size_config, full_size_processor, load_bench_config
from bench.synthetic import write_panoramas


def compare(names: list[str], new_tokens: int) -> list[dict[str, object]]:
    import torch

    from runner.adapters import LoadedModel, open_adapter
    from runner.images import ImageLimits, load_image
    from runner.loop import DEFAULT_PROMPT_TEMPLATE
    from runner.memory import gb_per_sample
    from runner.registry import get_model

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as folder:
        panorama = write_panoramas(Path(folder), 1, 2048, 1024)[0]
        for name in names:
            spec = get_model(name)
            tiny_dir = build_tiny_reference(name, Path(folder) / name)
            tiny = open_adapter(spec, str(tiny_dir), device=torch.device("cpu"), dtype=torch.float32)
            bench = load_bench_config(name)
            config = full_size_config(bench, tiny_dir)
            loaded = LoadedModel(model=tiny.model, processor=full_size_processor(bench, tiny_dir))
            adapter = type(tiny)(spec, loaded, torch.device("cpu"), torch.float32)
            image = load_image(str(panorama), ImageLimits(max_side=spec.max_image_side))
            inputs = adapter.preprocess([image], [adapter.build_prompt(DEFAULT_PROMPT_TEMPLATE.format(query="x"))])
            estimated, how = gb_per_sample(spec.model_copy(update={"gpu_gb_per_sample": None}), config, new_tokens,
                                           inputs)  # fmt: skip
            measured = spec.gpu_gb_per_sample or 0.0
            rows.append(
                {
                    "model": name,
                    "prompt_tokens": int(inputs["input_ids"].shape[-1]),
                    "estimated_gb": round(estimated, 3),
                    "measured_gb": measured,
                    "ratio": round(estimated / measured, 2) if measured else None,
                    "how": how,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    from runner.registry import MODELS

    parser = argparse.ArgumentParser(prog="python -m bench.memory_estimate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    rows = compare(args.models, args.new_tokens)
    print(f"{'model':<24} {'prompt':>7} {'estimated GB':>13} {'measured GB':>12} {'ratio':>6}")
    for row in rows:
        print(f"{row['model']:<24} {row['prompt_tokens']:>7} {row['estimated_gb']:>13} {row['measured_gb']:>12} "
              f"{row['ratio']!s:>6}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
