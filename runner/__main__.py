"""python -m runner --model NAME --data FILE --output-dir DIR [...] (see runner/cli.py)."""

import sys

from runner.cli import main

sys.exit(main())
