"""What each step of an ablation asks of the machine that runs it, for the engines that ask (Slurm's `--mem` and
`--cpus-per-task`, the docker engine's `--memory auto`): the scoring step's figures from scoring.resources, each
runner's host memory from runner.memory and the model's weight files. The one place both engines get them from.

Also the one place that turns the controller's (or Docker's) word for a memory kill into the message users read:
what the step asked for, what it used where known, and which option raises it.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path

from orchestrator.plan import Plan
from runner.loop import AUTO, AUTO_BATCH_CPU, AUTO_BATCH_MAX, RunConfig
from runner.memory import CheckpointSize, checkpoint_size, host_memory, image_pixels
from runner.registry import ModelSpec
from scoring import spice
from scoring.resources import gib, scoring_requirements, size_bytes

MIB = 1 << 20
GIB = 1 << 30
# The words slurmstepd writes into a job's log when jobacct_gather's OverMemoryKill kills it (the job then ends
# FAILED, not OUT_OF_MEMORY), and its cgroup counterpart; the first carries the bytes used and the limit.
EXCEEDED = re.compile(r"exceeded memory limit \((\d+) > (\d+)\)")
MEMORY_KILL_WORDS = ("exceeded memory limit", "Exceeded job memory limit", "oom_kill event", "oom-kill")


@dataclass(frozen=True)
class StepResources:
    """Memory (bytes) and CPUs one task asks for; cpus None leaves the cluster's default. `basis`: what the figure is
    made of, in words (the banner, the manifest, the out-of-memory message)."""

    memory_bytes: int
    cpus: int | None
    basis: str

    @property
    def memory_mib(self) -> int:
        # Whole GiB above a few: the figure is an estimate, and a round one reads as one.
        mib = math.ceil(self.memory_bytes / MIB)
        return math.ceil(mib / 1024) * 1024 if mib > 4096 else mib

    @property
    def slurm_mem(self) -> str:
        return f"{self.memory_mib}M"

    @property
    def docker_memory(self) -> str:
        return f"{self.memory_mib}m"


def scoring_resources(plan: Plan, num_models: int) -> StepResources:
    """The scoring step over `num_models` models of the plan's samples, for the metrics it computes (`--metrics`;
    all by default, SPICE's JVM included)."""
    from scoring.metrics import select_metrics

    metrics = [metric.key for metric in select_metrics(plan.options.metrics)]
    # SPICE's heap follows the longest caption it will parse: a reference, or a prediction of up to
    # --max-new-tokens tokens (a model's token is at most one word).
    longest = max(spice.TYPICAL_MAX_TOKENS, plan.longest_reference_words, plan.options.max_new_tokens)
    needs = scoring_requirements(
        num_models=max(1, num_models), num_samples=max(1, plan.num_samples), metrics=metrics, max_caption_tokens=longest
    )
    return StepResources(needs.memory_bytes, needs.cpus, needs.describe())


def runner_resources(plan: Plan, spec: ModelSpec, gpu: bool, revision: str | None = None) -> StepResources:
    """One runner task of `spec` (one shard of it with --shards): host memory for its weight files, its batches and
    the Python/torch runtime (runner.memory.host_memory). The weights are read from the local checkpoint or the
    Hugging Face cache snapshot of `revision`; where neither is there yet, they are left out and `basis` says so."""
    options = plan.options
    device = "cuda" if gpu else "cpu"
    dtype = options.dtype or (spec.dtype if gpu else "float32")
    per_task = math.ceil(plan.num_samples / max(1, options.shards))
    batch = options.batch_sizes.get(spec.name, options.batch_size)
    if batch == AUTO:
        batch = AUTO_BATCH_MAX if gpu else AUTO_BATCH_CPU
    batch = max(1, min(int(batch), per_task))
    pixels = image_pixels(_image_sizes(tuple(plan.image_paths)), spec.max_image_side, spec.max_pixels)
    folder = model_folder(plan, spec, revision)
    weights: CheckpointSize | None = checkpoint_size(folder) if folder else None
    estimate = host_memory(
        weights,
        device=device,
        dtype=dtype,
        batch_size=batch,
        pixels=pixels,
        preprocess_workers=RunConfig.preprocess_workers,
        gpu_gb_per_sample=spec.gpu_gb_per_sample,
    )
    parts = ", ".join(f"{name} {gib(value)}" for name, value in estimate.parts)
    where = f"weights {gib(weights.file_bytes)} in {folder}" if weights else "weights not found yet: not counted"
    basis = f"{gib(estimate.memory_bytes)} ({parts}; batch {batch}, {device}; {where})"
    return StepResources(estimate.memory_bytes, None, basis)


def model_folder(plan: Plan, spec: ModelSpec, revision: str | None) -> Path | None:
    """The checkpoint folder a runner of `spec` loads: the local one, or the cache snapshot of `revision` (a commit,
    or a branch the cache's refs/ name)."""
    local = plan.model_path(spec.name)
    if local is not None:
        return local
    if plan.hf_cache is None or spec.hub_id is None:
        return None
    repo = plan.hf_cache / "hub" / ("models--" + spec.hub_id.replace("/", "--"))
    name = revision or spec.revision or "main"
    ref = repo / "refs" / name
    if ref.is_file():
        name = ref.read_text(encoding="utf-8").strip()
    snapshot = repo / "snapshots" / name
    return snapshot if snapshot.is_dir() else None


@functools.cache
def _image_sizes(paths: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    """(width, height) of each local image from its header; nothing where Pillow is missing (the bound applies)."""
    try:
        from PIL import Image
    except ImportError:
        return ()
    sizes = []
    for path in dict.fromkeys(paths):
        try:
            with Image.open(path) as opened:
                sizes.append(opened.size)
        except Exception:  # noqa: BLE001  (a bad image is reported by the runner that reads it)
            continue
    return tuple(sizes)


# --- memory kills -------------------------------------------------------------------------------------------------


def memory_kill_in_log(
    log: Path | None, since: str | None = None, tail_bytes: int = 65536
) -> tuple[bool, int | None, int | None]:
    """(killed for memory, bytes used, limit in bytes) from the end of a job's log, after the last `since` line where
    it has one (a log appended to by reruns keeps an earlier run's kill); the numbers where Slurm wrote them."""
    if log is None:
        return False, None, None
    try:
        with open(log, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - tail_bytes))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return False, None, None
    if since and since in text:
        text = text[text.rindex(since) :]
    found = EXCEEDED.findall(text)
    if found:
        used, limit = found[-1]
        return True, int(used), int(limit)
    return any(word in text for word in MEMORY_KILL_WORDS), None, None


def slurm_size_bytes(value: str) -> int | None:
    """An sbatch --mem value in bytes (a plain number is megabytes; K, M, G, T suffixes); None when unreadable."""
    text = value.strip()
    try:
        return size_bytes(text + "M" if text.isdigit() else text)
    except ValueError:
        return None


def out_of_memory_message(asked: str | None, option: str, used: int | None = None, limit: int | None = None) -> str:
    """`out of memory: ...` with the figure the task asked for and how to raise it. `asked`: the request as given
    (e.g. `--mem=12288M`); `option`: the option that raises it for this step, up to its value (e.g.
    `--slurm-scoring-arg mem=`); `used`/`limit`: bytes, where the cluster reported them."""
    words = "out of memory: killed"
    if used and limit:
        words += f" at {used / GIB:.2f} GiB, over its limit of {limit / GIB:.2f} GiB"
    if asked:
        words += f"; it asked for {asked}"
    base = limit or (slurm_size_bytes(asked.split("=")[-1]) if asked else None)
    suggestion = f"{max(1, math.ceil(2 * base / GIB))}G" if base else "16G"
    return words + f"; ask for more with {option}{suggestion}"
