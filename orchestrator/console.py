"""What the user reads while an ablation runs: a banner, per-model start/end lines, streamed logs with a
`[model]` prefix, metric lines, and a closing block. Plain lines (they end up in CI logs and `tee` files too)."""

from __future__ import annotations

import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import TextIO

METRIC_LABELS = {"bleu4": "BLEU-4", "meteor": "METEOR", "rougeL": "ROUGE-L", "cider": "CIDEr", "spice": "SPICE"}


def clock(moment: datetime | None = None) -> str:
    return (moment or datetime.now()).strftime("%H:%M:%S")


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def metric_line(metrics: dict[str, float | None]) -> str:
    parts = []
    for key, label in METRIC_LABELS.items():
        value = metrics.get(key)
        parts.append(f"{label} {value:.4f}" if isinstance(value, int | float) else f"{label} n/a")
    return "  ".join(parts)


class Console:
    """Thread-safe line printer; every line also goes to the optional log file."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def line(self, text: str = "") -> None:
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def model_sink(self, model: str, log_file: Path):
        """A line sink that prints `[model] line` and appends the raw line to the model's log file."""
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handle = open(log_file, "a", encoding="utf-8")  # noqa: SIM115  (closed by the caller via .close)

        def sink(text: str) -> None:
            handle.write(text + "\n")
            handle.flush()
            self.line(f"[{model}] {text}")

        sink.close = handle.close  # type: ignore[attr-defined]
        return sink

    def banner(
        self,
        *,
        num_models: int,
        data_file: Path,
        num_samples: int,
        output_dir: Path,
        batch_size: int | str,
        engine: str,
        gpus: str,
        parallel: bool,
    ) -> None:
        rule = "=" * 78
        self.line(rule)
        self.line(f"VLM captioning ablation: {num_models} model(s), {num_samples} sample(s)")
        self.line(f"  data file : {data_file}")
        self.line(f"  output dir: {output_dir}")
        self.line(f"  batch size: {batch_size}")
        self.line(f"  engine    : {engine} ({gpus}; {'one model per GPU, in parallel' if parallel else 'sequential'})")
        self.line(rule)
