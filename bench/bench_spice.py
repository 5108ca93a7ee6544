"""Benchmark: SPICE through `scoring.spice.run_spice` vs pycocoevalcap's `Spice().compute_score`, same captions.

Workload: the first N samples of the QuIC-360 leave-one-out set (first caption = candidate, the rest =
references; N chosen so that there are about 1,000 captions), PTB-tokenized as the scoring engine and
COCOEvalCap both do before SPICE. With --models M, M "models" share those references (the candidate of model m
is model 0's with its words rotated by m): pycocoevalcap runs once per model, as a per-model script would, keeping
its parse cache between models as it does in its package folder; run_spice scores all models in one call.

Each configuration runs in a fresh subprocess; it reports wall time, the CPU time of its JVMs, and the peak of
the summed resident memory of all its child processes (sampled every 0.1 s). The per-sample scores of every
configuration must be identical to pycocoevalcap's, or the benchmark fails.

    .venv/bin/python bench/bench_spice.py                      # ~1,000 captions, 1 model (about 20 min on 2 cores)
    .venv/bin/python bench/bench_spice.py --captions 300 --models 3
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

QUIC_TEST = Path(os.environ.get("QUIC360_TSV", REPO_ROOT.parent / "shared" / "data" / "quic360" / "test.tsv"))
CONFIGS = {
    "pycocoevalcap": "pycocoevalcap Spice().compute_score (java -jar, -Xmx8G, its default threads)",
    "run_spice": "run_spice, default plan",
    "run_spice-2x1": "run_spice, workers=2 threads=1",
    "run_spice-1x2": "run_spice, workers=1 threads=2",
    "run_spice-1x1": "run_spice, workers=1 threads=1",
}
PLANS = {"run_spice": (None, None), "run_spice-2x1": (2, 1), "run_spice-1x2": (1, 2), "run_spice-1x1": (1, 1)}


def _rotated(caption: str, places: int) -> str:
    words = caption.split()
    places = places % len(words) if words else 0
    return " ".join(words[places:] + words[:places])


def workload(data: Path, captions: int, models: int) -> list[dict[str, dict[str, list[str]]]]:
    """Per model: {"gts": {id: refs}, "res": {id: [candidate]}}, PTB-tokenized; about `captions` captions in all."""
    from scoring.cleanup import normalise_text
    from scoring.inputs import leave_one_out, load_data
    from scoring.java import find_java
    from scoring.ptb import ptb_tokenize_documents

    loo = leave_one_out(load_data(data))
    samples, total = 0, 0
    while samples < len(loo.sample_ids) and total < captions:
        total += 1 + len(loo.references[samples])
        samples += 1
    hypotheses = [normalise_text(text) for text in loo.raw_predictions[:samples]]
    references = [[normalise_text(text) for text in refs] for refs in loo.references[:samples]]
    with tempfile.TemporaryDirectory() as temp:  # the two documents COCOEvalCap tokenizes: references, candidates
        flat_refs, tokenized_hypotheses = ptb_tokenize_documents(
            [[r for refs in references for r in refs], hypotheses], find_java(), Path(temp)
        )
    lines = iter(flat_refs)
    ids = [f"{index:05d}" for index in range(samples)]
    gts = {sample_id: [next(lines) for _ in refs] for sample_id, refs in zip(ids, references, strict=True)}
    result = []
    for model in range(models):
        # Model 0: the human candidate; model m > 0: its words rotated by m (a new caption, about as long).
        res = {sample_id: [_rotated(tokenized_hypotheses[index], model)] for index, sample_id in enumerate(ids)}
        result.append({"gts": gts, "res": res})
    return result


class PeakMemory(threading.Thread):
    """Peak of the summed RSS of this process's descendants (the JVMs), sampled from /proc."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kb = 0
        self.stop = threading.Event()

    def _children(self) -> dict[int, list[int]]:
        tree: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                    tree.setdefault(int(fields[1]), []).append(int(entry))
                except (OSError, IndexError):
                    pass
        return tree

    def _rss_kb(self) -> int:
        tree, total, todo = self._children(), 0, list(self._children().get(os.getpid(), []))
        while todo:
            pid = todo.pop()
            todo += tree.get(pid, [])
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total

    def run(self) -> None:
        while not self.stop.wait(0.1):
            self.peak_kb = max(self.peak_kb, self._rss_kb())


def run_one(config: str, data: Path, captions: int, models: int, out: Path) -> None:
    """One configuration, in this (fresh) process; writes per-sample scores and measurements to `out`."""
    from bench.spice_reference import reference_spice
    from scoring.java import find_java
    from scoring.spice import SpiceItem, configured_jar_dir, plan_spice, run_spice

    jar_dir = configured_jar_dir(None)
    work = workload(data, captions, models)
    java = find_java()
    monitor = PeakMemory()
    monitor.start()
    load_before = os.getloadavg()[0]
    scores: dict[str, float] = {}
    plan = ""
    with tempfile.TemporaryDirectory(prefix="bench_spice_") as temp:
        started = time.perf_counter()
        if config == "pycocoevalcap":
            with reference_spice(jar_dir, Path(temp)) as spice:
                for model, part in enumerate(work):
                    _, per_sample = spice.compute_score(part["gts"], part["res"])
                    for sample_id, values in zip(sorted(part["gts"]), per_sample, strict=True):
                        scores[f"{model}/{sample_id}"] = values["All"]["f"]
        else:
            items = [
                SpiceItem(f"{model}/{sample_id}", part["res"][sample_id][0], part["gts"][sample_id])
                for model, part in enumerate(work)
                for sample_id in sorted(part["gts"])
            ]
            workers, threads = PLANS[config]
            captions_all = [c for item in items for c in (item.hypothesis, *item.references)]
            plan = plan_spice(captions_all, workers=workers, threads=threads).describe()
            scores = run_spice(items, java, jar_dir, Path(temp), workers=workers, threads=threads)
        wall = time.perf_counter() - started
    monitor.stop.set()
    monitor.join()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    distinct = {c for part in work for refs in part["gts"].values() for c in refs}
    distinct |= {c for part in work for res in part["res"].values() for c in res}
    total = sum(len(refs) + 1 for part in work for refs in part["gts"].values())
    result = {
        "load": f"{load_before:.1f}/{os.getloadavg()[0]:.1f}",
        "config": config,
        "plan": plan,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": monitor.peak_kb / 1024,
        "samples": len(work[0]["gts"]),
        "models": models,
        "captions": total,
        "distinct": len(distinct),
        "scores": scores,
    }
    out.write_text(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=QUIC_TEST)
    parser.add_argument("--captions", type=int, default=1000, help="about this many captions per model")
    parser.add_argument("--models", type=int, default=1)
    parser.add_argument("--configs", default="pycocoevalcap,run_spice,run_spice-1x2", help=", ".join(CONFIGS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args.data, args.captions, args.models, args.out)
        return 0
    if not args.data.is_file():
        print(f"QuIC-360 test split not found: {args.data} (set QUIC360_TSV)", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory() as temp:
        for config in args.configs.split(","):
            out = Path(temp) / f"{config}.json"
            command = [sys.executable, __file__, "--one", config, "--out", str(out), "--data", str(args.data)]
            command += ["--captions", str(args.captions), "--models", str(args.models)]
            print(f"--- {config}: {CONFIGS[config]}", flush=True)
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results.append(json.loads(out.read_text()))
    first = results[0]
    print(
        f"\n{first['samples']} samples x {first['models']} model(s): {first['captions']} captions, "
        f"{first['distinct']} distinct; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    # The machine may be shared: the load average before and after each configuration says how much.
    header = f"{'configuration':<16} {'wall s':>8} {'JVM CPU s':>10} {'peak RSS MB':>12} {'x faster':>9}"
    print(f"{header} {'load':>10}  plan")
    for result in results:
        speedup = first["wall_s"] / result["wall_s"]
        print(
            f"{result['config']:<16} {result['wall_s']:8.1f} {result['cpu_s']:10.1f} {result['peak_rss_mb']:12.0f} "
            f"{speedup:9.2f} {result['load']:>10}  {result['plan']}"
        )
    reference = first["scores"]
    for result in results[1:]:
        differ = [
            key
            for key, value in reference.items()
            if not (value == result["scores"][key] or (math.isnan(value) and math.isnan(result["scores"][key])))
        ]
        if differ:
            print(f"{result['config']}: {len(differ)} per-sample scores differ from {first['config']} ({differ[0]})")
            return 1
    mean = sum(reference.values()) / len(reference)
    print(f"per-sample scores identical in every configuration; mean SPICE {mean:.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
