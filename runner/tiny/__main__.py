"""python -m runner.tiny --model NAME --out DIR"""

import argparse

from runner.registry import BUILTIN
from runner.tiny import build_tiny

parser = argparse.ArgumentParser(prog="python -m runner.tiny", description=__doc__)
buildable = sorted(name for name, spec in BUILTIN.models.items() if spec.tiny)
parser.add_argument("--model", required=True, choices=buildable, help="catalogue name")
parser.add_argument("--out", required=True, help="folder to write the checkpoint to")
args = parser.parse_args()
build_tiny(args.model, args.out)
print(f"tiny {args.model} checkpoint written to {args.out}")
