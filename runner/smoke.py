"""python -m runner.smoke --family F: the last step of every runner image's build, offline.

For each catalogue entry of the family that has a tiny checkpoint builder: build it, load it through the entry's
adapter (model class AND processor, torchvision included where the processor needs it) and caption one generated
panorama. An image whose transformers, processor or torch cannot do that fails at BUILD time, not on a user's GPU
host. `--import-only` (a reference image whose checkpoints need the Hub) imports the adapters and the classes only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile


def smoke(family: str, import_only: bool = False) -> list[str]:
    import numpy as np
    import torch
    import transformers
    from PIL import Image

    from runner.adapters import adapter_for, open_adapter
    from runner.loop import DEFAULT_PROMPT_TEMPLATE
    from runner.registry import BUILTIN

    specs = [spec for spec in BUILTIN.models.values() if spec.family == family]
    if not specs:
        raise SystemExit(f"no catalogue entry has family {family!r}")
    lines = [f"transformers {transformers.__version__}, torch {torch.__version__}"]
    for spec in specs:
        adapter_for(spec.adapter)  # the adapter imports on this image's transformers
        if import_only or spec.tiny is None:
            # No offline checkpoint (a reference image for remote code that needs the Hub): the loaders only.
            for name in ("AutoModel", "AutoProcessor", "AutoTokenizer"):
                getattr(transformers, name)
            lines.append(f"{spec.name}: adapter {spec.adapter} imports (no tiny checkpoint: not run)")
            continue
        from runner.tiny import build_tiny  # the builders use this image's transformers classes

        with tempfile.TemporaryDirectory(prefix="smoke-") as folder:
            build_tiny(spec.name, folder)
            adapter = open_adapter(spec, folder, device=torch.device("cpu"), dtype=torch.float32)
            pixels = np.random.default_rng(0).integers(0, 256, size=(128, 256, 3), dtype=np.uint8)
            prompt = adapter.build_prompt(DEFAULT_PROMPT_TEMPLATE.format(query="location"))
            inputs = adapter.build_inputs([Image.fromarray(pixels, "RGB")], [prompt])
            caption = adapter.decode(adapter.generate(inputs, 4, 1), inputs)[0]
        lines.append(f"{spec.name}: {type(adapter.model).__name__} + {type(adapter.processor).__name__} -> {caption!r}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", required=True)
    parser.add_argument("--import-only", action="store_true")
    args = parser.parse_args(argv)
    for line in smoke(args.family, args.import_only):
        print(f"smoke [{args.family}] {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
