"""python -m orchestrator.hub_fetch --model-id ID --revision REV

The fetch step, run inside a family image (network on) or locally: downloads one model's snapshot into the
Hugging Face cache (HF_HOME) and prints, as its last line, FETCH_RESULT_PREFIX + {"model_id", "revision",
"resolved_revision"}. The token, if any, is read by huggingface_hub from HF_TOKEN; it is never printed.
Imports only huggingface_hub (present in every family image), not docker.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FETCH_RESULT_PREFIX = "FETCH_RESULT "
# Weight formats the runner never loads: skipping them halves some downloads.
IGNORED_FILES = ["*.msgpack", "*.h5", "*.ot", "*.onnx", "flax_model*", "tf_model*", "rust_model*"]


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
    result = {"model_id": args.model_id, "revision": args.revision, "resolved_revision": Path(folder).name}
    print(f"{args.model_id}@{args.revision} -> {result['resolved_revision']} in {folder}")
    print(FETCH_RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
