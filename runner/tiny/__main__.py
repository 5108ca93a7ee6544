"""python -m runner.tiny --model NAME --out DIR"""

import argparse

from runner.registry import MODELS
from runner.tiny import build_tiny

parser = argparse.ArgumentParser(prog="python -m runner.tiny", description=__doc__)
parser.add_argument("--model", required=True, choices=sorted(MODELS), help="registry name")
parser.add_argument("--out", required=True, help="folder to write the checkpoint to")
args = parser.parse_args()
build_tiny(args.model, args.out)
print(f"tiny {args.model} checkpoint written to {args.out}")
