"""What the user reads while an ablation runs: a banner, per-model start/end lines, LIVE progress per running model,
metric lines (x100), warnings once, and a closing block.

Each task's full output goes to its log file (logs/<model>.runner.log); the console shows only what a person needs:
the runner's structured progress lines rendered as one refreshing line per running model (rich) on a terminal, or
as plain lines every `interval` seconds when stdout is a file or a pipe (nohup ... > ablation.log; tail -f), plus
the task's WARNING and error lines. transformers' loading bars and the RUNNER_RESULT line stay in the log.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TextIO

from contract import RUNNER_PROGRESS_PREFIX, RUNNER_RESULT_PREFIX, MetricsFile, RunnerProgress

DEMO_NOTICE = "DEMO: random-weight models; these numbers mean nothing"
PLAIN_PROGRESS_INTERVAL_S = 30.0
SHOWN_PREFIXES = ("warning", "error", "traceback")  # task output lines that reach the console (all reach the log)
PROGRESS_BAR = re.compile(r"\d+%\|")  # a tqdm bar (transformers' weight loading), kept out of the console


def clock(moment: datetime | None = None) -> str:
    return (moment or datetime.now()).strftime("%H:%M:%S")


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def metric_line(metrics: MetricsFile) -> str:
    """One model's scores for people: each metric of the report's tables on its display scale (x100), labelled as in
    the report (scoring.metrics, the registry); metrics left out with --metrics are not repeated on every line."""
    from scoring.metrics import LEFT_OUT, TABLE_METRICS

    parts = []
    for metric in TABLE_METRICS:
        value = metrics.metrics.get(metric.key)
        if value is None and metrics.unavailable.get(metric.key) == LEFT_OUT:
            continue
        parts.append(f"{metric.label} {value * metric.scale:.2f}" if value is not None else f"{metric.label} n/a")
    return "  ".join(parts)


@dataclass
class ModelProgress:
    model: str
    phase: str = "starting"
    done: int = 0
    total: int = 0
    errors: int = 0
    samples_per_s: float | None = None
    task_id: int | None = None  # the rich progress row

    def describe(self) -> str:
        if self.phase in ("starting", "loading"):
            return f"{self.phase} the model"
        text = f"{self.done}/{self.total} samples"
        if self.samples_per_s:
            text += f", {self.samples_per_s:.2f} samples/s"
            left = max(0, self.total - self.done)
            text += f", ETA {duration(left / self.samples_per_s)}"
        return text + f", {self.errors} error(s)"


class Console:
    """Thread-safe. On a terminal the progress rows refresh in place (rich); elsewhere they are plain lines."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None, interval: float | None = None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.interval = PLAIN_PROGRESS_INTERVAL_S if interval is None else interval
        self._lock = threading.RLock()
        self._rows: dict[str, ModelProgress] = {}
        self._last_plain: dict[str, float] = {}
        self._warned: set[str] = set()
        self._rich = None
        self._progress = None
        if self.live:
            from rich.console import Console as RichConsole

            self._rich = RichConsole(file=self.stream, highlight=False, markup=False, soft_wrap=True)

    # --- lines -----------------------------------------------------------------------------------------------

    def line(self, text: str = "") -> None:
        with self._lock:
            if self._rich is not None:
                self._rich.print(text)
            else:
                self.stream.write(text + "\n")
                self.stream.flush()

    def warn_once(self, key: str, text: str | None = None) -> None:
        """A warning that applies to the whole run (a data-file note every runner repeats) is shown once."""
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        self.line(text or key)

    # --- live progress ---------------------------------------------------------------------------------------

    def start_progress(self, model: str) -> None:
        with self._lock:
            row = self._rows[model] = ModelProgress(model)
            if self._rich is not None:
                if self._progress is None:
                    self._progress = self._new_rich_progress()
                    self._progress.start()
                row.task_id = self._progress.add_task(model, total=None, status=row.describe())

    def update_progress(self, model: str, update: RunnerProgress) -> None:
        with self._lock:
            row = self._rows.get(model)
            if row is None:
                return
            row.phase, row.done, row.total = update.phase, update.done, update.total
            row.errors, row.samples_per_s = update.errors, update.samples_per_s or row.samples_per_s
            if self._progress is not None and row.task_id is not None:
                total = row.total if row.phase != "loading" else None
                self._progress.update(row.task_id, completed=row.done, total=total, status=row.describe())
                return
            now = time.monotonic()
            first = model not in self._last_plain
            if first or now - self._last_plain[model] >= self.interval or update.phase == "done":
                self._last_plain[model] = now
                self.line(f"[{model}] {row.describe()}")

    def end_progress(self, model: str) -> None:
        with self._lock:
            row = self._rows.pop(model, None)
            self._last_plain.pop(model, None)
            if self._progress is not None and row is not None and row.task_id is not None:
                self._progress.remove_task(row.task_id)
                if not self._rows:
                    self._progress.stop()
                    self._progress = None

    def _new_rich_progress(self):  # noqa: ANN202  (rich.progress.Progress)
        from rich.progress import BarColumn, Progress, TextColumn

        return Progress(
            TextColumn("[{task.description}]"),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[status]}"),
            console=self._rich,
            transient=True,
            refresh_per_second=2,
        )

    # --- task output -----------------------------------------------------------------------------------------

    def model_sink(self, model: str, log_file: Path) -> TaskSink:
        return TaskSink(self, model, log_file)

    def banner(self, lines: list[tuple[str, str]], title: str) -> None:
        rule = "=" * 78
        self.line(rule)
        self.line(title)
        for label, value in lines:
            self.line(f"  {label:<10}: {value}")
        self.line(rule)


class TaskSink:
    """Every line of one task into its log file; progress lines to the live display; warnings and errors shown."""

    def __init__(self, console: Console, model: str, log_file: Path) -> None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self.console, self.model = console, model
        self.handle = open(log_file, "a", encoding="utf-8")  # noqa: SIM115  (closed by close())
        self.recent: deque[str] = deque(maxlen=12)

    def __call__(self, text: str) -> None:
        self.handle.write(text + "\n")
        self.handle.flush()
        if text.startswith(RUNNER_PROGRESS_PREFIX):
            try:
                update = RunnerProgress.model_validate_json(text[len(RUNNER_PROGRESS_PREFIX) :])
            except ValueError:
                return
            self.console.update_progress(self.model, update)
            return
        if not text.startswith(RUNNER_RESULT_PREFIX) and not PROGRESS_BAR.search(text):
            self.recent.append(text)  # what a person may need when the task fails (not bars, not the result line)
        if text.strip().lower().startswith("warning"):
            # The same warning from every runner (a data-file note) is shown once for the run.
            self.console.warn_once(text, f"[{self.model}] {text}")
        elif text.strip().lower().startswith(SHOWN_PREFIXES):
            self.console.line(f"[{self.model}] {text}")

    def tail(self) -> list[str]:
        """The task's last output lines (no progress lines): shown when it fails."""
        return list(self.recent)

    def close(self) -> None:
        self.handle.close()
