"""Processes started by an orchestrator die with it, so a `kill -9` of the orchestrator (or of its process group)
never leaves a runner or scorer behind holding the results folder's lock.

The orchestrator puts its pid into the child's environment; the child's entry point calls `follow_parent()` first
thing, which asks the kernel (Linux `PR_SET_PDEATHSIG`) to SIGKILL it when the parent dies, and exits at once if
the parent is already gone. Doing it in the child avoids `preexec_fn`, which is unsafe in a threaded parent.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_PID_ENV = "VLM_ABLATION_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def follow_parent() -> None:
    expected = os.environ.get(PARENT_PID_ENV)
    if not expected or not expected.isdigit():
        return  # started by a person or a scheduler: live on its own
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return  # no parent-death signal here; the orchestrator's stop_all and the run lock still apply
    if os.getppid() != int(expected):
        os._exit(137)  # the orchestrator died before the signal was armed
