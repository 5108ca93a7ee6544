"""The runner's progress on stderr: a bar for people (`--progress bar`), machine-readable lines for the
orchestrator (`--progress json`: RUNNER_PROGRESS_PREFIX + contract.RunnerProgress), or nothing."""

from __future__ import annotations

import sys
import time
from typing import Literal

from contract import RUNNER_PROGRESS_PREFIX, RunnerProgress

ProgressMode = Literal["bar", "json", "none"]
PROGRESS_MODES: tuple[str, ...] = ("bar", "json", "none")
JSON_INTERVAL_S = 1.0  # at most one line a second (plus the first and the last)


class Progress:
    def __init__(self, mode: ProgressMode, total: int, already: int, errors: int = 0) -> None:
        self.mode, self.total, self.done, self.errors = mode, total, already, errors
        self.started = time.monotonic()
        self.generated = 0
        self._last_line = 0.0
        self._bar = None
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=already, unit="sample", file=sys.stderr, mininterval=1.0)

    def loading(self) -> None:
        self._emit("loading", force=True)

    def update(self, samples: int, errors: int) -> None:
        self.done += samples
        self.generated += samples
        self.errors += errors
        if self._bar is not None:
            self._bar.update(samples)
        self._emit("generating", force=self.generated == samples)  # the first batch shows at once

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._emit("done", force=True)

    def wall(self) -> tuple[float, float | None]:
        """Seconds since the run started loading the model, and the samples/s the console shows: samples captioned
        in this run over that wall-clock time (model load, image decoding and preprocessing included)."""
        elapsed = time.monotonic() - self.started
        return elapsed, (round(self.generated / elapsed, 3) if self.generated and elapsed > 0 else None)

    def _emit(self, phase: str, force: bool) -> None:
        if self.mode != "json":
            return
        now = time.monotonic()
        if not force and now - self._last_line < JSON_INTERVAL_S:
            return
        self._last_line = now
        _, rate = self.wall()
        line = RunnerProgress(phase=phase, done=self.done, total=self.total, errors=self.errors, samples_per_s=rate)  # type: ignore[arg-type]
        print(RUNNER_PROGRESS_PREFIX + line.model_dump_json(), file=sys.stderr, flush=True)
