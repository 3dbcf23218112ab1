"""Named fault points for the fault-injection tests (tests/test_crash_consistency.py, test_settlement.py).

XDS_CRASH_AT=<name>: the first time that point is reached the process kills itself with SIGKILL,
exactly as a power cut or the OOM killer would, so that recovery is tested against real half-done
work rather than a simulation of it. XDS_DELAY_AT=<name>:<seconds>: the point sleeps that long (a
slow disk or database at that step). Unset, as in every deployment, a point costs two lookups.
"""
from __future__ import annotations

import os
import signal
import time


def point(name: str) -> None:
    env = os.environ
    if env.get("XDS_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    delay = env.get("XDS_DELAY_AT")
    if delay and delay.partition(":")[0] == name:
        time.sleep(float(delay.partition(":")[2] or 0))
