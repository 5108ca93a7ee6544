"""METEOR 1.5 (the jar pycocoevalcap ships), one JVM per process, plus the corpus formula in Python.

The jar runs in `-stdio` mode with pycocoevalcap's options (`- - -stdio -l en -norm`). For each segment a
`SCORE ||| ref 1 ||| ... ||| ref n ||| hypothesis` line returns the segment's sufficient statistics (23
numbers, against the best-matching reference); an `EVAL ||| stats ||| stats ...` line returns each segment's
score and then the corpus score, which METEOR computes from the element-wise SUM of the statistics, with one
exception: the chunk count of a "perfect" segment (every word of both sides matched, in one chunk) is left out of
the sum (METEOR 1.5's MeteorStats.addStats). So `summable_stats` zeroes those chunk counts, after which any
weighted sum of the rows is what the jar sums for that multiset of segments, and `meteor_from_stats` (the same
arithmetic as MeteorScorer.computeMetrics with METEOR 1.5's English parameters) turns it into the jar's corpus
score without Java: subsets, bootstrap resamples and per-query scores alike.
"""

from __future__ import annotations

import collections
import os
import subprocess
import threading
from collections.abc import Sequence

import numpy as np

from scoring.cleanup import strip_meteor_separator
from scoring.java import JVM_LOCALE_FLAGS, ToolProcessError, meteor_jar, stderr_tail

# MeteorStats field layout for 4 matcher modules (exact, stem, synonym, paraphrase).
NUM_MODULES = 4
STATS_LENGTH = 4 + 4 * NUM_MODULES + 3
# METEOR 1.5 defaults for `-l en` (task "default"): alpha, beta, gamma, delta and the module weights.
ALPHA, BETA, GAMMA, DELTA = 0.85, 0.2, 0.6, 0.75
MODULE_WEIGHTS = (1.0, 0.6, 0.8, 0.6)


CHUNKS = 4 + 4 * NUM_MODULES  # column of the chunk count


def _matched_everything(stats: np.ndarray) -> np.ndarray:
    """Rows whose words are all matched on both sides in exactly one chunk (the jar's "test = ref" case)."""
    stage = stats[..., 4:CHUNKS].reshape(*stats.shape[:-1], NUM_MODULES, 4)
    test_total = np.zeros(stats.shape[:-1])
    ref_total = np.zeros(stats.shape[:-1])
    for module in range(NUM_MODULES):  # the jar's order of summation (integers, so exact anyway)
        test_total = test_total + stage[..., module, 0] + stage[..., module, 2]
        ref_total = ref_total + stage[..., module, 1] + stage[..., module, 3]
    return (test_total == stats[..., 0]) & (ref_total == stats[..., 1]) & (stats[..., CHUNKS] == 1.0)


def summable_stats(stats: np.ndarray) -> np.ndarray:
    """Segment statistics whose plain (weighted) sums are the jar's corpus sums: a perfect segment's chunk count is
    not added by MeteorStats.addStats, so it is zeroed here. A row's own score is unchanged (its fragmentation is 0
    either way)."""
    stats = np.array(stats, dtype=np.float64)
    stats[..., CHUNKS] = np.where(_matched_everything(stats), 0.0, stats[..., CHUNKS])
    return stats


def meteor_from_stats(stats: np.ndarray) -> np.ndarray:
    """METEOR score of each row of summed statistics (shape (..., 23)); same operation order as the jar."""
    stats = np.asarray(stats, dtype=np.float64)
    test_length, ref_length, test_function, ref_function = (stats[..., i] for i in range(4))
    stage = stats[..., 4 : 4 + 4 * NUM_MODULES].reshape(*stats.shape[:-1], NUM_MODULES, 4)
    test_content, ref_content, test_func_matches, ref_func_matches = (stage[..., i] for i in range(4))
    chunks, test_word_matches, ref_word_matches = (stats[..., 4 + 4 * NUM_MODULES + i] for i in range(3))

    test_total = np.zeros_like(test_length)
    ref_total = np.zeros_like(ref_length)
    for module in range(NUM_MODULES):
        test_total = test_total + test_content[..., module] + test_func_matches[..., module]
        ref_total = ref_total + ref_content[..., module] + ref_func_matches[..., module]

    with np.errstate(divide="ignore", invalid="ignore"):
        test_weighted_length = DELTA * (test_length - test_function) + (1.0 - DELTA) * test_function
        ref_weighted_length = DELTA * (ref_length - ref_function) + (1.0 - DELTA) * ref_function
        test_weighted = np.zeros_like(test_length)
        ref_weighted = np.zeros_like(ref_length)
        for module, weight in enumerate(MODULE_WEIGHTS):
            test_weighted = test_weighted + test_content[..., module] * weight * DELTA
        for module, weight in enumerate(MODULE_WEIGHTS):
            ref_weighted = ref_weighted + ref_content[..., module] * weight * DELTA
        for module, weight in enumerate(MODULE_WEIGHTS):
            test_weighted = test_weighted + test_func_matches[..., module] * weight * (1.0 - DELTA)
        for module, weight in enumerate(MODULE_WEIGHTS):
            ref_weighted = ref_weighted + ref_func_matches[..., module] * weight * (1.0 - DELTA)
        precision = test_weighted / test_weighted_length
        recall = ref_weighted / ref_weighted_length
        f_mean = 1.0 / ((1.0 - ALPHA) / precision + ALPHA / recall)
        perfect = (test_total == test_length) & (ref_total == ref_length) & (chunks == 1.0)
        fragmentation = np.where(perfect, 0.0, chunks / ((test_word_matches + ref_word_matches) / 2.0))
        penalty = GAMMA * np.power(fragmentation, BETA)
        score = f_mean * (1.0 - penalty)
    return np.where(np.isnan(score), 0.0, np.maximum(score, 0.0))


class MeteorProcess:
    """One METEOR 1.5 JVM (startup ~10-30 s, ~1.2 GB), reused for every model in this process."""

    def __init__(self, java: str, heap: str = "2G") -> None:
        command = [java, f"-Xmx{heap}", *JVM_LOCALE_FLAGS, "-jar", str(meteor_jar())]
        command += ["-", "-", "-stdio", "-l", "en", "-norm"]
        # The jar finds its paraphrase table next to itself; it writes nothing, so a read-only install is fine.
        self._process = subprocess.Popen(
            command,
            cwd=meteor_jar().parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._stderr: collections.deque[bytes] = collections.deque(maxlen=200)
        self._stderr_reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_reader.start()
        self._lock = threading.Lock()
        self._pending = b""  # bytes read past the last complete reply line

    def _drain_stderr(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self._stderr.append(line)

    def _died(self, what: str) -> ToolProcessError:
        try:
            status = self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            status = None
        self._stderr_reader.join(timeout=5)
        return ToolProcessError(
            f"METEOR ({meteor_jar().name}) died while {what} (exit status {status}):\n"
            f"{stderr_tail(b''.join(self._stderr))}"
        )

    def _write_all(self, payload: bytes, failure: list[BaseException]) -> None:
        assert self._process.stdin is not None
        try:
            # One write: the GIL is released while the pipe drains, however busy the Python side is.
            self._process.stdin.write(payload)
            self._process.stdin.flush()
        except (BrokenPipeError, OSError) as error:
            failure.append(error)

    def _read_lines(self, count: int, what: str) -> list[str]:
        """Read `count` reply lines in large chunks (one GIL acquisition per chunk, not per line)."""
        assert self._process.stdout is not None
        descriptor = self._process.stdout.fileno()
        lines: list[bytes] = []
        while len(lines) < count:
            chunk = os.read(descriptor, 1 << 16)
            if not chunk:
                raise self._died(what)
            *complete, self._pending = (self._pending + chunk).split(b"\n")
            lines.extend(complete)
        if len(lines) > count:
            raise ToolProcessError(f"METEOR answered {len(lines)} lines where {count} were expected")
        return [line.decode("utf-8").strip() for line in lines]

    def _exchange(self, lines: Sequence[str], answers: int, what: str) -> list[str]:
        """Send lines from a writer thread while reading answers here (no pipe deadlock, no per-line wait)."""
        failure: list[BaseException] = []
        payload = "".join(lines).encode("utf-8")
        writer = threading.Thread(target=self._write_all, args=(payload, failure), daemon=True)
        writer.start()
        try:
            replies = self._read_lines(answers, what)
        finally:
            writer.join(timeout=None if not failure else 5)
        if failure:
            raise self._died(what)
        return replies

    def segment_stats(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[str]:
        """The jar's statistics line for each (hypothesis, references) segment; texts are PTB-tokenized."""
        lines = []
        for hypothesis, refs in zip(hypotheses, references, strict=True):
            fields = ["SCORE", *(strip_meteor_separator(r) for r in refs), strip_meteor_separator(hypothesis)]
            lines.append(" ||| ".join(fields) + "\n")
        with self._lock:
            stats = self._exchange(lines, len(lines), "computing segment statistics")
        for line in stats:
            if len(line.split()) != STATS_LENGTH:
                raise ToolProcessError(f"METEOR returned unexpected statistics {line!r}")
        return stats

    def evaluate(self, stats: Sequence[str]) -> tuple[list[float], float]:
        """Per-segment scores and the corpus score the jar computes from the summed statistics."""
        if not stats:
            return [], 0.0
        line = "EVAL ||| " + " ||| ".join(stats) + "\n"
        with self._lock:
            replies = self._exchange([line], len(stats) + 1, "computing scores")
        try:
            values = [float(reply) for reply in replies]
        except ValueError as error:
            raise ToolProcessError(f"METEOR returned a non-numeric score: {error}") from error
        return values[:-1], values[-1]

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                assert self._process.stdin is not None
                self._process.stdin.close()
            except OSError:
                pass
            self._process.kill()
        self._process.wait()
        self._stderr_reader.join(timeout=5)

    def __enter__(self) -> MeteorProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
