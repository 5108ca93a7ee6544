"""What the scoring step needs from the machine that runs it: memory and CPUs, stated before it starts, so an engine
can ask a cluster for them (Slurm `--mem`, `--cpus-per-task`) or set a container's limit (docker `--memory auto`).

The step is one Python process and its Java tools, all alive at once as a cluster counts a job (every process
summed): METEOR 1.5's JVM for the whole run (-Xmx METEOR_HEAP), the PTB tokenizer's JVM while METEOR starts, SPICE's
parsing JVM(s) while METEOR works (scoring.spice sizes them: `spice_memory_mb`, and plans within the job's limit
minus `OTHER_SCORING_MB`, so the request keeps at least that much beside SPICE), and Python, which grows with the
samples of every model it scores. A JVM's resident memory is bounded by its heap limit plus what it keeps beside the
heap (class metadata, compiled code, the garbage collector's tables, thread stacks); the Python figures were
measured. docs/SCALING.md has the measurements and the command that repeats them (`python -m bench.scoring_memory`).

Imports only the standard library and scoring.spice's constants: the orchestrator calls this on the submit host.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from scoring import spice

# METEOR 1.5's heap (`python -m scoring score --meteor-heap`'s default): its paraphrase tables fill about 1.2 GB.
METEOR_HEAP = "2G"

MIB = 1 << 20
# Measured with bench.scoring_memory on QuIC-360 (docs/SCALING.md): the scoring process's own peak, Python with
# numpy, sacrebleu, pandas and the report, was 314 MiB for 1 model x 1,211 samples, 355 MiB for 8 and 372 MiB for
# 16: about 300 MiB of imports, and 3.3 KB more per (model, sample) scored. Rounded up to these.
PYTHON_BASE_BYTES = 384 * MIB
PYTHON_BYTES_PER_SCORED_SAMPLE = 8 * 1024
# The PTB tokenizer's JVM (default heap; it streams its input): measured at most 89 MiB; rounded up.
PTB_TOKENIZER_BYTES = 192 * MIB
# Beside its heap a JVM keeps its garbage collector's tables (G1: about 6% of the heap, measured with
# -XX:NativeMemoryTracking on METEOR's JVM: 110 MB for a 2 GB heap), class metadata, compiled code, thread stacks and
# the JVM's own code (about 60 MB more): bounded by a sixteenth of the heap plus 128 MiB.
JVM_NON_HEAP_FRACTION = 1 / 16
JVM_NON_HEAP_FIXED_BYTES = 128 * MIB

SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def size_bytes(text: str) -> int:
    """`8G`, `512m`, `2g`, `1.5G`, `1024` (bytes): the JVM's, Slurm's and Docker's sizes (binary units)."""
    found = SIZE.match(str(text))
    if not found:
        raise ValueError(f"{text!r} is not a size such as 512M, 2G or 8G")
    return int(float(found.group(1)) * UNITS[found.group(2).lower()])


def jvm_bytes(heap: str) -> int:
    """The most a JVM started with -Xmx`heap` holds in memory."""
    limit = size_bytes(heap)
    return limit + int(limit * JVM_NON_HEAP_FRACTION) + JVM_NON_HEAP_FIXED_BYTES


# SPICE JVMs a scoring step asks for by default: one parsing JVM of one thread (SPICE plans more only when the job
# has the CPUs and memory for them; scoring.spice.plan_spice).
SPICE_WORKERS = 1


@dataclass(frozen=True)
class Requirements:
    """Memory and CPUs one step asks for, with what the memory is made of (for messages and the manifest)."""

    memory_bytes: int
    cpus: int
    parts: tuple[tuple[str, int], ...] = ()

    @property
    def memory_mib(self) -> int:
        return math.ceil(self.memory_bytes / MIB)

    def describe(self) -> str:
        parts = ", ".join(f"{name} {gib(value)}" for name, value in self.parts)
        return f"{gib(self.memory_bytes)}" + (f" ({parts})" if parts else "") + f", {self.cpus} CPU(s)"


def gib(value: int) -> str:
    return f"{value / (1 << 30):.1f} GiB"


def scoring_requirements(
    num_models: int,
    num_samples: int,
    metrics: Iterable[str] = ("meteor", "spice"),
    meteor_heap: str = METEOR_HEAP,
    workers: int = SPICE_WORKERS,
    max_caption_tokens: int = spice.TYPICAL_MAX_TOKENS,
) -> Requirements:
    """What `python -m scoring score` over `num_models` models of `num_samples` samples each needs. `metrics`: the
    metrics that run a JVM of their own and are computed (METEOR, SPICE; the others are Python). `workers`: SPICE's
    single-threaded parsing JVMs, each sized for captions of up to `max_caption_tokens` tokens (SPICE's parser
    needs memory growing with the square of the longest caption).

    CPUs: Python's metrics run beside METEOR's JVM (two at once); while SPICE parses, Python waits for it and METEOR
    goes on, so one CPU per SPICE JVM beside METEOR's."""
    if num_models < 1 or num_samples < 1:
        raise ValueError(f"scoring needs at least one model and one sample, not {num_models} x {num_samples}")
    if workers < 1:
        raise ValueError(f"SPICE needs at least one JVM, not {workers}")
    wanted = set(metrics)
    spice_jvms = workers if "spice" in wanted else 0
    parts = [("Python", PYTHON_BASE_BYTES + PYTHON_BYTES_PER_SCORED_SAMPLE * num_models * num_samples)]
    parts.append(("PTB tokenizer JVM", PTB_TOKENIZER_BYTES))
    if "meteor" in wanted:
        parts.append((f"METEOR JVM -Xmx{meteor_heap}", jvm_bytes(meteor_heap)))
    if spice_jvms:
        # SPICE plans within the job's limit minus OTHER_SCORING_MB: keep at least that much beside its JVMs.
        others = sum(value for _, value in parts)
        if others < spice.OTHER_SCORING_MB * MIB:
            parts.append(("kept beside SPICE for METEOR and Python", spice.OTHER_SCORING_MB * MIB - others))
        heap = spice.spice_heap_mb(max_caption_tokens, 1)
        label = f"SPICE JVM -Xmx{heap}m" + (f" x {spice_jvms}" if spice_jvms > 1 else "")
        parts.append((label, spice.spice_memory_mb(spice_jvms, 1, max_caption_tokens) * MIB))
    return Requirements(
        memory_bytes=sum(value for _, value in parts),
        cpus=1 + max(1, spice_jvms),
        parts=tuple(parts),
    )
