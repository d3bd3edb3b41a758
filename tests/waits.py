"""Polling helper shared by the end-to-end tests: wait for a condition on real processes, with a clear message."""

from __future__ import annotations

import time


def wait_for(pred, timeout: float, what: str, step: float = 0.25):
    """Return `pred()`'s first truthy value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(step)
