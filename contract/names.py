"""The one check of every name that becomes part of a file or folder name: model names (catalogue entries,
`hf:Org/Name[@revision]`, the `model_name` of prediction records, `human-baseline --name`) and image families.

A name is letters, digits and `. _ - @`, starting with a letter or digit (so never `..`, `/`, an absolute path or a
hidden file), and at most MAX_NAME_BYTES bytes: the longest file name built from it (a moved-aside shard file,
`<name>_predictions.shard-K-of-N.jsonl.replaced-<time>`, or a temporary file next to a result) then stays well under
the 255 bytes most filesystems allow.
"""

from __future__ import annotations

import re

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")
MAX_NAME_BYTES = 160


class FileNameError(ValueError):
    """A name that cannot be part of a file name; the message says which name and why."""


def check_file_name(name: str, what: str = "model name") -> str:
    """`name` unchanged when it is safe in a file name, else FileNameError naming it and the rule."""
    if not NAME_PATTERN.fullmatch(name):
        raise FileNameError(
            f"{what} {name!r}: use letters, digits and . _ - @ only, starting with a letter or digit "
            "(it becomes part of file names)"
        )
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise FileNameError(
            f"{what} {name[:40]!r}... is {len(name.encode('utf-8'))} bytes long; at most {MAX_NAME_BYTES} are "
            "allowed (it becomes part of file names, which most filesystems limit to 255 bytes)"
        )
    return name
