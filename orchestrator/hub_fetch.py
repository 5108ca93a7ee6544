"""python -m orchestrator.hub_fetch --model-id ID --revision REV

The fetch step, run inside a family image (network on) or locally: downloads one model's snapshot into the
Hugging Face cache (HF_HOME) and prints, as its last line, FETCH_RESULT_PREFIX + {"model_id", "revision",
"resolved_revision", "converted"}. The token, if any, is read by huggingface_hub from HF_TOKEN; it is never printed.

A remote-code InternVL2 snapshot (config.json model_type "internvl_chat") fetched in an image with transformers >= 5
is also converted, once, to transformers' native InternVL layout under
$HF_HOME/vlm-ablation-converted/<org>--<name>/<commit>/ (runner/convert_internvl2.py); the runner, with the cache
read-only and no network, loads that folder. "converted" is its path (null for every other model).
Imports only huggingface_hub (present in every family image), not docker; the converter (torch, transformers) is
imported only for such a snapshot.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FETCH_RESULT_PREFIX = "FETCH_RESULT "
# Weight formats the runner never loads: skipping them halves some downloads.
IGNORED_FILES = ["*.msgpack", "*.h5", "*.ot", "*.onnx", "flax_model*", "tf_model*", "rust_model*"]
REMOTE_INTERNVL_MODEL_TYPE = "internvl_chat"


def needs_conversion(snapshot: Path) -> bool:
    """A remote-code InternVL2 snapshot, in an image whose transformers runs the native classes (>= 5)."""
    try:
        config = json.loads((snapshot / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(config, dict) or config.get("model_type") != REMOTE_INTERNVL_MODEL_TYPE:
        return False
    try:
        from importlib.metadata import version

        return int(version("transformers").split(".")[0]) >= 5
    except Exception:  # noqa: BLE001  (no transformers here: nothing can convert, the runner will say why)
        return False


def convert_snapshot(model_id: str, snapshot: Path, commit: str, hf_home: Path | None = None) -> Path | None:
    """The fetch step's conversion: the converted folder of this snapshot (made now or reused), or None when the
    snapshot needs none. hf_home: the cache root (default: huggingface_hub's HF_HOME)."""
    if not needs_conversion(snapshot):
        return None
    from runner.convert_internvl2 import convert_into_cache

    return convert_into_cache(snapshot, model_id=model_id, commit=commit, hf_home=hf_home)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.hub_fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-id", required=True, help="Hub id, e.g. Salesforce/blip2-opt-2.7b")
    parser.add_argument("--revision", default="main", help="branch, tag or commit")
    args = parser.parse_args(argv)

    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id=args.model_id, revision=args.revision, ignore_patterns=IGNORED_FILES)
    except Exception as error:  # noqa: BLE001  (any hub failure is reported as one line and a non-zero exit)
        print(f"error: could not download {args.model_id}@{args.revision}: {type(error).__name__}: {error}")
        return 1
    # snapshot folders are named by the commit they hold.
    commit = Path(folder).name
    print(f"{args.model_id}@{args.revision} -> {commit} in {folder}")
    try:
        converted = convert_snapshot(args.model_id, Path(folder), commit)
    except Exception as error:  # noqa: BLE001  (a failed conversion fails the fetch, with the reason)
        print(
            f"error: could not convert {args.model_id}@{commit} to the native format: {type(error).__name__}: {error}"
        )
        return 1
    if converted is not None:
        print(f"converted to transformers' native InternVL layout in {converted}")
    result = {
        "model_id": args.model_id,
        "revision": args.revision,
        "resolved_revision": commit,
        "converted": str(converted) if converted else None,
    }
    print(FETCH_RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
