"""The models users can name. Adding a model of an existing family is one entry in MODELS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    name: str  # what users type
    family: str  # selects the adapter, the tiny-checkpoint builder and the image
    hub_id: str
    revision: str = "main"  # the resolved commit is recorded in the run manifest
    dtype: str = "bfloat16"  # on GPU; tests on CPU use float32
    transformers: str = ">=5.0,<6"  # versions this entry is known to work with
    image: str = ""  # Docker image for the family (images/runner.Dockerfile + images/<family>/requirements.txt)
    # GPU memory one more sample in a batch costs (GB, bf16, 2048x1024 panoramas, 64 new tokens): the growth of
    # peak memory from batch 32 to 128 in bench.gpu_bench on one H200 (docs/PERFORMANCE.md). `--batch-size auto`
    # divides the free memory after loading by it.
    gpu_gb_per_sample: float = 0.5


IMAGE_PREFIX = "vlm-ablation"


def _spec(name: str, family: str, hub_id: str, **kwargs: Any) -> ModelSpec:
    return ModelSpec(name=name, family=family, hub_id=hub_id, image=f"{IMAGE_PREFIX}/{family}:latest", **kwargs)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _spec("blip2-opt-2.7b", "blip2", "Salesforce/blip2-opt-2.7b", gpu_gb_per_sample=0.05),
        # The published checkpoint is remote code (InternLM2 LM) that runs on transformers 4.46.x only; its image
        # pins 4.46.3. The adapter also loads native (converted) InternVL checkpoints on 5.x: see docs/RUNNER.md.
        _spec("internvl2-2b", "internvl2", "OpenGVLab/InternVL2-2B", transformers="==4.46.3", gpu_gb_per_sample=0.45),
        _spec("blip2-flan-t5-xl", "blip2", "Salesforce/blip2-flan-t5-xl", gpu_gb_per_sample=0.03),
        _spec("qwen2.5-vl-3b", "qwen2.5-vl", "Qwen/Qwen2.5-VL-3B-Instruct", gpu_gb_per_sample=0.23),
        _spec("gemma-3-4b", "gemma3", "google/gemma-3-4b-it", gpu_gb_per_sample=0.11),
        _spec("llava-1.5-7b", "llava", "llava-hf/llava-1.5-7b-hf", gpu_gb_per_sample=0.40),
        _spec("llava-1.6-mistral-7b", "llava-next", "llava-hf/llava-v1.6-mistral-7b-hf", gpu_gb_per_sample=0.49),
        _spec("instructblip-vicuna-7b", "instructblip", "Salesforce/instructblip-vicuna-7b", gpu_gb_per_sample=0.07),
    )
}

FAMILIES = sorted({spec.family for spec in MODELS.values()})


class UnknownModelError(ValueError):
    pass


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}") from None
