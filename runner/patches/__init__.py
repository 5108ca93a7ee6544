"""Small, clearly scoped replacements of one model class's behaviour, applied by name from a catalogue entry's
`patches` (on a GPU). Each module's `apply(model)` returns how many modules it replaced (0: not its class)."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any


def apply_patches(model: Any, names: Iterable[str]) -> list[str]:
    """Apply each named patch; returns one line per patch saying what happened (for the run's log)."""
    notes = []
    for name in names:
        module = importlib.import_module(f"runner.patches.{name}")
        replaced = int(module.apply(model))
        notes.append(f"patch {name}: {replaced} module(s) replaced" if replaced else f"patch {name}: not applicable")
    return notes
